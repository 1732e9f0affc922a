"""Post-processing: network outputs at the padded input resolution -> user-facing results.

Kept apart from the network on purpose: a compiler can find this stage (the
``Postprocess`` module is installed as ``model.postprocess``, so every traced node in
it has the module scope ``postprocess``) and move it off the device graph.
"""
from __future__ import annotations

import torch
from torch import nn

from dexport.models import ops
from dexport.models.structures import Boxes, Instances

__all__ = ["detector_postprocess", "Postprocess"]


def detector_postprocess(results: Instances, output_height, output_width,
                         mask_threshold: float = 0.5) -> Instances:
    """Rescale one image's detections from its input size to (output_height, output_width).

    Boxes and keypoints are scaled and boxes clipped; boxes left empty are dropped;
    ``pred_masks`` (n×1×M×M probabilities) are pasted into the image as n×H×W bool masks.
    Sizes may be ints or (while tracing) 0-d tensors.
    """
    in_h, in_w = results.image_size
    scale_x, scale_y = output_width / in_w, output_height / in_h
    out = Instances((output_height, output_width), **results.fields)
    boxes = Boxes(out.pred_boxes.tensor)
    boxes.scale(scale_x, scale_y)
    boxes.clip((output_height, output_width))
    out.pred_boxes = boxes
    out = out[boxes.nonempty()]
    if out.has("pred_masks"):
        out.pred_masks = ops.paste_masks(out.pred_masks[:, 0], out.pred_boxes.tensor,
                                         (output_height, output_width), mask_threshold)
    if out.has("pred_keypoints"):
        kp = out.pred_keypoints
        out.pred_keypoints = torch.stack([kp[..., 0] * scale_x, kp[..., 1] * scale_y, kp[..., 2]],
                                         dim=-1)
    return out


class Postprocess(nn.Module):
    """``detector_postprocess`` over a batch, honouring each input's optional height/width."""

    def __init__(self, mask_threshold: float = 0.5):
        super().__init__()
        self.mask_threshold = mask_threshold

    def forward(self, results: list[Instances], batched_inputs: list[dict],
                image_sizes: list[tuple]) -> list[dict]:
        processed = []
        for r, inputs, (h, w) in zip(results, batched_inputs, image_sizes):
            height, width = inputs.get("height", h), inputs.get("width", w)
            processed.append({"instances": detector_postprocess(r, height, width,
                                                                self.mask_threshold)})
        return processed
