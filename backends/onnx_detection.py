"""ONNX lowerings of the ``dexport::`` detection ops, in standard ONNX only.

Every lowering reproduces the op's CPU kernel in ``dexport.ir.dialects.dexport`` (which
defines the semantics), step by step where the kernel's float operations can be
repeated, so most results are bit-identical; the exceptions are the transcendental
functions (Exp/Log, a few ulps) and reductions whose summation order differs.
All sizes are computed at run time: one emitted model serves every image size
and any number of boxes, zero included.

* ``nms`` / ``batched_nms``: NonMaxSuppression on the boxes sorted by a stable
  TopK, scored by their rank (N for the best, 1 for the worst). onnxruntime's own
  tie order and its swapping of inverted coordinates then no longer matter: the
  kept indices and their order are the kernel's. Classes go in the C axis
  (densified with Unique); a box is only scored in its own class's row.
* ``roi_align``: RoiAlign (avg; ``half_pixel`` for aligned, ``output_half_pixel``
  for legacy rois, which onnxruntime also widens to at least one pixel).
* ``paste_masks``: the kernel's separable bilinear resampling, as two batched
  MatMuls with per-box interpolation matrices (``Ay @ mask @ Axᵀ``): at most two
  non-zero taps per row, so the canvas is exact up to FMA rounding. Cheaper than a
  GridSample, whose grid alone would be twice the size of the float canvas.
* ``heatmaps_to_keypoints``: a Loop over the rois (each is resized to its own
  size, so batching would need a canvas padded to the largest roi), with the
  kernel's resize matrices, first-maximum ArgMax and coordinate math.
"""
from __future__ import annotations

import math

import onnx
import torch
from onnx import helper

from dexport.backends.onnx import TORCH_TO_ONNX, LoweringContext, lowering
from dexport.ir.graph import Node

F32 = torch.float32
I64 = torch.int64


# --------------------------------------------------------------------------- helpers

def _column(ctx: LoweringContext, x: str, j: int) -> str:
    """x[:, j] of a 2-D tensor."""
    return ctx.typed(ctx.op("Gather", x, ctx.int64(j), axis=1), ctx.dtypes.get(x))


def _columns(ctx: LoweringContext, x: str, start: int, stop: int) -> str:
    """x[:, start:stop] of a 2-D tensor."""
    out = ctx.op("Slice", x, ctx.int64([start]), ctx.int64([stop]), ctx.int64([1]))
    return ctx.typed(out, ctx.dtypes.get(x))


def _arange(ctx: LoweringContext, n: str, dtype: torch.dtype) -> str:
    """0, 1, ..., n-1 for a 0-d int64 ``n``, as ``dtype``."""
    r = ctx.typed(ctx.op("Range", ctx.int64(0), n, ctx.int64(1)), I64)
    return ctx.cast(r, dtype)


def _scalar(ctx: LoweringContext, value: float, dtype: torch.dtype) -> str:
    return ctx.constant(value, dtype)


def _bilinear_weights(ctx: LoweringContext, src: str, size: str) -> str:
    """[..., size] hat weights max(0, 1 - |src - j|) of sampling at ``src`` (the
    kernel's ``_bilinear_weights``); ``size`` is a 0-d int64."""
    j = _arange(ctx, size, F32)
    dist = ctx.op("Abs", ctx.op("Sub", ctx.unsqueeze(src, [-1]), j))
    return ctx.typed(ctx.op("Max", ctx.op("Sub", _scalar(ctx, 1.0, F32), dist), _scalar(ctx, 0.0, F32)), F32)


# --------------------------------------------------------------------------- NMS

def _nms(ctx: LoweringContext, node: Node, classes: str | None, iou_index: int) -> list:
    iou = float(ctx.const(node, iou_index))
    if not iou >= 0.0:
        raise ctx.fail(f"NMS IoU threshold {iou} cannot be exported: ONNX NonMaxSuppression "
                       f"takes thresholds in [0, 1]",
                       "use a threshold >= 0 (a negative one suppresses disjoint boxes)")
    iou = min(iou, 1.0)  # IoU never exceeds 1: any larger threshold suppresses nothing, as 1 does
    boxes = ctx.input(node, 0, F32)
    scores = ctx.input(node, 1, F32)
    n = ctx.dim(boxes, 0)
    n1 = ctx.unsqueeze(n, [0])
    # Stable descending order: TopK breaks ties by the lower index (checked in the tests).
    _, order = ctx.emit("TopK", [scores, n1], 2, axis=0, largest=1, sorted=1)
    ctx.typed(order, I64)
    ordered = ctx.typed(ctx.op("Gather", boxes, order, axis=0), F32)
    # The kernel's inverted boxes (x2 < x1) overlap nothing; onnxruntime would swap
    # their corners, so make them empty instead (zero-area boxes never suppress).
    low = _columns(ctx, ordered, 0, 2)
    high = ctx.op("Max", _columns(ctx, ordered, 2, 4), low)
    ordered = ctx.op("Concat", low, high, axis=1)
    rank = ctx.cast(ctx.typed(ctx.op("Range", n, ctx.int64(0), ctx.int64(-1)), I64), F32)
    if classes is None:
        class_scores = ctx.unsqueeze(rank, [0, 1])                       # [1, 1, N]
    else:
        ordered_classes = ctx.op("Gather", ctx.cast(classes, I64), order, axis=0)
        unique, _, dense, _ = ctx.emit("Unique", [ordered_classes], 4, sorted=1)
        ids = _arange(ctx, ctx.dim(unique, 0), I64)
        member = ctx.op("Equal", ctx.unsqueeze(ids, [1]), ctx.unsqueeze(ctx.typed(dense, I64), [0]))
        class_scores = ctx.op("Where", member, ctx.unsqueeze(rank, [0]), _scalar(ctx, 0.0, F32))
        class_scores = ctx.unsqueeze(class_scores, [0])                  # [1, C, N]
    # Boxes are (x1, y1, x2, y2) where ONNX says (y1, x1, y2, x2): IoU does not care.
    selected = ctx.op("NonMaxSuppression", ctx.unsqueeze(ordered, [0]), class_scores, n1,
                      ctx.constant([iou], F32), ctx.constant([0.5], F32), center_point_box=0)
    positions = ctx.op("Gather", selected, ctx.int64(2), axis=1)       # into the sorted order
    # Back to decreasing score (classes come out one after another): mark the kept
    # positions and read them in ascending order.
    ones = ctx.op("Expand", _scalar(ctx, 1.0, F32), ctx.shape(positions))
    marks = ctx.op("ScatterElements", ctx.op("Mul", rank, _scalar(ctx, 0.0, F32)), positions, ones, axis=0)
    kept = ctx.squeeze(ctx.typed(ctx.op("NonZero", marks), I64), [0])
    return [ctx.typed(ctx.op("Gather", order, kept, axis=0), I64)]


@lowering("dexport::nms")
def _lower_nms(ctx: LoweringContext, node: Node) -> list:
    return _nms(ctx, node, None, 2)


@lowering("dexport::batched_nms")
def _lower_batched_nms(ctx: LoweringContext, node: Node) -> list:
    return _nms(ctx, node, ctx.input(node, 2), 3)


# --------------------------------------------------------------------------- RoIAlign

@lowering("dexport::roi_align")
def _lower_roi_align(ctx: LoweringContext, node: Node) -> list:
    dtype = ctx.dtype(node, 0)
    x = ctx.input(node, 0)
    rois = ctx.input(node, 1, dtype)
    spatial_scale, output_h, output_w, sampling_ratio, aligned = (ctx.const(node, i) for i in range(2, 7))
    batch = ctx.cast(_column(ctx, rois, 0), I64)  # truncation, as the kernel's .to(int64)
    out = ctx.op("RoiAlign", x, _columns(ctx, rois, 1, 5), batch, mode="avg",
                 output_height=int(output_h), output_width=int(output_w),
                 sampling_ratio=max(int(sampling_ratio), 0), spatial_scale=float(spatial_scale),
                 coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel")
    return [ctx.typed(out, dtype)]


@lowering("dexport::roi_pool")
def _lower_roi_pool(ctx: LoweringContext, node: Node) -> list:
    # ONNX MaxRoiPool is the same Caffe/Fast R-CNN rule (corners rounded half away from
    # zero, x2/y2 inclusive, bins floor/ceil, empty bins 0); onnxruntime has float only.
    dtype = ctx.dtype(node, 0)
    spatial_scale, output_h, output_w = (ctx.const(node, i) for i in range(2, 5))
    out = ctx.op("MaxRoiPool", ctx.input(node, 0, F32), ctx.input(node, 1, F32),
                 pooled_shape=[int(output_h), int(output_w)], spatial_scale=float(spatial_scale))
    return [ctx.cast(ctx.typed(out, F32), dtype)]


# --------------------------------------------------------------------------- box coding

def _centers(ctx: LoweringContext, boxes: str, dtype: torch.dtype) -> tuple[str, str, str, str]:
    """(widths, heights, ctr_x, ctr_y) of [N,4] boxes, in the kernels' operation order."""
    x0, y0, x1, y1 = (_column(ctx, boxes, j) for j in range(4))
    half = _scalar(ctx, 0.5, dtype)
    widths = ctx.op("Sub", x1, x0)
    heights = ctx.op("Sub", y1, y0)
    return (widths, heights, ctx.op("Add", x0, ctx.op("Mul", half, widths)),
            ctx.op("Add", y0, ctx.op("Mul", half, heights)))


@lowering("dexport::decode_boxes")
def _lower_decode_boxes(ctx: LoweringContext, node: Node) -> list:
    dtype = ctx.dtype(node, 0)
    deltas = ctx.input(node, 0)
    boxes = ctx.input(node, 1, dtype)
    weights = [float(w) for w in ctx.const(node, 2)]
    scale_clamp = float(ctx.const(node, 3))
    widths, heights, ctr_x, ctr_y = (ctx.unsqueeze(v, [1]) for v in _centers(ctx, boxes, dtype))
    # Column j of every group of four: deltas[:, j::4] is [N, k].
    parts = [ctx.op("Slice", deltas, ctx.int64([j]), ctx.int64([2 ** 62]), ctx.int64([1]), ctx.int64([4]))
             for j in range(4)]
    dx, dy, dw, dh = (ctx.op("Div", p, _scalar(ctx, w, dtype)) for p, w in zip(parts, weights))
    clamp = _scalar(ctx, scale_clamp, dtype)
    dw, dh = ctx.op("Min", dw, clamp), ctx.op("Min", dh, clamp)
    half = _scalar(ctx, 0.5, dtype)
    pred_x = ctx.op("Add", ctx.op("Mul", dx, widths), ctr_x)
    pred_y = ctx.op("Add", ctx.op("Mul", dy, heights), ctr_y)
    half_w = ctx.op("Mul", half, ctx.op("Mul", ctx.op("Exp", dw), widths))
    half_h = ctx.op("Mul", half, ctx.op("Mul", ctx.op("Exp", dh), heights))
    corners = [ctx.op("Sub", pred_x, half_w), ctx.op("Sub", pred_y, half_h),
               ctx.op("Add", pred_x, half_w), ctx.op("Add", pred_y, half_h)]
    stacked = ctx.op("Concat", *(ctx.unsqueeze(c, [2]) for c in corners), axis=2)  # [N, k, 4]
    return [ctx.typed(ctx.op("Reshape", stacked, ctx.shape(deltas)), dtype)]


@lowering("dexport::encode_boxes")
def _lower_encode_boxes(ctx: LoweringContext, node: Node) -> list:
    dtype = ctx.dtype(node, 0)
    target = ctx.input(node, 0)
    boxes = ctx.input(node, 1, dtype)
    wx, wy, ww, wh = (_scalar(ctx, float(w), dtype) for w in ctx.const(node, 2))
    src_w, src_h, src_x, src_y = _centers(ctx, boxes, dtype)
    tgt_w, tgt_h, tgt_x, tgt_y = _centers(ctx, target, dtype)
    columns = [
        ctx.op("Div", ctx.op("Mul", wx, ctx.op("Sub", tgt_x, src_x)), src_w),
        ctx.op("Div", ctx.op("Mul", wy, ctx.op("Sub", tgt_y, src_y)), src_h),
        ctx.op("Mul", ww, ctx.op("Log", ctx.op("Div", tgt_w, src_w))),
        ctx.op("Mul", wh, ctx.op("Log", ctx.op("Div", tgt_h, src_h))),
    ]
    return [ctx.typed(ctx.op("Concat", *(ctx.unsqueeze(c, [1]) for c in columns), axis=1), dtype)]


@lowering("dexport::clip_boxes")
def _lower_clip_boxes(ctx: LoweringContext, node: Node) -> list:
    dtype = ctx.dtype(node, 0)
    boxes = ctx.input(node, 0)
    size = ctx.input(node, 1, dtype)
    h = ctx.op("Slice", size, ctx.int64([0]), ctx.int64([1]))
    w = ctx.op("Slice", size, ctx.int64([1]), ctx.int64([2]))
    groups = ctx.op("Div", ctx.shape(boxes), ctx.int64([1, 4]))  # [N, k]: only k is used
    repeats = ctx.op("Slice", groups, ctx.int64([1]), ctx.int64([2]))
    bounds = ctx.op("Tile", ctx.op("Concat", w, h, w, h, axis=0), repeats)
    out = ctx.op("Min", ctx.op("Max", boxes, _scalar(ctx, 0.0, dtype)), bounds)
    return [ctx.typed(out, dtype)]


# --------------------------------------------------------------------------- FPN levels

@lowering("dexport::assign_fpn_levels")
def _lower_assign_fpn_levels(ctx: LoweringContext, node: Node) -> list:
    dtype = ctx.dtype(node, 0)
    boxes = ctx.input(node, 0)
    min_level, max_level, box_size, canonical = (int(ctx.const(node, i)) for i in range(1, 5))
    x0, y0, x1, y1 = (_column(ctx, boxes, j) for j in range(4))
    area = ctx.op("Max", ctx.op("Mul", ctx.op("Sub", x1, x0), ctx.op("Sub", y1, y0)), _scalar(ctx, 0.0, dtype))
    ratio = ctx.op("Add", ctx.op("Div", ctx.op("Sqrt", area), _scalar(ctx, box_size, dtype)),
                   _scalar(ctx, 1e-8, dtype))
    # ONNX has no Log2; ln(x)/ln(2) in float64 rounded once to the working dtype is
    # (nearly always) the correctly rounded log2 torch gives, exact at powers of two,
    # so floor() puts boxes on level boundaries where the kernel does.
    log2 = ctx.op("Div", ctx.op("Log", ctx.cast(ratio, torch.float64)), ctx.constant(math.log(2.0), torch.float64))
    level = ctx.op("Floor", ctx.op("Add", _scalar(ctx, canonical, dtype), ctx.cast(ctx.typed(log2, torch.float64), dtype)))
    level = ctx.op("Clip", level, _scalar(ctx, min_level, dtype), _scalar(ctx, max_level, dtype))
    out = ctx.op("Sub", ctx.cast(ctx.typed(level, dtype), I64), ctx.int64(min_level))
    return [ctx.typed(out, I64)]


# --------------------------------------------------------------------------- mask pasting

def _paste_weights(ctx: LoweringContext, start: str, length: str, pixels: str, cells: str) -> str:
    """[N, pixels, cells] interpolation matrix of one axis: pixel centres mapped into
    mask cells (grid_sample's unnormalize, as the kernel writes it); zero rows for
    boxes of zero length."""
    centres = ctx.op("Add", _arange(ctx, pixels, F32), _scalar(ctx, 0.5, F32))
    tiny = _scalar(ctx, torch.finfo(torch.float32).tiny, F32)
    scaled = ctx.op("Div", ctx.op("Sub", ctx.unsqueeze(centres, [0]), ctx.unsqueeze(start, [1])),
                    ctx.unsqueeze(ctx.op("Max", length, tiny), [1]))
    src = ctx.op("Sub", ctx.op("Mul", scaled, ctx.cast(cells, F32)), _scalar(ctx, 0.5, F32))
    nonempty = ctx.cast(ctx.op("Greater", length, _scalar(ctx, 0.0, F32)), F32)
    return ctx.op("Mul", _bilinear_weights(ctx, src, cells), ctx.unsqueeze(nonempty, [1, 2]))


@lowering("dexport::paste_masks")
def _lower_paste_masks(ctx: LoweringContext, node: Node) -> list:
    masks = ctx.input(node, 0, F32)
    boxes = ctx.input(node, 1, F32)
    size = ctx.input(node, 2, I64)
    threshold = float(ctx.const(node, 3))
    height = ctx.typed(ctx.op("Gather", size, ctx.int64(0), axis=0), I64)
    width = ctx.typed(ctx.op("Gather", size, ctx.int64(1), axis=0), I64)
    x0, y0, x1, y1 = (_column(ctx, boxes, j) for j in range(4))
    ax = _paste_weights(ctx, x0, ctx.op("Sub", x1, x0), width, ctx.dim(masks, 2))    # [N, W, Mw]
    ay = _paste_weights(ctx, y0, ctx.op("Sub", y1, y0), height, ctx.dim(masks, 1))   # [N, H, Mh]
    canvas = ctx.op("MatMul", ctx.op("MatMul", ay, masks), ctx.op("Transpose", ax, perm=[0, 2, 1]))
    if threshold >= 0:
        return [ctx.typed(ctx.op("GreaterOrEqual", canvas, _scalar(ctx, threshold, F32)), torch.bool)]
    return [ctx.typed(canvas, F32)]


# --------------------------------------------------------------------------- keypoints

def _resize_weights(ctx: LoweringContext, out_size: str, in_size: str) -> str:
    """[out, in] matrix of F.interpolate(bilinear, align_corners=False) from
    ``in_size`` to ``out_size`` (0-d int64 each), as the kernel's ``_resize_weights``."""
    dst = ctx.op("Add", _arange(ctx, out_size, F32), _scalar(ctx, 0.5, F32))
    in_f = ctx.cast(in_size, F32)
    # The kernel's ``in_size / out`` is torch's ``out.reciprocal() * in_size``.
    scale = ctx.op("Mul", ctx.op("Reciprocal", ctx.cast(out_size, F32)), in_f)
    src = ctx.op("Sub", ctx.op("Mul", dst, scale), _scalar(ctx, 0.5, F32))
    src = ctx.op("Min", ctx.op("Max", src, _scalar(ctx, 0.0, F32)), ctx.op("Sub", in_f, _scalar(ctx, 1.0, F32)))
    return _bilinear_weights(ctx, src, in_size)


def _value_info(name: str, dtype: torch.dtype, rank: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TORCH_TO_ONNX[dtype], [None] * rank)


@lowering("dexport::heatmaps_to_keypoints")
def _lower_heatmaps_to_keypoints(ctx: LoweringContext, node: Node) -> list:
    maps = ctx.input(node, 0, F32)
    rois = ctx.input(node, 1, F32)
    one = _scalar(ctx, 1.0, F32)
    widths = ctx.op("Max", ctx.op("Sub", _column(ctx, rois, 2), _column(ctx, rois, 0)), one)
    heights = ctx.op("Max", ctx.op("Sub", _column(ctx, rois, 3), _column(ctx, rois, 1)), one)
    out_w = ctx.typed(ctx.cast(ctx.typed(ctx.op("Ceil", widths), F32), I64), I64)
    out_h = ctx.typed(ctx.cast(ctx.typed(ctx.op("Ceil", heights), F32), I64), I64)
    step_x = ctx.op("Div", widths, ctx.cast(out_w, F32))
    step_y = ctx.op("Div", heights, ctx.cast(out_h, F32))
    x_start, y_start = _column(ctx, rois, 0), _column(ctx, rois, 1)
    n, k = ctx.dim(maps, 0), ctx.dim(maps, 1)
    map_h, map_w = ctx.dim(maps, 2), ctx.dim(maps, 3)

    # The loop body: roi i -> [K, 4]. It reads the values above from the outer scope;
    # its own nodes are collected apart from the main graph's.
    it, cond = ctx.fresh("keypoint_roi"), ctx.fresh("keypoint_cond")
    outer_nodes, ctx.nodes = ctx.nodes, []
    try:
        def pick(v: str, dtype: torch.dtype) -> str:
            return ctx.typed(ctx.op("Gather", v, it, axis=0), dtype)

        h_i, w_i = pick(out_h, I64), pick(out_w, I64)
        heatmaps = pick(maps, F32)                                            # [K, Hm, Wm]
        wy = _resize_weights(ctx, h_i, map_h)                                 # [h, Hm]
        wx = _resize_weights(ctx, w_i, map_w)                                 # [w, Wm]
        resized = ctx.op("MatMul", ctx.op("MatMul", wy, heatmaps), ctx.op("Transpose", wx, perm=[1, 0]))
        flat = ctx.op("Reshape", resized, ctx.op("Concat", ctx.unsqueeze(k, [0]), ctx.int64([-1]), axis=0))
        pos = ctx.typed(ctx.op("ArgMax", flat, axis=1, keepdims=1, select_last_index=0), I64)  # first max
        logit = ctx.op("GatherElements", flat, pos, axis=1)                   # [K, 1]
        y_int = ctx.op("Div", pos, w_i)                                       # non-negative: floor
        x_int = ctx.op("Sub", pos, ctx.op("Mul", y_int, w_i))
        half = _scalar(ctx, 0.5, F32)
        x = ctx.op("Add", ctx.op("Mul", ctx.op("Add", ctx.cast(ctx.typed(x_int, I64), F32), half),
                                 pick(step_x, F32)), pick(x_start, F32))
        y = ctx.op("Add", ctx.op("Mul", ctx.op("Add", ctx.cast(ctx.typed(y_int, I64), F32), half),
                                 pick(step_y, F32)), pick(y_start, F32))
        shifted = ctx.op("Exp", ctx.op("Sub", heatmaps, ctx.unsqueeze(logit, [2])))
        score = ctx.op("Div", one, ctx.reduce("ReduceSum", shifted, [1, 2], keepdims=False))
        keypoints = ctx.op("Concat", x, y, logit, ctx.unsqueeze(score, [1]), axis=1)  # [K, 4]
        cond_out = ctx.op("Identity", cond)
        body_nodes = ctx.nodes
    finally:
        ctx.nodes = outer_nodes
    body = helper.make_graph(
        body_nodes, ctx.fresh("keypoint_body"),
        [_value_info(it, I64, 0), _value_info(cond, torch.bool, 0)],
        [_value_info(cond_out, torch.bool, 0), _value_info(keypoints, F32, 2)])
    stacked = ctx.op("Loop", n, "", body=body)
    # With zero rois onnxruntime cannot know the scan output's inner dims: give them.
    shape = ctx.op("Concat", ctx.unsqueeze(n, [0]), ctx.unsqueeze(k, [0]), ctx.int64([4]), axis=0)
    return [ctx.typed(ctx.op("Reshape", stacked, shape), F32)]
