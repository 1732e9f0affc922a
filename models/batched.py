"""Batch-index helpers and the "batched detections" format of ``forward_batched``.

Every zoo model has ``forward_batched(images, image_sizes, output_sizes=None)``: one
traceable call over a whole batch, with no python loop over images or detections, so
a graph captured at one batch size runs at any other. Per-image work (top-k, NMS,
post-processing) is vectorised with a batch index per row: NMS runs on
``image * num_classes + class`` groups, and a per-image top-k keeps the rows whose
rank among the earlier rows of the same image is below k. Counting uses
compare-and-sum rather than bincount (ONNX has no bincount).

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

:func:`split_outputs` turns such a dict back into one dict per image.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from dexport.models.structures import ImageList

__all__ = [
    "DETECTION_FIELDS", "SEGMENT_FIELDS", "group_counts", "rank_in_group", "top_per_image",
    "image_index_from_counts", "clip_boxes_per_row", "rois_of", "pad_to_multiple",
    "normalize_images", "sizes_tensor", "SizePairs", "stack_inputs", "split_outputs",
]

# Per-detection fields (split by ``counts``) and per-segment fields (by ``segment_counts``).
DETECTION_FIELDS = ("boxes", "scores", "classes", "masks", "keypoints")
SEGMENT_FIELDS = ("segment_id", "segment_category_id", "segment_isthing", "segment_score",
                  "segment_area", "segment_instance_id")
# Per-image canvases padded to the largest output size.
_CANVAS_FIELDS = ("sem_seg", "panoptic_seg")


def _one_hot(group: torch.Tensor, num_groups) -> torch.Tensor:
    """b8[L, G]: row r is True at column group[r]."""
    return group.unsqueeze(1) == torch.arange(num_groups, device=group.device).unsqueeze(0)


def group_counts(group: torch.Tensor, num_groups) -> torch.Tensor:
    """i64[G]: how many entries of ``group`` (i64[L], values in [0, G)) equal each g."""
    return _one_hot(group, num_groups).sum(dim=0)


def rank_in_group(group: torch.Tensor, num_groups) -> torch.Tensor:
    """i64[L]: for each row, the number of earlier rows with the same group."""
    hot = _one_hot(group, num_groups)
    return (hot.cumsum(dim=0) * hot).sum(dim=1) - 1


def top_per_image(order: torch.Tensor, image_index: torch.Tensor, k: int,
                  num_images) -> torch.Tensor:
    """Indices from ``order`` (candidates in priority order, e.g. NMS output) keeping at
    most ``k`` per image, grouped by image (image 0 first), priority order within one.

    Equals taking ``order[:k]`` of each image's own candidates, one image at a time."""
    image = image_index[order]
    selected = rank_in_group(image, num_images) < k
    order, image = order[selected], image[selected]
    # Unique keys, so any sort gives the same (deterministic) permutation.
    key = image * order.shape[0] + torch.arange(order.shape[0], device=order.device)
    return order[torch.argsort(key)]


def image_index_from_counts(counts: torch.Tensor, total) -> torch.Tensor:
    """i64[total]: the image of each row of a batched output, from its ``counts``."""
    ends = counts.cumsum(dim=0)
    rows = torch.arange(total, device=counts.device)
    return (rows.unsqueeze(1) >= ends.unsqueeze(0)).sum(dim=1)


def clip_boxes_per_row(boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Clip boxes [..., 4] into [0, w] x [0, h], each row to its own size [..., 2] (h, w)
    (broadcast against the boxes); the same arithmetic as ``ops.clip_boxes``."""
    sizes = sizes.to(boxes.dtype)
    h, w = sizes[..., 0:1], sizes[..., 1:2]
    return torch.minimum(boxes.clamp(min=0), torch.cat([w, h, w, h], dim=-1))


def rois_of(boxes: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
    """[K, 5] rois (image index, x1, y1, x2, y2) for ROIAlign."""
    return torch.cat([image_index.to(boxes.dtype).unsqueeze(1), boxes], dim=1)


def pad_to_multiple(x: torch.Tensor, divisor: int) -> torch.Tensor:
    """Pad the last two dims of ``x`` with zeros (bottom/right) to multiples of
    ``divisor``. The amounts come from the (traced) shape, so a trace pads right at
    any resolution."""
    if divisor <= 1:
        return x
    h, w = x.shape[-2:]
    return F.pad(x, [0, (divisor - w % divisor) % divisor, 0, (divisor - h % divisor) % divisor])


def normalize_images(images: torch.Tensor, image_sizes: torch.Tensor, mean: torch.Tensor,
                     std: torch.Tensor, size_divisibility: int) -> torch.Tensor:
    """(images - mean) / std, zero outside each image's size, padded to the divisor:
    the tensor the list API builds by normalising each image and padding with zeros."""
    x = (images - mean) / std
    h, w = x.shape[-2:]
    rows = torch.arange(h, device=x.device).unsqueeze(0) < image_sizes[:, 0:1]
    cols = torch.arange(w, device=x.device).unsqueeze(0) < image_sizes[:, 1:2]
    inside = rows[:, None, :, None] & cols[:, None, None, :]
    return pad_to_multiple(torch.where(inside, x, torch.zeros_like(x)), size_divisibility)


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
    inputs: list[tuple]
    outputs: list[tuple]


def stack_inputs(batched_inputs: list[dict], device):
    """The list API's input (dicts with "image" and optional "height"/"width") as
    ``forward_batched`` arguments plus the size pairs to split results with:
    (images, image_sizes, output_sizes, SizePairs)."""
    stacked = ImageList.from_tensors([x["image"].to(device) for x in batched_inputs])
    out_sizes = [(x.get("height", h), x.get("width", w))
                 for x, (h, w) in zip(batched_inputs, stacked.image_sizes)]
    return (stacked.tensor, sizes_tensor(stacked.image_sizes, device),
            sizes_tensor(out_sizes, device), SizePairs(stacked.image_sizes, out_sizes))


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
