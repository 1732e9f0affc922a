"""The detection I/O convention: how a detector's batch goes in and its results come out.

A detector that follows it (every zoo model, through ``forward_batched``) is called as
``forward_batched(images, image_sizes, output_sizes)`` — one traceable call over the
whole batch, so a graph captured at one batch size runs at any other. The compiler
captures that call, and its loader rebuilds the list API's results from the outputs.

Inputs:

* ``images``: f32[N, 3, H, W], raw BGR 0..255, each image at the top-left of the
  canvas; what lies outside its size is ignored (it is zeroed after normalisation,
  exactly like the list API's padding), and the canvas is padded to the backbone's
  ``size_divisibility`` inside the model.
* ``image_sizes``: i64[N, 2], the (height, width) of every image on the canvas.
* ``output_sizes``: i64[N, 2], the (height, width) to report results at (default:
  ``image_sizes``), like the list API's optional "height"/"width".

Outputs, a dict of flat tensors in this order (absent fields are left out):

* ``boxes`` f32[M, 4] (x1, y1, x2, y2 at the output size), ``scores`` f32[M],
  ``classes`` i64[M]: the detections of all images, image by image (image 0's first),
  best first within an image;
* ``masks`` b8[M, Hout, Wout] (mask models): each detection's mask on a canvas of
  the largest output size (Hout, Wout = max of ``output_sizes``); pixels beyond its
  own image's output size are False;
* ``keypoints`` f32[M, K, 3] (keypoint models): x, y, score;
* ``counts`` i64[N]: detections per image, so image i owns rows
  ``sum(counts[:i]) .. sum(counts[:i+1])``;
* PanopticFPN adds ``sem_seg`` f32[N, C, Hout, Wout] (logits, 0 beyond each image's
  output size), ``panoptic_seg`` i32[N, Hout, Wout] (0 beyond it), the segments of
  all images as ``segment_id``, ``segment_category_id``, ``segment_isthing`` (b8),
  ``segment_score`` (f32), ``segment_area``, ``segment_instance_id`` (index into that
  image's detections, -1 for stuff), all i64[S] unless noted, and
  ``segment_counts`` i64[N].

:func:`stack_inputs` turns the list API's input into these arguments,
:func:`split_outputs` turns the outputs back into one dict per image, and
:func:`instances_from_fields` one image's detections into an Instances.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import device as Device  # TorchScript reads `torch.device` only under a plain name

from dexport.ir.dialects.structures import Boxes, ImageList, Instances

__all__ = [
    "DETECTION_FIELDS", "SEGMENT_FIELDS", "INSTANCE_FIELD_NAMES", "image_index_from_counts",
    "sizes_tensor", "SizePairs", "stack_inputs", "split_outputs", "instances_from_fields",
]

# Per-detection fields (split by ``counts``) and per-segment fields (by ``segment_counts``).
DETECTION_FIELDS = ("boxes", "scores", "classes", "masks", "keypoints")
SEGMENT_FIELDS = ("segment_id", "segment_category_id", "segment_isthing", "segment_score",
                  "segment_area", "segment_instance_id")
# Per-image canvases padded to the largest output size.
_CANVAS_FIELDS = ("sem_seg", "panoptic_seg")
# Instances field name (the list API's) <-> batched detection name.
INSTANCE_FIELD_NAMES = {"pred_boxes": "boxes", "pred_classes": "classes",
                        "pred_masks": "mask_probs", "pred_keypoints": "keypoints"}


def image_index_from_counts(counts: torch.Tensor, total: int) -> torch.Tensor:
    """i64[total]: the image of each row of a batched output, from its ``counts``."""
    ends = counts.cumsum(dim=0)
    rows = torch.arange(total, device=counts.device)
    return (rows.unsqueeze(1) >= ends.unsqueeze(0)).sum(dim=1)


def _size_scalar(v, device) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        v = v.reshape(())
        return v if v.dtype == torch.int64 else v.to(torch.int64)
    return torch.tensor(int(v), dtype=torch.int64, device=device)


def sizes_tensor(sizes: list[tuple], device) -> torch.Tensor:
    """i64[N, 2] from (h, w) pairs of ints, or of 0-d tensors while tracing (kept traced)."""
    if not any(isinstance(v, torch.Tensor) for hw in sizes for v in hw):
        return torch.tensor(sizes, dtype=torch.int64, device=device).reshape(-1, 2)
    return torch.stack([torch.stack([_size_scalar(h, device), _size_scalar(w, device)])
                        for h, w in sizes])


class SizePairs(NamedTuple):
    """Per-image (h, w) pairs of the list API: ints, or 0-d tensors while tracing."""
    inputs: list[tuple[int, int]]
    outputs: list[tuple[int, int]]


def stack_inputs(batched_inputs: list[dict[str, torch.Tensor]], device: Device):
    """The list API's input (dicts with "image" and optional "height"/"width") as
    ``forward_batched`` arguments plus the size pairs to split results with:
    (images, image_sizes, output_sizes, SizePairs)."""
    if torch.jit.is_scripting():
        return _stack_inputs_scripted(batched_inputs, device)
    stacked = ImageList.from_tensors([x["image"].to(device) for x in batched_inputs])
    out_sizes = [(x.get("height", h), x.get("width", w))
                 for x, (h, w) in zip(batched_inputs, stacked.image_sizes)]
    return (stacked.tensor, sizes_tensor(stacked.image_sizes, device),
            sizes_tensor(out_sizes, device), SizePairs(stacked.image_sizes, out_sizes))


def _stack_inputs_scripted(batched_inputs: list[dict[str, torch.Tensor]], device: Device):
    """:func:`stack_inputs` under TorchScript, where sizes are ints ("height"/"width"
    are then tensors, as a TorchScript dict of tensors holds them)."""
    images = [x["image"].to(device) for x in batched_inputs]
    sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in images]
    max_h = max([h for h, _ in sizes])
    max_w = max([w for _, w in sizes])
    padded = [F.pad(t, [0, max_w - w, 0, max_h - h]) for t, (h, w) in zip(images, sizes)]
    out_sizes: list[tuple[int, int]] = []
    for x, (h, w) in zip(batched_inputs, sizes):
        out_sizes.append((int(x["height"]) if "height" in x else h,
                          int(x["width"]) if "width" in x else w))
    return (torch.stack(padded), _pairs_tensor(sizes, device), _pairs_tensor(out_sizes, device),
            SizePairs(sizes, out_sizes))


def _pairs_tensor(pairs: list[tuple[int, int]], device: Device) -> torch.Tensor:
    """i64[N, 2] of int pairs, from 0-d tensors (torch.tensor of a list is a generic op
    dexport's interpreter cannot call)."""
    return torch.stack([torch.stack([torch.tensor(h, dtype=torch.int64, device=device),
                                     torch.tensor(w, dtype=torch.int64, device=device)])
                        for h, w in pairs])


def split_outputs(outputs: dict[str, torch.Tensor], output_sizes=None) -> list[dict]:
    """Batched outputs -> one dict per image, with the same keys minus the counts.

    Per-detection and per-segment fields are split by their counts; per-image
    canvases (masks, sem_seg, panoptic_seg) are cropped to each image's output size
    when ``output_sizes`` (i64[N, 2] or (h, w) pairs) is given. Trace-safe: rows are
    selected by comparing their image index, never by python lengths."""
    counts = outputs["counts"]
    num_images = len(output_sizes) if output_sizes is not None else int(counts.shape[0])
    detection_image = image_index_from_counts(counts, outputs["scores"].shape[0])
    segment_image = None
    if "segment_counts" in outputs:
        segment_image = image_index_from_counts(outputs["segment_counts"],
                                                outputs["segment_id"].shape[0])
    per_image = []
    for i in range(num_images):
        item = {}
        for key, value in outputs.items():
            if key in ("counts", "segment_counts"):
                continue
            if key in DETECTION_FIELDS:
                value = value[detection_image == i]
            elif key in SEGMENT_FIELDS:
                value = value[segment_image == i]
            else:
                value = value[i]
            if output_sizes is not None and key in ("masks", *_CANVAS_FIELDS):
                h, w = output_sizes[i]
                value = value[..., :h, :w]
            item[key] = value
        per_image.append(item)
    return per_image


def _list_api_name(key: str) -> str:
    """The Instances field name of a batched detection field (INSTANCE_FIELD_NAMES the
    other way, plus the pasted "masks"; spelled out, as TorchScript reads no global dict,
    and as comparisons that a graph folds when the key is a constant)."""
    if key == "boxes":
        return "pred_boxes"
    if key == "classes":
        return "pred_classes"
    if key == "mask_probs" or key == "masks":
        return "pred_masks"
    if key == "keypoints":
        return "pred_keypoints"
    return key


def instances_from_fields(fields: dict[str, torch.Tensor], image_size: tuple[int, int]) -> Instances:
    """One image's detection fields (batched names) as an Instances with the list API's
    field names (pred_boxes, scores, pred_classes, pred_masks, pred_keypoints)."""
    instances = Instances(image_size)
    for key, value in fields.items():
        if key == "boxes":
            instances.set("pred_boxes", Boxes(value))
        else:
            instances.set(_list_api_name(key), value)
    return instances
