"""The dexport dialect: detection ops as torch custom ops in the ``dexport`` namespace,
with their type rules and the python wrappers models call them through.

Each op is registered with ``torch.library.custom_op`` (schema, CPU reference kernel,
fake kernel) so that ``torch.jit.trace`` records it as ONE node (``dexport::nms``, ...)
and torch.export sees it through its fake kernel; the compiler then lowers that node
per backend instead of digging through the hundreds of ATen ops a python
implementation would trace into. Its type rule (``register_type_rule``) gives the IR
the output dtype and every dim that follows from the inputs; data-dependent dims
(NMS survivors, a canvas the size of a tensor's values) are ``?``.

Sizes that depend on the input resolution (``image_size``) are i64 tensors, never
python ints, so a trace stays valid at another resolution. Kernels are plain,
vectorised torch (no python loop per box); they run on any device.

Float ops on a training path have autograd: decode/encode/clip boxes recompute
their (differentiable torch) kernel under autograd in the backward pass, exact and
with no hand-written gradient; roi_align has its own ``dexport::_roi_align_backward``
op (gradient for the features only, as in torchvision).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from dexport.ir.ops import constant_input, register_type_rule
from dexport.ir.types import TensorType

__all__ = [
    "nms",
    "batched_nms",
    "roi_align",
    "decode_boxes",
    "encode_boxes",
    "clip_boxes",
    "assign_fpn_levels",
    "paste_masks",
    "heatmaps_to_keypoints",
    "DEFAULT_SCALE_CLAMP",
    "OPS",
]

# detectron2's default clamp on dw/dh: no box grows more than 1000/16 times its anchor.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)

# Upper bound on the elements of one intermediate tensor; big inputs are processed
# in chunks of this size so memory stays bounded (chunks, never single boxes).
_CHUNK_ELEMENTS = 1 << 24
# Boxes resolved together by one round of the blocked greedy NMS scan.
_NMS_BLOCK = 256


def _dynamic_size() -> int:
    """A fresh data-dependent size for a fake kernel (e.g. the number of NMS survivors)."""
    return torch.library.get_ctx().new_dynamic_size()


def _grad_by_recompute(op, kernel) -> None:
    """Give ``op`` autograd by re-running its (differentiable) torch kernel in backward."""

    def setup_context(ctx, inputs, output):
        ctx.tensor_positions = [i for i, a in enumerate(inputs) if isinstance(a, torch.Tensor)]
        ctx.save_for_backward(*(inputs[i] for i in ctx.tensor_positions))
        ctx.constants = [None if isinstance(a, torch.Tensor) else a for a in inputs]

    def backward(ctx, grad_output):
        args = list(ctx.constants)
        wanted = []
        with torch.enable_grad():
            for pos, saved in zip(ctx.tensor_positions, ctx.saved_tensors):
                needs = ctx.needs_input_grad[pos]
                args[pos] = saved.detach().requires_grad_(needs)
                if needs:
                    wanted.append(pos)
            output = kernel(*args)
            grads = torch.autograd.grad(
                output, [args[p] for p in wanted], grad_output, allow_unused=True
            )
        result = [None] * len(args)
        for pos, grad in zip(wanted, grads):
            result[pos] = grad
        return tuple(result)

    op.register_autograd(backward, setup_context=setup_context)


# --------------------------------------------------------------------------- NMS


def _overlaps(a: torch.Tensor, b: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Bool [n, m]: IoU(a[i], b[j]) > iou_threshold, tested as inter > t·union (no
    division, so zero-area pairs simply do not overlap). Few n×m temporaries."""
    inter_w = torch.minimum(a[:, None, 2], b[None, :, 2]) - torch.maximum(a[:, None, 0], b[None, :, 0])
    inter_h = torch.minimum(a[:, None, 3], b[None, :, 3]) - torch.maximum(a[:, None, 1], b[None, :, 1])
    inter = inter_w.clamp_(min=0).mul_(inter_h.clamp_(min=0))
    # A box inverted on one axis is empty; an unclamped (negative) area would make the
    # union negative and let it suppress boxes it does not even touch.
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    union = (area_a[:, None] + area_b[None, :]).sub_(inter)
    return inter > union.mul_(iou_threshold)


def _greedy_nms(boxes, scores, iou_threshold: float, classes=None) -> torch.Tensor:
    """Greedy NMS: kept indices by decreasing score (stable: ties keep the lower index
    first); a box is dropped when its IoU with an already kept box is > iou_threshold
    and, when ``classes`` is given, that box has the same class. (A same-class mask
    rather than detectron2's coordinate-offset trick: exact for any coordinates.)

    Vectorised by blocks of the score-sorted boxes. Within a block, the greedy result
    is the unique fixed point of "kept = alive and not overlapped by an earlier kept
    box", reached by iterating that rule (at most block-size rounds, usually a few);
    the block's kept boxes then remove their overlaps from all later boxes at once.
    Cost: about (kept boxes × N) box pairs instead of N × N.
    """
    n = boxes.shape[0]
    device = boxes.device
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=device)
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order]
    sorted_classes = classes[order] if classes is not None else None

    def overlaps(rows, cols) -> torch.Tensor:  # index tensors or slices of the sorted boxes
        hit = _overlaps(sorted_boxes[rows], sorted_boxes[cols], iou_threshold)
        if sorted_classes is not None:
            hit &= sorted_classes[rows][:, None] == sorted_classes[cols][None, :]
        return hit

    removed = torch.zeros(n, dtype=torch.bool, device=device)
    keep = torch.zeros(n, dtype=torch.bool, device=device)
    for start in range(0, n, _NMS_BLOCK):
        stop = min(start + _NMS_BLOCK, n)
        alive = torch.nonzero(~removed[start:stop]).flatten() + start
        if alive.numel() == 0:
            continue
        # Only a higher-scored box may suppress a lower-scored one.
        inner = torch.triu(overlaps(alive, alive), diagonal=1)
        inner = inner.to(torch.float32)  # a round is then one matrix-vector product
        kept = torch.ones(alive.numel(), dtype=torch.bool, device=device)
        while True:
            refined = (kept.to(torch.float32) @ inner) == 0
            if torch.equal(refined, kept):
                break
            kept = refined
        kept_idx = alive[kept]
        keep[kept_idx] = True
        if stop < n:
            removed[stop:] |= overlaps(kept_idx, slice(stop, None)).any(dim=0)
    return order[keep]


@torch.library.custom_op("dexport::nms", mutates_args=())
def _nms_op(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    return _greedy_nms(boxes, scores, iou_threshold)


@_nms_op.register_fake
def _(boxes, scores, iou_threshold):
    return boxes.new_empty(_dynamic_size(), dtype=torch.int64)


@torch.library.custom_op("dexport::batched_nms", mutates_args=())
def _batched_nms_op(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    return _greedy_nms(boxes, scores, iou_threshold, classes=idxs)


@_batched_nms_op.register_fake
def _(boxes, scores, idxs, iou_threshold):
    return boxes.new_empty(_dynamic_size(), dtype=torch.int64)


# --------------------------------------------------------------------------- RoIAlign


def _roi_align_plan(rois, channels, height, width, spatial_scale, output_h, output_w, sampling_ratio, aligned, dtype):
    """Where RoIAlign samples, shared by the forward and the backward kernel.

    Sampling follows torchvision/detectron2: bin (ph, pw) of a roi is the mean of a
    gh×gw grid of bilinear samples; a sample outside [-1, H] × [-1, W] counts as 0,
    otherwise its coordinates are clamped into the image. Samples are taken with
    grid_sample (align_corners=True maps grid values exactly onto pixel indices).
    With adaptive sampling every roi has its own grid size, so rois are grouped by
    (image, gh, gw) and each group (in memory-bounded chunks) is sampled in one call.

    Yields (image, roi indices [k], grid [1, k·oh·gh, ow·gw, 2], weight [k, oh, gh, ow, gw])
    with weight = validity / (gh·gw), so a bin is Σ samples × weight.
    """
    rois = rois.detach().to(dtype)
    device = rois.device
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
        grid_h = torch.full((rois.shape[0],), sampling_ratio, dtype=torch.int64, device=device)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / output_h).to(torch.int64)
        grid_w = torch.ceil(roi_w / output_w).to(torch.int64)
    keys = torch.stack((rois[:, 0].to(torch.int64), grid_h, grid_w), dim=1)
    groups, group_of_roi = torch.unique(keys, dim=0, return_inverse=True)
    py = torch.arange(output_h, dtype=dtype, device=device)
    px = torch.arange(output_w, dtype=dtype, device=device)
    for g, (image, gh, gw) in enumerate(groups.tolist()):
        if gh <= 0 or gw <= 0:  # zero-size roi (aligned mode): no samples, the bin is 0
            continue
        members = torch.nonzero(group_of_roi == g).flatten()
        rows, cols = output_h * gh, output_w * gw
        step = max(1, _CHUNK_ELEMENTS // (channels * rows * cols))
        fy = (torch.arange(gh, dtype=dtype, device=device) + 0.5) / gh
        fx = (torch.arange(gw, dtype=dtype, device=device) + 0.5) / gw
        for start in range(0, members.numel(), step):
            idx = members[start : start + step]
            k = idx.numel()
            ys = y1[idx, None, None] + (py[None, :, None] + fy[None, None, :]) * bin_h[idx, None, None]
            xs = x1[idx, None, None] + (px[None, :, None] + fx[None, None, :]) * bin_w[idx, None, None]
            valid_y = (ys >= -1.0) & (ys <= height)
            valid_x = (xs >= -1.0) & (xs <= width)
            gy = ys.clamp(0, height - 1) * (2.0 / max(height - 1, 1)) - 1.0
            gx = xs.clamp(0, width - 1) * (2.0 / max(width - 1, 1)) - 1.0
            grid = torch.stack(
                (
                    gx.reshape(k, 1, cols).expand(k, rows, cols),
                    gy.reshape(k, rows, 1).expand(k, rows, cols),
                ),
                dim=-1,
            ).reshape(1, k * rows, cols, 2)
            valid = valid_y[:, :, :, None, None] & valid_x[:, None, None, :, :]
            yield image, idx, grid, valid.to(dtype) / (gh * gw)


# grid_sampler_2d's enum arguments: bilinear interpolation, border padding.
_BILINEAR, _BORDER = 0, 1


@torch.library.custom_op(
    "dexport::roi_align",
    mutates_args=(),
    # Explicit schemas where python ints would otherwise become SymInt: these are
    # configuration constants, and plain `int` keeps the IR and backends simple.
    schema="(Tensor input, Tensor rois, float spatial_scale, int output_h, int output_w, "
    "int sampling_ratio, bool aligned) -> Tensor",
)
def _roi_align_op(input, rois, spatial_scale, output_h, output_w, sampling_ratio, aligned):
    """Mask R-CNN RoIAlign of [K,5] rois (batch index, x1, y1, x2, y2) → [K,C,oh,ow]."""
    _, channels, height, width = input.shape
    out = input.new_zeros(rois.shape[0], channels, output_h, output_w)
    plan = _roi_align_plan(
        rois, channels, height, width, spatial_scale, output_h, output_w, sampling_ratio, aligned, input.dtype
    )
    for image, idx, grid, weight in plan:
        k, _, gh, _, gw = weight.shape
        samples = F.grid_sample(
            input[image : image + 1], grid, mode="bilinear", padding_mode="border", align_corners=True
        ).reshape(channels, k, output_h, gh, output_w, gw)
        out[idx] = (samples * weight).sum(dim=(3, 5)).permute(1, 0, 2, 3)
    return out


@_roi_align_op.register_fake
def _(input, rois, spatial_scale, output_h, output_w, sampling_ratio, aligned):
    return input.new_empty(rois.shape[0], input.shape[1], output_h, output_w)


@torch.library.custom_op(
    "dexport::_roi_align_backward",
    mutates_args=(),
    schema="(Tensor grad, Tensor input, Tensor rois, float spatial_scale, int output_h, "
    "int output_w, int sampling_ratio, bool aligned) -> Tensor",
)
def _roi_align_backward_op(grad, input, rois, spatial_scale, output_h, output_w, sampling_ratio, aligned):
    """d(loss)/d(input) of roi_align (rois get no gradient, as in torchvision): the
    forward's samples run backwards through aten's grid_sampler_2d_backward.

    An op of its own because the sampling plan is data-dependent: AOT autograd can
    then trace the backward through the fake kernel."""
    _, channels, height, width = input.shape
    grad_input = torch.zeros_like(input)
    plan = _roi_align_plan(
        rois, channels, height, width, spatial_scale, output_h, output_w, sampling_ratio, aligned, input.dtype
    )
    for image, idx, grid, weight in plan:
        k, _, gh, _, gw = weight.shape
        grad_samples = grad[idx].permute(1, 0, 2, 3)[:, :, :, None, :, None] * weight
        grad_samples = grad_samples.reshape(1, channels, k * output_h * gh, output_w * gw)
        grad_image, _ = torch.ops.aten.grid_sampler_2d_backward(
            grad_samples, input[image : image + 1], grid, _BILINEAR, _BORDER, True, [True, False]
        )
        grad_input[image] += grad_image[0]
    return grad_input


@_roi_align_backward_op.register_fake
def _(grad, input, rois, spatial_scale, output_h, output_w, sampling_ratio, aligned):
    return torch.empty_like(input)


def _roi_align_setup_context(ctx, inputs, output):
    input, rois, *ctx.config = inputs
    ctx.save_for_backward(input, rois)


def _roi_align_backward(ctx, grad):
    input, rois = ctx.saved_tensors
    grad_input = torch.ops.dexport._roi_align_backward(grad.contiguous(), input, rois, *ctx.config)
    return (grad_input, None) + (None,) * len(ctx.config)


_roi_align_op.register_autograd(_roi_align_backward, setup_context=_roi_align_setup_context)


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's round(): halves away from zero (torch.round rounds them to even)."""
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def _roi_pool_bins(start: torch.Tensor, roi_size: torch.Tensor, bins: int, limit: int, dtype):
    """[K, bins] start / end (exclusive) of each quantised bin, clamped to [0, limit]."""
    size = roi_size.to(dtype) / bins
    index = torch.arange(bins, dtype=dtype, device=start.device)
    lo = torch.floor(index[None] * size[:, None]).long() + start[:, None]
    hi = torch.ceil((index[None] + 1) * size[:, None]).long() + start[:, None]
    return lo.clamp(0, limit), hi.clamp(0, limit)


@torch.library.custom_op(
    "dexport::roi_pool",
    mutates_args=(),
    schema="(Tensor input, Tensor rois, float spatial_scale, int output_h, int output_w) -> Tensor",
)
def _roi_pool_op(input, rois, spatial_scale, output_h, output_w):
    """Fast R-CNN RoIPool of [K,5] rois (batch index, x1, y1, x2, y2) -> [K,C,oh,ow]: roi
    corners rounded to the feature grid (x2, y2 inclusive, at least one cell), each bin
    [floor(i*size), ceil((i+1)*size)) of the roi max-pooled, an empty bin 0."""
    _, channels, height, width = input.shape
    k = rois.shape[0]
    out = input.new_zeros(k, channels, output_h, output_w)
    corners = _round_half_away(rois[:, 1:] * spatial_scale).long()
    x1, y1, x2, y2 = corners.unbind(1)
    h_lo, h_hi = _roi_pool_bins(y1, (y2 - y1 + 1).clamp(min=1), output_h, height, input.dtype)
    w_lo, w_hi = _roi_pool_bins(x1, (x2 - x1 + 1).clamp(min=1), output_w, width, input.dtype)
    rows = torch.arange(height, device=input.device)
    cols = torch.arange(width, device=input.device)
    in_h = (rows >= h_lo[..., None]) & (rows < h_hi[..., None])   # [K, oh, H]
    in_w = (cols >= w_lo[..., None]) & (cols < w_hi[..., None])   # [K, ow, W]
    empty = (h_hi <= h_lo)[:, :, None] | (w_hi <= w_lo)[:, None, :]
    lowest = -math.inf  # fills cells outside a bin: the max of a bin is its own (-inf included)
    step = max(1, _CHUNK_ELEMENTS // max(1, channels * height * width * max(output_h, output_w)))
    for s in range(0, k, step):
        part = slice(s, s + step)
        features = input[rois[part, 0].long()]                                      # [k, C, H, W]
        per_col = torch.where(in_w[part, None, None], features[:, :, :, None, :], lowest).amax(-1)  # [k,C,H,ow]
        pooled = torch.where(in_h[part, None, :, :, None], per_col[:, :, None], lowest).amax(3)  # [k,C,oh,ow]
        out[part] = torch.where(empty[part, None], torch.zeros((), dtype=input.dtype), pooled)
    return out


@_roi_pool_op.register_fake
def _(input, rois, spatial_scale, output_h, output_w):
    return input.new_empty(rois.shape[0], input.shape[1], output_h, output_w)


# --------------------------------------------------------------------------- box coding


def _decode_kernel(deltas, boxes, weights: Sequence[float], scale_clamp: float):
    """Apply (dx, dy, dw, dh) deltas, k boxes per row, to reference boxes (detectron2's rule)."""
    n = deltas.shape[0]
    boxes = boxes.to(deltas.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    d = deltas.reshape(n, deltas.shape[1] // 4, 4)
    dx = d[..., 0] / wx
    dy = d[..., 1] / wy
    dw = (d[..., 2] / ww).clamp(max=scale_clamp)  # no exp() overflow on wild deltas
    dh = (d[..., 3] / wh).clamp(max=scale_clamp)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    out = torch.stack(
        (
            pred_ctr_x - 0.5 * pred_w,
            pred_ctr_y - 0.5 * pred_h,
            pred_ctr_x + 0.5 * pred_w,
            pred_ctr_y + 0.5 * pred_h,
        ),
        dim=-1,
    )
    return out.reshape(deltas.shape)


def _encode_kernel(target_boxes, boxes, weights: Sequence[float]):
    """The deltas that _decode_kernel maps ``boxes`` onto ``target_boxes`` with."""
    boxes = boxes.to(target_boxes.dtype)
    src_w = boxes[:, 2] - boxes[:, 0]
    src_h = boxes[:, 3] - boxes[:, 1]
    src_x = boxes[:, 0] + 0.5 * src_w
    src_y = boxes[:, 1] + 0.5 * src_h
    tgt_w = target_boxes[:, 2] - target_boxes[:, 0]
    tgt_h = target_boxes[:, 3] - target_boxes[:, 1]
    tgt_x = target_boxes[:, 0] + 0.5 * tgt_w
    tgt_y = target_boxes[:, 1] + 0.5 * tgt_h
    wx, wy, ww, wh = weights
    return torch.stack(
        (
            wx * (tgt_x - src_x) / src_w,
            wy * (tgt_y - src_y) / src_h,
            ww * torch.log(tgt_w / src_w),
            wh * torch.log(tgt_h / src_h),
        ),
        dim=1,
    )


@torch.library.custom_op("dexport::decode_boxes", mutates_args=())
def _decode_boxes_op(
    deltas: torch.Tensor, boxes: torch.Tensor, weights: Sequence[float], scale_clamp: float
) -> torch.Tensor:
    return _decode_kernel(deltas, boxes, weights, scale_clamp)


@_decode_boxes_op.register_fake
def _(deltas, boxes, weights, scale_clamp):
    return torch.empty_like(deltas)


_grad_by_recompute(_decode_boxes_op, _decode_kernel)


@torch.library.custom_op("dexport::encode_boxes", mutates_args=())
def _encode_boxes_op(
    target_boxes: torch.Tensor, boxes: torch.Tensor, weights: Sequence[float]
) -> torch.Tensor:
    return _encode_kernel(target_boxes, boxes, weights)


@_encode_boxes_op.register_fake
def _(target_boxes, boxes, weights):
    return torch.empty_like(target_boxes)


_grad_by_recompute(_encode_boxes_op, _encode_kernel)


def _clip_kernel(boxes, image_size):
    """Clamp x columns into [0, w] and y columns into [0, h] for N×4k boxes."""
    h, w = image_size.to(boxes.dtype).unbind()
    bounds = torch.stack((w, h, w, h)).repeat(boxes.shape[1] // 4)
    return torch.minimum(boxes.clamp(min=0), bounds)


@torch.library.custom_op("dexport::clip_boxes", mutates_args=())
def _clip_boxes_op(boxes: torch.Tensor, image_size: torch.Tensor) -> torch.Tensor:
    return _clip_kernel(boxes, image_size)


@_clip_boxes_op.register_fake
def _(boxes, image_size):
    return torch.empty_like(boxes)


_grad_by_recompute(_clip_boxes_op, _clip_kernel)


# --------------------------------------------------------------------------- FPN levels


@torch.library.custom_op(
    "dexport::assign_fpn_levels",
    mutates_args=(),
    schema="(Tensor boxes, int min_level, int max_level, int canonical_box_size, "
    "int canonical_level) -> Tensor",
)
def _assign_fpn_levels_op(
    boxes: torch.Tensor,
    min_level: int,
    max_level: int,
    canonical_box_size: int,
    canonical_level: int,
) -> torch.Tensor:
    # Eq. 1 of the FPN paper; the 1e-8 keeps zero-area boxes finite (they go to min_level).
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0)
    level = torch.floor(canonical_level + torch.log2(torch.sqrt(area) / canonical_box_size + 1e-8))
    return level.clamp(min=min_level, max=max_level).to(torch.int64) - min_level


@_assign_fpn_levels_op.register_fake
def _(boxes, min_level, max_level, canonical_box_size, canonical_level):
    return boxes.new_empty(boxes.shape[0], dtype=torch.int64)


# --------------------------------------------------------------------------- mask pasting


def _bilinear_weights(src: torch.Tensor, size: int) -> torch.Tensor:
    """[..., size] weights of bilinear sampling at source coords ``src`` with zero
    padding outside [0, size-1]: the hat function max(0, 1 - |src - j|)."""
    j = torch.arange(size, dtype=src.dtype, device=src.device)
    return (1.0 - (src[..., None] - j).abs()).clamp(min=0)


@torch.library.custom_op("dexport::paste_masks", mutates_args=())
def _paste_masks_op(
    masks: torch.Tensor, boxes: torch.Tensor, image_size: torch.Tensor, threshold: float
) -> torch.Tensor:
    """Resize each mask into its box on an H×W canvas, then threshold (>=) it.

    Same sampling as detectron2's full-image paste (grid_sample, bilinear,
    align_corners=False, zero padding), written as two small interpolation matrices
    per mask (rows × Mh, W × Mw): canvas = Ay @ mask @ Axᵀ. A box of zero width or
    height pastes nothing.
    """
    n, mask_h, mask_w = masks.shape
    height, width = (int(v) for v in image_size.tolist())
    out_dtype = torch.bool if threshold >= 0 else torch.float32
    if n == 0:
        return masks.new_zeros(0, height, width, dtype=out_dtype)
    masks = masks.to(torch.float32)
    boxes = boxes.to(torch.float32)
    x0, y0, x1, y1 = boxes.unbind(dim=1)
    box_w, box_h = x1 - x0, y1 - y0
    tiny = torch.finfo(torch.float32).tiny
    # Pixel centres mapped into mask cell coordinates (grid_sample's unnormalize).
    px = torch.arange(width, dtype=torch.float32, device=masks.device) + 0.5
    py = torch.arange(height, dtype=torch.float32, device=masks.device) + 0.5
    src_x = (px[None, :] - x0[:, None]) / box_w.clamp(min=tiny)[:, None] * mask_w - 0.5
    src_y = (py[None, :] - y0[:, None]) / box_h.clamp(min=tiny)[:, None] * mask_h - 0.5
    ax = _bilinear_weights(src_x, mask_w) * (box_w > 0)[:, None, None]  # [N, W, Mw]
    ay = _bilinear_weights(src_y, mask_h) * (box_h > 0)[:, None, None]  # [N, H, Mh]
    pieces = []
    step = max(1, _CHUNK_ELEMENTS // max(height * width, 1))
    for start in range(0, n, step):
        s = slice(start, start + step)
        canvas = torch.bmm(torch.bmm(ay[s], masks[s]), ax[s].transpose(1, 2))
        pieces.append(canvas >= threshold if threshold >= 0 else canvas)
    return torch.cat(pieces)


@_paste_masks_op.register_fake
def _(masks, boxes, image_size, threshold):
    height, width = _dynamic_size(), _dynamic_size()
    dtype = torch.bool if threshold >= 0 else torch.float32
    return masks.new_empty(masks.shape[0], height, width, dtype=dtype)


# --------------------------------------------------------------------------- keypoints


def _resize_weights(out_sizes: torch.Tensor, in_size: int, max_out: int) -> torch.Tensor:
    """[n, max_out, in_size] matrices of F.interpolate(mode="bilinear",
    align_corners=False) from in_size to each out_sizes[i]; rows past a size are 0."""
    dst = torch.arange(max_out, dtype=torch.float32, device=out_sizes.device) + 0.5
    scale = in_size / out_sizes.to(torch.float32)
    src = (dst[None, :] * scale[:, None] - 0.5).clamp(0, in_size - 1)
    inside = dst[None, :] < out_sizes[:, None]
    return _bilinear_weights(src, in_size) * inside[..., None]


@torch.library.custom_op("dexport::heatmaps_to_keypoints", mutates_args=())
def _heatmaps_to_keypoints_op(maps: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """Keypoint heatmaps [N,K,Hm,Wm] → [N,K,4] (x, y, logit, score) in image coordinates.

    Like detectron2's: each heatmap is resized (BILINEAR, align_corners=False; detectron2
    uses bicubic) to ceil(roi width) × ceil(roi height); the first maximum (row-major)
    gives the location, taken at the pixel centre (+0.5) and scaled back by
    roi_size / ceil(roi_size); score = softmax of that maximum over the heatmap pixels.
    All rois are resized at once, padded to the largest one (in memory-bounded chunks).
    """
    n, k, map_h, map_w = maps.shape
    if n == 0:
        return maps.new_zeros(0, k, 4)
    maps = maps.to(torch.float32)
    rois = rois.to(torch.float32)
    widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)
    heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)
    out_w = torch.ceil(widths).to(torch.int64)
    out_h = torch.ceil(heights).to(torch.int64)
    pieces = []
    start = 0
    while start < n:
        # Grow the chunk while the padded [chunk, K, max_h, max_w] stays within budget.
        stop = start + 1
        max_h, max_w = int(out_h[start]), int(out_w[start])
        while stop < n:
            h, w = max(max_h, int(out_h[stop])), max(max_w, int(out_w[stop]))
            if (stop + 1 - start) * k * h * w > _CHUNK_ELEMENTS:
                break
            max_h, max_w, stop = h, w, stop + 1
        s = slice(start, stop)
        wy = _resize_weights(out_h[s], map_h, max_h)  # [c, max_h, Hm]
        wx = _resize_weights(out_w[s], map_w, max_w)  # [c, max_w, Wm]
        resized = wy[:, None] @ maps[s] @ wx[:, None].transpose(-1, -2)  # [c, K, max_h, max_w]
        inside = (torch.arange(max_h, device=maps.device)[None, :, None] < out_h[s, None, None]) & (
            torch.arange(max_w, device=maps.device)[None, None, :] < out_w[s, None, None]
        )
        resized = resized.masked_fill(~inside[:, None], float("-inf")).flatten(2)
        pos = resized.argmax(dim=2)  # first maximum in row-major order
        logit = resized.gather(2, pos[..., None]).squeeze(2)
        y_int = torch.div(pos, max_w, rounding_mode="floor")
        x_int = pos - y_int * max_w
        x = (x_int + 0.5) * (widths[s] / out_w[s])[:, None] + rois[s, 0, None]
        y = (y_int + 0.5) * (heights[s] / out_h[s])[:, None] + rois[s, 1, None]
        score = 1.0 / torch.exp(maps[s] - logit[..., None, None]).sum(dim=(2, 3))
        pieces.append(torch.stack((x, y, logit, score), dim=-1))
        start = stop
    return torch.cat(pieces)


@_heatmaps_to_keypoints_op.register_fake
def _(maps, rois):
    return maps.new_empty(maps.shape[0], maps.shape[1], 4)


# --------------------------------------------------------------------------- type rules


def _tensor(node, index: int) -> TensorType:
    t = node.inputs[index].type
    return t if isinstance(t, TensorType) else TensorType()


def _dim(t: TensorType, index: int):
    return t.shape[index] if t.shape is not None and index < len(t.shape) else "?"


def _like_input(index: int):
    return lambda node: [_tensor(node, index)]


def _kept_indices(node):
    return [TensorType(torch.int64, ("?",))]


def _roi_align_type(node):
    features, rois = _tensor(node, 0), _tensor(node, 1)
    return [TensorType(features.dtype, (_dim(rois, 0), _dim(features, 1),
                                        constant_input(node, 3, "?"), constant_input(node, 4, "?")))]


def _encode_boxes_type(node):
    target = _tensor(node, 0)
    return [TensorType(target.dtype, (_dim(target, 0), 4))]


def _fpn_levels_type(node):
    return [TensorType(torch.int64, (_dim(_tensor(node, 0), 0),))]


def _paste_masks_type(node):
    threshold = constant_input(node, 3)
    dtype = None if threshold is None else torch.bool if threshold >= 0 else torch.float32
    return [TensorType(dtype, (_dim(_tensor(node, 0), 0), "?", "?"))]


def _keypoints_type(node):
    maps = _tensor(node, 0)
    return [TensorType(torch.float32, (_dim(maps, 0), _dim(maps, 1), 4))]


_TYPE_RULES = {
    "dexport::nms": _kept_indices,
    "dexport::batched_nms": _kept_indices,
    "dexport::roi_align": _roi_align_type,
    "dexport::_roi_align_backward": _like_input(1),
    "dexport::roi_pool": _roi_align_type,  # same (input, rois, _, output_h, output_w) layout
    "dexport::decode_boxes": _like_input(0),
    "dexport::encode_boxes": _encode_boxes_type,
    "dexport::clip_boxes": _like_input(0),
    "dexport::assign_fpn_levels": _fpn_levels_type,
    "dexport::paste_masks": _paste_masks_type,
    "dexport::heatmaps_to_keypoints": _keypoints_type,
}
# The dialect's op names (the custom ops above, in definition order).
OPS = tuple(_TYPE_RULES)
for _name, _rule in _TYPE_RULES.items():
    register_type_rule(_name, _rule)


# --------------------------------------------------------------------------- wrappers


def _as_i64(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if t.dtype == torch.int64 and t.device == device:
        return t  # the usual case: no aten::to in traces
    return t.to(device=device, dtype=torch.int64)


def _size_tensor(image_size, device: torch.device) -> torch.Tensor:
    """(h, w) as an i64[2] tensor; traced 0-d size tensors stay connected to the trace
    (plain ints become a constant, which is what they are). Scripted code passes a
    tensor (an unannotated argument is a Tensor to TorchScript, which then compiles
    only the first branch)."""
    if isinstance(image_size, torch.Tensor):
        return _as_i64(image_size, device)
    parts = [
        _as_i64(v if v.dim() == 0 else v.reshape(()), device)
        if isinstance(v, torch.Tensor)
        else torch.tensor(int(v), dtype=torch.int64, device=device)
        for v in image_size
    ]
    return torch.stack(parts)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices (i64) of the boxes kept by greedy NMS, by decreasing score (ties: lower index first)."""
    return torch.ops.dexport.nms(boxes, scores, float(iou_threshold))


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Per-category NMS (boxes only suppress boxes with the same ``idxs``), ordered like nms."""
    return torch.ops.dexport.batched_nms(boxes, scores, idxs, float(iou_threshold))


def roi_align(
    input: torch.Tensor,
    rois: torch.Tensor,
    spatial_scale: float,
    output_h: int,
    output_w: int,
    sampling_ratio: int = 0,
    aligned: bool = True,
) -> torch.Tensor:
    """Pool [K,5] rois (batch index, x1, y1, x2, y2 in image coordinates) from
    input[B,C,H,W] into [K,C,output_h,output_w]; sampling_ratio <= 0 is adaptive."""
    return torch.ops.dexport.roi_align(
        input, rois, float(spatial_scale), int(output_h), int(output_w), int(sampling_ratio), bool(aligned)
    )


def decode_boxes(
    deltas: torch.Tensor,
    boxes: torch.Tensor,
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    scale_clamp: float = DEFAULT_SCALE_CLAMP,
) -> torch.Tensor:
    """Boxes [N,4k] from (dx,dy,dw,dh) deltas [N,4k] relative to reference boxes [N,4]."""
    return torch.ops.dexport.decode_boxes(
        deltas, boxes, [float(w) for w in weights], float(scale_clamp)
    )


def encode_boxes(
    target_boxes: torch.Tensor,
    boxes: torch.Tensor,
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
) -> torch.Tensor:
    """Deltas [N,4] that decode_boxes maps reference ``boxes`` onto ``target_boxes`` with."""
    return torch.ops.dexport.encode_boxes(target_boxes, boxes, [float(w) for w in weights])


def clip_boxes(boxes: torch.Tensor, image_size) -> torch.Tensor:
    """Clip [N,4k] boxes to an image; image_size is (h, w) as an i64[2] tensor (or a tuple)."""
    return torch.ops.dexport.clip_boxes(boxes, _size_tensor(image_size, boxes.device))


def assign_fpn_levels(
    boxes: torch.Tensor,
    min_level: int,
    max_level: int,
    canonical_box_size: int = 224,
    canonical_level: int = 4,
) -> torch.Tensor:
    """0-based FPN level index (level - min_level, i64[N]) each box is pooled from."""
    return torch.ops.dexport.assign_fpn_levels(
        boxes, int(min_level), int(max_level), int(canonical_box_size), int(canonical_level)
    )


def paste_masks(
    masks: torch.Tensor, boxes: torch.Tensor, image_size, threshold: float = 0.5
) -> torch.Tensor:
    """Masks [N,Mh,Mw] (probabilities) pasted into their boxes on an (h, w) canvas:
    b8[N,h,w] (prob >= threshold), or the f32 probabilities when threshold < 0."""
    return torch.ops.dexport.paste_masks(
        masks, boxes, _size_tensor(image_size, masks.device), float(threshold)
    )


def heatmaps_to_keypoints(maps: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """Keypoint heatmaps [N,K,Hm,Wm] over rois [N,4] → [N,K,4] (x, y, logit, score)."""
    return torch.ops.dexport.heatmaps_to_keypoints(maps, rois)
