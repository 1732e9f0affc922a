"""Post-processing: network outputs at the padded input resolution -> user-facing results.

Kept apart from the network on purpose: a compiler can find this stage (the
``Postprocess`` module is installed as ``model.postprocess``, so every traced node in
it has the module scope ``postprocess``) and move it off the device graph.

Detections travel between the heads and here as a dict of flat tensors over the
whole batch: ``boxes`` f32[M, 4] at the input resolution, ``image_index`` i64[M]
(rows grouped by image), ``scores``, ``classes``, and optionally ``mask_probs``
f32[M, 1, S, S] (the predicted class's mask probabilities) and ``keypoints``
f32[M, K, 3]. The output is the "batched detections" format of
:mod:`dexport.ir.dialects.detection_io`.
"""
from __future__ import annotations

import torch
from torch import nn

from dexport.ir.dialects import dexport as ops
from dexport.ir.dialects.detection_io import (
    DETECTION_FIELDS, INSTANCE_FIELD_NAMES, image_index_from_counts, instances_from_fields, sizes_tensor,
)
from dexport.ir.dialects.structures import Boxes, Instances
from dexport.models.batched import clip_boxes_per_row, group_counts, nonempty

__all__ = ["postprocess_detections", "detector_postprocess", "detections_to_instances", "Postprocess"]


def postprocess_detections(detections: dict[str, torch.Tensor], image_sizes: torch.Tensor,
                           output_sizes: torch.Tensor,
                           mask_threshold: float = 0.5) -> dict[str, torch.Tensor]:
    """Rescale every image's detections from its input size (``image_sizes`` i64[N, 2])
    to its output size (``output_sizes``): boxes and keypoints are scaled, boxes
    clipped, detections left with an empty box dropped, and ``mask_probs`` pasted as
    ``masks`` b8[M, Hout, Wout] on a canvas of the largest output size (False beyond
    each image's own). Other fields are kept, filtered like the boxes."""
    image = detections["image_index"]
    out_size = output_sizes[image]
    scale = out_size.to(torch.float32) / image_sizes[image].to(torch.float32)
    scale_y, scale_x = scale[:, 0], scale[:, 1]
    b = detections["boxes"]
    boxes = torch.stack((b[:, 0] * scale_x, b[:, 1] * scale_y, b[:, 2] * scale_x,
                         b[:, 3] * scale_y), dim=1)
    boxes = clip_boxes_per_row(boxes, out_size)
    keep = nonempty(boxes)
    scale_x, scale_y, out_size = scale_x[keep], scale_y[keep], out_size[keep]
    boxes = boxes[keep]
    out = {}
    for name, value in detections.items():
        if name == "boxes":
            out[name] = boxes
        elif name == "mask_probs":
            out["masks"] = _paste(value[keep][:, 0], boxes, out_size, output_sizes, mask_threshold)
        elif name == "keypoints":
            kp = value[keep]
            out[name] = torch.stack([kp[..., 0] * scale_x[:, None], kp[..., 1] * scale_y[:, None],
                                     kp[..., 2]], dim=-1)
        else:
            out[name] = value[keep]
    return out


def _paste(probs: torch.Tensor, boxes: torch.Tensor, out_size: torch.Tensor,
           output_sizes: torch.Tensor, threshold: float) -> torch.Tensor:
    """Masks on a canvas of the largest output size, False beyond each row's own."""
    masks = ops.paste_masks(probs, boxes, output_sizes.max(dim=0).values, threshold)
    rows = torch.arange(masks.shape[1], device=masks.device).unsqueeze(0) < out_size[:, 0:1]
    cols = torch.arange(masks.shape[2], device=masks.device).unsqueeze(0) < out_size[:, 1:2]
    return masks & rows[:, :, None] & cols[:, None, :]


def detector_postprocess(results: Instances, output_height, output_width,
                         mask_threshold: float = 0.5) -> Instances:
    """Rescale one image's detections from its input size to (output_height, output_width).

    :func:`postprocess_detections` for a batch of one: ``pred_masks`` (n×1×M×M
    probabilities) become n×H×W bool masks. Sizes may be ints or 0-d tensors.
    """
    device = results.pred_boxes.device
    detections = {INSTANCE_FIELD_NAMES.get(k, k): v.tensor if k == "pred_boxes" else v
                  for k, v in results.fields.items()}
    detections["image_index"] = torch.zeros(len(results), dtype=torch.int64, device=device)
    out = postprocess_detections(detections, sizes_tensor([results.image_size], device),
                                 sizes_tensor([(output_height, output_width)], device),
                                 mask_threshold)
    return detections_to_instances(out, [(output_height, output_width)])[0]


def detections_to_instances(detections: dict[str, torch.Tensor],
                            image_sizes: list[tuple[int, int]]) -> list[Instances]:
    """One Instances per image (size ``image_sizes[i]``, ints or 0-d tensors) from batched
    detections, either raw (rows with an ``image_index``) or post-processed (``counts``;
    mask canvases are cropped to each image's size)."""
    if torch.jit.is_scripting():
        return _instances_scripted(detections, image_sizes)
    return [instances_from_fields(f, size)
            for f, size in zip(_split_per_image(detections, image_sizes), image_sizes)]


def _instances_scripted(detections: dict[str, torch.Tensor],
                        image_sizes: list[tuple[int, int]]) -> list[Instances]:
    """:func:`detections_to_instances` of post-processed detections under TorchScript.
    Each field is named by a literal, not found by iterating the dict, so that in the
    graph the names are constants and ``staticize-instances`` sees which fields are set
    (the batched format's optional fields are tested with constant keys)."""
    if "counts" not in detections:
        raise RuntimeError("scripted detections_to_instances takes post-processed detections (with counts)")
    image = image_index_from_counts(detections["counts"], detections["scores"].shape[0])
    results: list[Instances] = []
    for i, (h, w) in enumerate(image_sizes):
        rows = image == i
        instances = Instances((h, w))
        instances.set("pred_boxes", Boxes(detections["boxes"][rows]))
        instances.set("scores", detections["scores"][rows])
        instances.set("pred_classes", detections["classes"][rows])
        if "masks" in detections:
            instances.set("pred_masks", detections["masks"][rows][..., :h, :w])
        if "keypoints" in detections:
            instances.set("pred_keypoints", detections["keypoints"][rows])
        results.append(instances)
    return results



def _is_detection_field(key: str) -> bool:
    # DETECTION_FIELDS spelled out: TorchScript reads no global tuple.
    return key in ["boxes", "scores", "classes", "masks", "keypoints"]


def _split_per_image(detections: dict[str, torch.Tensor],
                     image_sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
    """Each image's fields: post-processed detections split by ``counts`` (the detection
    fields, masks cropped to the image's size: ``split_outputs``), raw ones by
    ``image_index`` (every other field). Traceable and scriptable."""
    counted = "counts" in detections
    if counted:
        image = image_index_from_counts(detections["counts"], detections["scores"].shape[0])
    else:
        image = detections["image_index"]
    per_image: list[dict[str, torch.Tensor]] = []
    for i, (h, w) in enumerate(image_sizes):
        item: dict[str, torch.Tensor] = {}
        for key, value in detections.items():
            if counted and _is_detection_field(key):
                value = value[image == i]
                item[key] = value[..., :h, :w] if key == "masks" else value
            elif not counted and key != "image_index":
                item[key] = value[image == i]
        per_image.append(item)
    return per_image


class Postprocess(nn.Module):
    """:func:`postprocess_detections` plus ``counts``, in the batched output format."""

    def __init__(self, mask_threshold: float = 0.5):
        super().__init__()
        self.mask_threshold = mask_threshold
        self.fields = list(DETECTION_FIELDS)  # an attribute: TorchScript reads no global tuples

    def forward(self, detections: dict[str, torch.Tensor], image_sizes: torch.Tensor,
                output_sizes: torch.Tensor) -> dict[str, torch.Tensor]:
        out = postprocess_detections(detections, image_sizes, output_sizes, self.mask_threshold)
        result: dict[str, torch.Tensor] = {}
        for k in self.fields:
            if k in out:
                result[k] = out[k]
        result["counts"] = group_counts(out["image_index"], image_sizes.shape[0])
        return result
