"""TorchScript versions of the ``dexport::`` detection ops, in plain ATen only.

A TorchScript artifact must load in plain libtorch (C++) or in a python process that
has only torch: an op registered from python (``torch.ops.dexport.nms``, ...) would
be an unknown operator there. So the TorchScript backend pastes these functions'
source (``inspect.getsource``) into the model.py it generates and compiles it with
``torch.jit.script``; the saved graph then holds only ATen ops.

The contract, which keeps pasting safe:

* every function is top level, fully annotated, scriptable, and uses no names but
  ``torch``, ``math`` and ``typing``'s ``List`` / ``Optional`` / ``Tuple`` (no other
  dexport code, no module constants: limits are literals; no closures, decorators);
* every name starts with ``dexport_`` so it cannot collide with generated code;
* ``FUNCTIONS`` maps an op name to its function, which takes the IR node's inputs
  (the op schema's arguments, in order) and returns what the op returns;
  ``HELPERS`` lists the functions those call, in an order that pastes top to bottom;
* callers pass arguments of the annotated types: TorchScript converts no int to
  float in a call, so a float argument is written ``1.0`` (not ``1``) and a weights
  list ``[1.0, 1.0, 1.0, 1.0]``.

Each function repeats its reference kernel in ``dexport.ir.dialects.dexport`` (which
defines the semantics) aten op for aten op, with the same scalar types and the same
chunking, so on CPU the results are bit-identical: NMS keeps the same indices in the
same order (stable score sort, blocked greedy scan of 256 boxes), roi_align groups
rois by (image, grid size) and samples each group with one grid_sampler call,
paste_masks and heatmaps_to_keypoints use the same interpolation matrices. Python
spellings that eager maps to other aten ops than TorchScript would are written as
the op eager runs: ``x.reciprocal() * c`` for ``c / x`` (Tensor.__rtruediv__), and
``torch.grid_sampler`` is what ``F.grid_sample`` calls. The speed is the kernels'
(same ops, same python-level loops: per 256-box NMS block, per roi_align group,
per memory chunk; none per box).
"""

# The names pasted code may use (besides torch); Callable only types the tables below.
import math
from typing import Callable, List, Optional, Tuple  # noqa: F401

import torch


# --------------------------------------------------------------------------- NMS


def dexport_box_overlaps(a: torch.Tensor, b: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Bool [n, m]: IoU(a[i], b[j]) > iou_threshold as inter > t·union (boxes inverted
    on an axis are empty)."""
    inter_w = torch.minimum(a[:, 2].unsqueeze(1), b[:, 2].unsqueeze(0)) - torch.maximum(
        a[:, 0].unsqueeze(1), b[:, 0].unsqueeze(0)
    )
    inter_h = torch.minimum(a[:, 3].unsqueeze(1), b[:, 3].unsqueeze(0)) - torch.maximum(
        a[:, 1].unsqueeze(1), b[:, 1].unsqueeze(0)
    )
    inter = inter_w.clamp_(min=0).mul_(inter_h.clamp_(min=0))
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    union = (area_a.unsqueeze(1) + area_b.unsqueeze(0)).sub_(inter)
    return inter > union.mul_(iou_threshold)


def dexport_box_suppresses(
    a: torch.Tensor,
    b: torch.Tensor,
    class_a: Optional[torch.Tensor],
    class_b: Optional[torch.Tensor],
    iou_threshold: float,
) -> torch.Tensor:
    """Bool [n, m]: a[i] overlaps b[j] enough and (when classes are given) shares its class."""
    hit = dexport_box_overlaps(a, b, iou_threshold)
    if class_a is not None and class_b is not None:
        hit = hit & (class_a.unsqueeze(1) == class_b.unsqueeze(0))
    return hit


def dexport_greedy_nms(
    boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, classes: Optional[torch.Tensor]
) -> torch.Tensor:
    """Kept indices by decreasing score (ties: lower index first), the kernel's blocked
    greedy scan: within a block of 256 sorted boxes the greedy result is the fixed point
    of "kept = not overlapped by an earlier kept box"; the block's kept boxes then
    remove their overlaps from every later box at once."""
    n = boxes.shape[0]
    device = boxes.device
    if n == 0:
        return torch.empty([0], dtype=torch.int64, device=device)
    order = torch.sort(scores, stable=True, dim=0, descending=True)[1]
    sorted_boxes = boxes[order]
    sorted_classes: Optional[torch.Tensor] = None
    if classes is not None:
        sorted_classes = classes[order]
    removed = torch.zeros([n], dtype=torch.bool, device=device)
    keep = torch.zeros([n], dtype=torch.bool, device=device)
    for start in range(0, n, 256):
        stop = min(start + 256, n)
        alive = torch.nonzero(~removed[start:stop]).flatten() + start
        if alive.numel() == 0:
            continue
        alive_classes: Optional[torch.Tensor] = None
        if sorted_classes is not None:
            alive_classes = sorted_classes[alive]
        alive_boxes = sorted_boxes[alive]
        hit = dexport_box_suppresses(alive_boxes, alive_boxes, alive_classes, alive_classes, iou_threshold)
        # Only a higher-scored box may suppress a lower-scored one; one round of the
        # fixed point is then a matrix-vector product.
        inner = torch.triu(hit, diagonal=1).to(torch.float32)
        kept = torch.ones([alive.numel()], dtype=torch.bool, device=device)
        while True:
            refined = torch.matmul(kept.to(torch.float32), inner) == 0
            if torch.equal(refined, kept):
                break
            kept = refined
        kept_idx = alive[kept]
        keep.index_fill_(0, kept_idx, True)
        if stop < n:
            later_classes: Optional[torch.Tensor] = None
            kept_classes: Optional[torch.Tensor] = None
            if sorted_classes is not None:
                kept_classes = sorted_classes[kept_idx]
                later_classes = sorted_classes[stop:]
            hit = dexport_box_suppresses(
                sorted_boxes[kept_idx], sorted_boxes[stop:], kept_classes, later_classes, iou_threshold
            )
            removed[stop:].bitwise_or_(hit.any(dim=0))
    return order[keep]


def dexport_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """dexport::nms: indices (i64) of the kept boxes by decreasing score."""
    return dexport_greedy_nms(boxes, scores, iou_threshold, None)


def dexport_batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """dexport::batched_nms: like nms, boxes only suppress boxes with the same idxs."""
    return dexport_greedy_nms(boxes, scores, iou_threshold, idxs)


# --------------------------------------------------------------------------- RoIAlign


def dexport_roi_align(
    input: torch.Tensor,
    rois: torch.Tensor,
    spatial_scale: float,
    output_h: int,
    output_w: int,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """[K,5] rois (batch index, x1, y1, x2, y2) → [K,C,oh,ow]: each bin is the mean of a
    gh×gw grid of bilinear samples (0 outside [-1, H] × [-1, W], else clamped into the
    image); rois are grouped by (image, gh, gw), each group sampled by one
    grid_sampler call (bilinear, border, align_corners) in chunks of ≤ 2²⁴ elements."""
    channels = input.shape[1]
    height = input.shape[2]
    width = input.shape[3]
    dtype = input.dtype
    device = rois.device
    out = input.new_zeros([rois.shape[0], channels, output_h, output_w])
    rois = rois.detach().to(dtype)
    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    roi_w = rois[:, 3] * spatial_scale - offset - x1
    roi_h = rois[:, 4] * spatial_scale - offset - y1
    if not aligned:  # legacy mode: never smaller than one pixel
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    bin_w = roi_w / output_w
    bin_h = roi_h / output_h
    if sampling_ratio > 0:
        grid_h = torch.full([rois.shape[0]], sampling_ratio, dtype=torch.int64, device=device)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / output_h).to(torch.int64)
        grid_w = torch.ceil(roi_w / output_w).to(torch.int64)
    keys = torch.stack([rois[:, 0].to(torch.int64), grid_h, grid_w], dim=1)
    groups, group_of_roi = torch.unique(keys, sorted=True, return_inverse=True, dim=0)
    group_list: List[List[int]] = groups.tolist()
    py = torch.arange(output_h, dtype=dtype, device=device)
    px = torch.arange(output_w, dtype=dtype, device=device)
    for g in range(len(group_list)):
        image = group_list[g][0]
        gh = group_list[g][1]
        gw = group_list[g][2]
        if gh <= 0 or gw <= 0:  # zero-size roi (aligned mode): no samples, the bin is 0
            continue
        members = torch.nonzero(group_of_roi == g).flatten()
        rows = output_h * gh
        cols = output_w * gw
        step = max(1, 16777216 // (channels * rows * cols))
        fy = (torch.arange(gh, dtype=dtype, device=device) + 0.5) / gh
        fx = (torch.arange(gw, dtype=dtype, device=device) + 0.5) / gw
        for start in range(0, members.numel(), step):
            idx = members[start : start + step]
            k = idx.numel()
            ys = y1[idx].view(k, 1, 1) + (py.view(1, -1, 1) + fy.view(1, 1, -1)) * bin_h[idx].view(k, 1, 1)
            xs = x1[idx].view(k, 1, 1) + (px.view(1, -1, 1) + fx.view(1, 1, -1)) * bin_w[idx].view(k, 1, 1)
            valid_y = (ys >= -1.0) & (ys <= height)
            valid_x = (xs >= -1.0) & (xs <= width)
            gy = ys.clamp(0, height - 1) * (2.0 / max(height - 1, 1)) - 1.0
            gx = xs.clamp(0, width - 1) * (2.0 / max(width - 1, 1)) - 1.0
            grid = torch.stack(
                [gx.reshape(k, 1, cols).expand(k, rows, cols), gy.reshape(k, rows, 1).expand(k, rows, cols)],
                dim=-1,
            ).reshape(1, k * rows, cols, 2)
            valid = valid_y.view(k, output_h, gh, 1, 1) & valid_x.view(k, 1, 1, output_w, gw)
            weight = valid.to(dtype) / (gh * gw)
            # interpolation 0 = bilinear, padding 1 = border (what F.grid_sample passes)
            samples = torch.grid_sampler(input[image : image + 1], grid, 0, 1, True).reshape(
                channels, k, output_h, gh, output_w, gw
            )
            out[idx] = (samples * weight).sum(dim=[3, 5]).permute(1, 0, 2, 3)
    return out


# --------------------------------------------------------------------------- box coding


def dexport_roi_pool_bins(
    start: torch.Tensor, roi_size: torch.Tensor, bins: int, limit: int, dtype: torch.dtype
) -> Tuple[torch.Tensor, torch.Tensor]:
    size = roi_size.to(dtype) / bins
    index = torch.arange(bins, dtype=dtype, device=start.device)
    lo = torch.floor(index[None] * size[:, None]).long() + start[:, None]
    hi = torch.ceil((index[None] + 1) * size[:, None]).long() + start[:, None]
    return lo.clamp(0, limit), hi.clamp(0, limit)


def dexport_roi_pool(
    input: torch.Tensor, rois: torch.Tensor, spatial_scale: float, output_h: int, output_w: int
) -> torch.Tensor:
    channels, height, width = input.shape[1], input.shape[2], input.shape[3]
    k = rois.shape[0]
    out = input.new_zeros([k, channels, output_h, output_w])
    scaled = rois[:, 1:] * spatial_scale
    corners = (torch.sign(scaled) * torch.floor(scaled.abs() + 0.5)).long()  # C's round()
    x1, y1, x2, y2 = corners[:, 0], corners[:, 1], corners[:, 2], corners[:, 3]
    h_lo, h_hi = dexport_roi_pool_bins(y1, (y2 - y1 + 1).clamp(min=1), output_h, height, input.dtype)
    w_lo, w_hi = dexport_roi_pool_bins(x1, (x2 - x1 + 1).clamp(min=1), output_w, width, input.dtype)
    rows = torch.arange(height, device=input.device)
    cols = torch.arange(width, device=input.device)
    in_h = (rows >= h_lo[..., None]) & (rows < h_hi[..., None])
    in_w = (cols >= w_lo[..., None]) & (cols < w_hi[..., None])
    empty = (h_hi <= h_lo)[:, :, None] | (w_hi <= w_lo)[:, None, :]
    lowest = -math.inf
    step = max(1, 16777216 // max(1, channels * height * width * max(output_h, output_w)))
    zero = torch.zeros([], dtype=input.dtype, device=input.device)
    for s in range(0, k, step):
        features = input[rois[s:s + step, 0].long()]
        per_col = torch.where(in_w[s:s + step, None, None], features[:, :, :, None, :], lowest).amax(-1)
        pooled = torch.where(in_h[s:s + step, None, :, :, None], per_col[:, :, None], lowest).amax(3)
        out[s:s + step] = torch.where(empty[s:s + step, None], zero, pooled)
    return out


def dexport_decode_boxes(
    deltas: torch.Tensor, boxes: torch.Tensor, weights: List[float], scale_clamp: float
) -> torch.Tensor:
    """(dx, dy, dw, dh) deltas [N,4k] applied to reference boxes [N,4] (detectron2's rule)."""
    n = deltas.shape[0]
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    d = deltas.reshape(n, deltas.shape[1] // 4, 4)
    dx = d[:, :, 0] / weights[0]
    dy = d[:, :, 1] / weights[1]
    dw = (d[:, :, 2] / weights[2]).clamp(max=scale_clamp)
    dh = (d[:, :, 3] / weights[3]).clamp(max=scale_clamp)
    pred_ctr_x = dx * widths.unsqueeze(1) + ctr_x.unsqueeze(1)
    pred_ctr_y = dy * heights.unsqueeze(1) + ctr_y.unsqueeze(1)
    pred_w = torch.exp(dw) * widths.unsqueeze(1)
    pred_h = torch.exp(dh) * heights.unsqueeze(1)
    out = torch.stack(
        [
            pred_ctr_x - 0.5 * pred_w,
            pred_ctr_y - 0.5 * pred_h,
            pred_ctr_x + 0.5 * pred_w,
            pred_ctr_y + 0.5 * pred_h,
        ],
        dim=-1,
    )
    return out.reshape(deltas.shape)


def dexport_encode_boxes(target_boxes: torch.Tensor, boxes: torch.Tensor, weights: List[float]) -> torch.Tensor:
    """The deltas [N,4] that decode_boxes maps ``boxes`` onto ``target_boxes`` with."""
    boxes = boxes.to(target_boxes.dtype)
    src_w = boxes[:, 2] - boxes[:, 0]
    src_h = boxes[:, 3] - boxes[:, 1]
    src_x = boxes[:, 0] + 0.5 * src_w
    src_y = boxes[:, 1] + 0.5 * src_h
    tgt_w = target_boxes[:, 2] - target_boxes[:, 0]
    tgt_h = target_boxes[:, 3] - target_boxes[:, 1]
    tgt_x = target_boxes[:, 0] + 0.5 * tgt_w
    tgt_y = target_boxes[:, 1] + 0.5 * tgt_h
    return torch.stack(
        [
            weights[0] * (tgt_x - src_x) / src_w,
            weights[1] * (tgt_y - src_y) / src_h,
            weights[2] * torch.log(tgt_w / src_w),
            weights[3] * torch.log(tgt_h / src_h),
        ],
        dim=1,
    )


def dexport_clip_boxes(boxes: torch.Tensor, image_size: torch.Tensor) -> torch.Tensor:
    """x columns of [N,4k] boxes clamped into [0, w], y columns into [0, h]; image_size (h, w)."""
    size = image_size.to(boxes.dtype)
    h = size[0]
    w = size[1]
    bounds = torch.stack([w, h, w, h]).repeat(boxes.shape[1] // 4)
    return torch.minimum(boxes.clamp(min=0), bounds)


# --------------------------------------------------------------------------- FPN levels


def dexport_assign_fpn_levels(
    boxes: torch.Tensor, min_level: int, max_level: int, canonical_box_size: int, canonical_level: int
) -> torch.Tensor:
    """0-based FPN level (Eq. 1 of the FPN paper) of each box; zero-area boxes go to min_level."""
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0)
    level = torch.floor(torch.log2(torch.sqrt(area) / canonical_box_size + 1e-8) + canonical_level)
    return level.clamp(min=min_level, max=max_level).to(torch.int64) - min_level


# --------------------------------------------------------------------------- mask pasting


def dexport_bilinear_weights(src: torch.Tensor, size: int) -> torch.Tensor:
    """[..., size] bilinear weights at source coordinates ``src``, zero outside [0, size-1]."""
    j = torch.arange(size, dtype=src.dtype, device=src.device)
    return (1.0 - (src.unsqueeze(-1) - j).abs()).clamp(min=0)


def dexport_paste_masks(
    masks: torch.Tensor, boxes: torch.Tensor, image_size: torch.Tensor, threshold: float
) -> torch.Tensor:
    """Masks [N,Mh,Mw] resized into their boxes on an (h, w) canvas as Ay @ mask @ Axᵀ
    (grid_sample's bilinear, align_corners=False, zero padding); b8 canvas >= threshold,
    or the f32 canvas when threshold < 0. Boxes of zero width or height paste nothing."""
    n = masks.shape[0]
    mask_h = masks.shape[1]
    mask_w = masks.shape[2]
    height = int(image_size[0])
    width = int(image_size[1])
    out_dtype = torch.bool if threshold >= 0 else torch.float32
    if n == 0:
        return masks.new_zeros([0, height, width], dtype=out_dtype)
    masks = masks.to(torch.float32)
    boxes = boxes.to(torch.float32)
    x0 = boxes[:, 0]
    y0 = boxes[:, 1]
    box_w = boxes[:, 2] - x0
    box_h = boxes[:, 3] - y0
    tiny = 1.1754943508222875e-38  # torch.finfo(torch.float32).tiny
    px = torch.arange(width, dtype=torch.float32, device=masks.device) + 0.5
    py = torch.arange(height, dtype=torch.float32, device=masks.device) + 0.5
    src_x = (px.unsqueeze(0) - x0.unsqueeze(1)) / box_w.clamp(min=tiny).unsqueeze(1) * mask_w - 0.5
    src_y = (py.unsqueeze(0) - y0.unsqueeze(1)) / box_h.clamp(min=tiny).unsqueeze(1) * mask_h - 0.5
    ax = dexport_bilinear_weights(src_x, mask_w) * (box_w > 0).view(n, 1, 1)  # [N, W, Mw]
    ay = dexport_bilinear_weights(src_y, mask_h) * (box_h > 0).view(n, 1, 1)  # [N, H, Mh]
    pieces: List[torch.Tensor] = []
    step = max(1, 16777216 // max(height * width, 1))
    for start in range(0, n, step):
        stop = start + step
        canvas = torch.bmm(torch.bmm(ay[start:stop], masks[start:stop]), ax[start:stop].transpose(1, 2))
        if threshold >= 0:
            pieces.append(canvas >= threshold)
        else:
            pieces.append(canvas)
    return torch.cat(pieces)


# --------------------------------------------------------------------------- keypoints


def dexport_resize_weights(out_sizes: torch.Tensor, in_size: int, max_out: int) -> torch.Tensor:
    """[n, max_out, in_size] matrices of bilinear resizing (align_corners=False) from
    in_size to each out_sizes[i]; rows past a size are 0."""
    dst = torch.arange(max_out, dtype=torch.float32, device=out_sizes.device) + 0.5
    scale = out_sizes.to(torch.float32).reciprocal() * in_size  # eager's `in_size / t`
    src = (dst.unsqueeze(0) * scale.unsqueeze(1) - 0.5).clamp(0, in_size - 1)
    inside = dst.unsqueeze(0) < out_sizes.unsqueeze(1)
    return dexport_bilinear_weights(src, in_size) * inside.unsqueeze(-1)


def dexport_heatmaps_to_keypoints(maps: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """Heatmaps [N,K,Hm,Wm] over rois [N,4] → [N,K,4] (x, y, logit, score): each map
    resized to ceil(roi size), first maximum (row-major) at its pixel centre scaled
    back to the roi, score = softmax of that maximum. Rois are resized together,
    padded to the chunk's largest, in chunks of ≤ 2²⁴ elements (the kernel's chunks)."""
    n = maps.shape[0]
    k = maps.shape[1]
    map_h = maps.shape[2]
    map_w = maps.shape[3]
    if n == 0:
        return maps.new_zeros([0, k, 4])
    maps = maps.to(torch.float32)
    rois = rois.to(torch.float32)
    widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)
    heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)
    out_w = torch.ceil(widths).to(torch.int64)
    out_h = torch.ceil(heights).to(torch.int64)
    pieces: List[torch.Tensor] = []
    start = 0
    while start < n:
        # The kernel's chunk: grow while [count, K, running max h, running max w] fits;
        # that size only grows with the count, so the chunk is the prefix that fits.
        run_h = torch.cummax(out_h[start:], 0)[0]
        run_w = torch.cummax(out_w[start:], 0)[0]
        count = torch.arange(1, n - start + 1, dtype=torch.int64, device=out_h.device)
        fits = int(((count * k * run_h * run_w) <= 16777216).sum())
        stop = start + max(1, fits)
        max_h = int(run_h[stop - start - 1])
        max_w = int(run_w[stop - start - 1])
        wy = dexport_resize_weights(out_h[start:stop], map_h, max_h)  # [c, max_h, Hm]
        wx = dexport_resize_weights(out_w[start:stop], map_w, max_w)  # [c, max_w, Wm]
        chunk = maps[start:stop]
        resized = torch.matmul(torch.matmul(wy.unsqueeze(1), chunk), wx.unsqueeze(1).transpose(-1, -2))
        inside = (torch.arange(max_h, device=maps.device).view(1, -1, 1) < out_h[start:stop].view(-1, 1, 1)) & (
            torch.arange(max_w, device=maps.device).view(1, 1, -1) < out_w[start:stop].view(-1, 1, 1)
        )
        resized = resized.masked_fill(~inside.unsqueeze(1), float("-inf")).flatten(2)
        pos = resized.argmax(dim=2)  # first maximum in row-major order
        logit = resized.gather(2, pos.unsqueeze(-1)).squeeze(2)
        y_int = torch.div(pos, max_w, rounding_mode="floor")
        x_int = pos - y_int * max_w
        chunk_rois = rois[start:stop]
        x = (x_int + 0.5) * (widths[start:stop] / out_w[start:stop]).unsqueeze(1) + chunk_rois[:, 0].unsqueeze(1)
        y = (y_int + 0.5) * (heights[start:stop] / out_h[start:stop]).unsqueeze(1) + chunk_rois[:, 1].unsqueeze(1)
        score = torch.exp(chunk - logit.unsqueeze(-1).unsqueeze(-1)).sum(dim=[2, 3]).reciprocal()
        pieces.append(torch.stack([x, y, logit, score], dim=-1))
        start = stop
    return torch.cat(pieces)


# --------------------------------------------------------------------------- tables

# Auxiliary functions, in an order that pastes top to bottom (callees first).
HELPERS: list[Callable] = [
    dexport_box_overlaps,
    dexport_box_suppresses,
    dexport_greedy_nms,
    dexport_roi_pool_bins,
    dexport_bilinear_weights,
    dexport_resize_weights,
]

# Op name -> its TorchScript version (inputs in the op schema's order).
FUNCTIONS: dict[str, Callable] = {
    "dexport::nms": dexport_nms,
    "dexport::batched_nms": dexport_batched_nms,
    "dexport::roi_align": dexport_roi_align,
    "dexport::roi_pool": dexport_roi_pool,
    "dexport::decode_boxes": dexport_decode_boxes,
    "dexport::encode_boxes": dexport_encode_boxes,
    "dexport::clip_boxes": dexport_clip_boxes,
    "dexport::assign_fpn_levels": dexport_assign_fpn_levels,
    "dexport::paste_masks": dexport_paste_masks,
    "dexport::heatmaps_to_keypoints": dexport_heatmaps_to_keypoints,
}
