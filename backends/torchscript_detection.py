"""STAND-IN, to be replaced at merge by the detection helper's module of the same name.

TorchScript implementations of the ``dexport::*`` ops in plain ATen, with the contract
the TorchScript emitter relies on: top-level TorchScript-compatible functions using only
``torch``, ``math`` and ``typing``; ``FUNCTIONS`` maps each op name to the function that
takes the op's inputs in the IR node's order (the schemas in
``dexport.ir.dialects.dexport``) and returns its output; ``HELPERS`` lists the functions
those call. The emitter pastes their source into ``model.py``.

These are simple ports of the reference kernels (per-box loops where the reference
vectorises), enough to export and check the zoo before the merge.
"""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor


def ts_overlaps(a: Tensor, b: Tensor, iou_threshold: float) -> Tensor:
    inter_w = torch.minimum(a[:, None, 2], b[None, :, 2]) - torch.maximum(a[:, None, 0], b[None, :, 0])
    inter_h = torch.minimum(a[:, None, 3], b[None, :, 3]) - torch.maximum(a[:, None, 1], b[None, :, 1])
    inter = inter_w.clamp(min=0) * inter_h.clamp(min=0)
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    union = area_a[:, None] + area_b[None, :] - inter
    return inter > union * iou_threshold


def ts_greedy_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, classes: Tensor) -> Tensor:
    n = boxes.size(0)
    if n == 0:
        return torch.zeros([0], dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, stable=True, descending=True).indices
    sorted_boxes = boxes[order]
    sorted_classes = classes[order]
    hit = ts_overlaps(sorted_boxes, sorted_boxes, iou_threshold)
    hit = hit & (sorted_classes[:, None] == sorted_classes[None, :])
    removed = torch.zeros([n], dtype=torch.bool, device=boxes.device)
    keep = torch.zeros([n], dtype=torch.bool, device=boxes.device)
    for i in range(n):
        if not bool(removed[i]):
            keep[i] = True
            removed = removed | hit[i]
    return order[keep]


def ts_nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    classes = torch.zeros([boxes.size(0)], dtype=torch.int64, device=boxes.device)
    return ts_greedy_nms(boxes, scores, iou_threshold, classes)


def ts_batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    return ts_greedy_nms(boxes, scores, iou_threshold, idxs)


def ts_roi_align(input: Tensor, rois: Tensor, spatial_scale: float, output_h: int, output_w: int,
                 sampling_ratio: int, aligned: bool) -> Tensor:
    k = rois.size(0)
    channels, height, width = input.size(1), input.size(2), input.size(3)
    out = torch.zeros([k, channels, output_h, output_w], dtype=input.dtype, device=input.device)
    r = rois.to(input.dtype)
    offset = 0.5 if aligned else 0.0
    x1 = r[:, 1] * spatial_scale - offset
    y1 = r[:, 2] * spatial_scale - offset
    roi_w = r[:, 3] * spatial_scale - offset - x1
    roi_h = r[:, 4] * spatial_scale - offset - y1
    if not aligned:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    bin_w = roi_w / output_w
    bin_h = roi_h / output_h
    if sampling_ratio > 0:
        grid_h = torch.full([k], sampling_ratio, dtype=torch.int64, device=input.device)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / output_h).to(torch.int64)
        grid_w = torch.ceil(roi_w / output_w).to(torch.int64)
    py = torch.arange(output_h, dtype=input.dtype, device=input.device)
    px = torch.arange(output_w, dtype=input.dtype, device=input.device)
    for i in range(k):
        gh, gw = int(grid_h[i]), int(grid_w[i])
        if gh <= 0 or gw <= 0:
            continue
        image = int(r[i, 0])
        fy = (torch.arange(gh, dtype=input.dtype, device=input.device) + 0.5) / gh
        fx = (torch.arange(gw, dtype=input.dtype, device=input.device) + 0.5) / gw
        ys = y1[i] + (py[:, None] + fy[None, :]) * bin_h[i]
        xs = x1[i] + (px[:, None] + fx[None, :]) * bin_w[i]
        valid_y = (ys >= -1.0) & (ys <= height)
        valid_x = (xs >= -1.0) & (xs <= width)
        gy = ys.clamp(0, height - 1) * (2.0 / max(height - 1, 1)) - 1.0
        gx = xs.clamp(0, width - 1) * (2.0 / max(width - 1, 1)) - 1.0
        rows, cols = output_h * gh, output_w * gw
        grid = torch.stack((gx.reshape(1, cols).expand(rows, cols), gy.reshape(rows, 1).expand(rows, cols)),
                           dim=-1).reshape(1, rows, cols, 2)
        # grid_sampler modes: 0 bilinear, 1 border padding; align_corners.
        samples = torch.grid_sampler(input[image:image + 1], grid, 0, 1, True)
        samples = samples.reshape(channels, output_h, gh, output_w, gw)
        weight = (valid_y[:, :, None, None] & valid_x[None, None, :, :]).to(input.dtype) / (gh * gw)
        out[i] = (samples * weight).sum(dim=[2, 4])
    return out


def ts_decode_boxes(deltas: Tensor, boxes: Tensor, weights: List[float], scale_clamp: float) -> Tensor:
    n = deltas.size(0)
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    d = deltas.reshape(n, deltas.size(1) // 4, 4)
    dx = d[:, :, 0] / weights[0]
    dy = d[:, :, 1] / weights[1]
    dw = (d[:, :, 2] / weights[2]).clamp(max=scale_clamp)
    dh = (d[:, :, 3] / weights[3]).clamp(max=scale_clamp)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    out = torch.stack((pred_ctr_x - 0.5 * pred_w, pred_ctr_y - 0.5 * pred_h,
                       pred_ctr_x + 0.5 * pred_w, pred_ctr_y + 0.5 * pred_h), dim=-1)
    return out.reshape(deltas.size())


def ts_encode_boxes(target_boxes: Tensor, boxes: Tensor, weights: List[float]) -> Tensor:
    boxes = boxes.to(target_boxes.dtype)
    src_w = boxes[:, 2] - boxes[:, 0]
    src_h = boxes[:, 3] - boxes[:, 1]
    src_x = boxes[:, 0] + 0.5 * src_w
    src_y = boxes[:, 1] + 0.5 * src_h
    tgt_w = target_boxes[:, 2] - target_boxes[:, 0]
    tgt_h = target_boxes[:, 3] - target_boxes[:, 1]
    tgt_x = target_boxes[:, 0] + 0.5 * tgt_w
    tgt_y = target_boxes[:, 1] + 0.5 * tgt_h
    return torch.stack((weights[0] * (tgt_x - src_x) / src_w, weights[1] * (tgt_y - src_y) / src_h,
                        weights[2] * torch.log(tgt_w / src_w), weights[3] * torch.log(tgt_h / src_h)), dim=1)


def ts_clip_boxes(boxes: Tensor, image_size: Tensor) -> Tensor:
    size = image_size.to(boxes.dtype)
    bounds = torch.stack((size[1], size[0], size[1], size[0])).repeat(boxes.size(1) // 4)
    return torch.minimum(boxes.clamp(min=0), bounds)


def ts_assign_fpn_levels(boxes: Tensor, min_level: int, max_level: int, canonical_box_size: int,
                         canonical_level: int) -> Tensor:
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0)
    level = torch.floor(canonical_level + torch.log2(torch.sqrt(area) / canonical_box_size + 1e-8))
    return level.clamp(min=min_level, max=max_level).to(torch.int64) - min_level


def ts_bilinear_weights(src: Tensor, size: int) -> Tensor:
    j = torch.arange(size, dtype=src.dtype, device=src.device)
    return (1.0 - (src[..., None] - j).abs()).clamp(min=0)


def ts_paste_masks(masks: Tensor, boxes: Tensor, image_size: Tensor, threshold: float) -> Tensor:
    n, mask_h, mask_w = masks.size(0), masks.size(1), masks.size(2)
    height, width = int(image_size[0]), int(image_size[1])
    out_dtype = torch.bool if threshold >= 0 else torch.float32
    if n == 0:
        return torch.zeros([0, height, width], dtype=out_dtype, device=masks.device)
    masks = masks.to(torch.float32)
    boxes = boxes.to(torch.float32)
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    box_w, box_h = x1 - x0, y1 - y0
    tiny = 1.1754943508222875e-38  # torch.finfo(torch.float32).tiny
    px = torch.arange(width, dtype=torch.float32, device=masks.device) + 0.5
    py = torch.arange(height, dtype=torch.float32, device=masks.device) + 0.5
    src_x = (px[None, :] - x0[:, None]) / box_w.clamp(min=tiny)[:, None] * mask_w - 0.5
    src_y = (py[None, :] - y0[:, None]) / box_h.clamp(min=tiny)[:, None] * mask_h - 0.5
    ax = ts_bilinear_weights(src_x, mask_w) * (box_w > 0)[:, None, None]
    ay = ts_bilinear_weights(src_y, mask_h) * (box_h > 0)[:, None, None]
    canvas = torch.bmm(torch.bmm(ay, masks), ax.transpose(1, 2))
    return canvas >= threshold if threshold >= 0 else canvas


def ts_resize_weights(out_sizes: Tensor, in_size: int, max_out: int) -> Tensor:
    dst = torch.arange(max_out, dtype=torch.float32, device=out_sizes.device) + 0.5
    scale = in_size / out_sizes.to(torch.float32)
    src = (dst[None, :] * scale[:, None] - 0.5).clamp(0, in_size - 1)
    inside = dst[None, :] < out_sizes[:, None]
    return ts_bilinear_weights(src, in_size) * inside[:, :, None]


def ts_heatmaps_to_keypoints(maps: Tensor, rois: Tensor) -> Tensor:
    n, k, map_h, map_w = maps.size(0), maps.size(1), maps.size(2), maps.size(3)
    if n == 0:
        return torch.zeros([0, k, 4], dtype=maps.dtype, device=maps.device)
    maps = maps.to(torch.float32)
    rois = rois.to(torch.float32)
    widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)
    heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)
    out_w = torch.ceil(widths).to(torch.int64)
    out_h = torch.ceil(heights).to(torch.int64)
    max_h, max_w = int(out_h.max()), int(out_w.max())
    wy = ts_resize_weights(out_h, map_h, max_h)
    wx = ts_resize_weights(out_w, map_w, max_w)
    resized = wy[:, None] @ maps @ wx[:, None].transpose(-1, -2)
    inside = (torch.arange(max_h, device=maps.device)[None, :, None] < out_h[:, None, None]) & (
        torch.arange(max_w, device=maps.device)[None, None, :] < out_w[:, None, None])
    resized = resized.masked_fill(~inside[:, None], float("-inf")).flatten(2)
    pos = resized.argmax(dim=2)
    logit = resized.gather(2, pos[:, :, None]).squeeze(2)
    y_int = torch.div(pos, max_w, rounding_mode="floor")
    x_int = pos - y_int * max_w
    x = (x_int + 0.5) * (widths / out_w)[:, None] + rois[:, 0, None]
    y = (y_int + 0.5) * (heights / out_h)[:, None] + rois[:, 1, None]
    score = 1.0 / torch.exp(maps - logit[:, :, None, None]).sum(dim=[2, 3])
    return torch.stack((x, y, logit, score), dim=-1)


FUNCTIONS = {
    "dexport::nms": ts_nms,
    "dexport::batched_nms": ts_batched_nms,
    "dexport::roi_align": ts_roi_align,
    "dexport::decode_boxes": ts_decode_boxes,
    "dexport::encode_boxes": ts_encode_boxes,
    "dexport::clip_boxes": ts_clip_boxes,
    "dexport::assign_fpn_levels": ts_assign_fpn_levels,
    "dexport::paste_masks": ts_paste_masks,
    "dexport::heatmaps_to_keypoints": ts_heatmaps_to_keypoints,
}
HELPERS = [ts_overlaps, ts_greedy_nms, ts_bilinear_weights, ts_resize_weights]
