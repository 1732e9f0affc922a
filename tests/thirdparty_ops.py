"""torchvision's detection ops for tests, without torchvision.

torchvision does not install next to the CPU torch build the tests use, so
``register()`` defines its ops with torchvision's own schemas (the ``torchvision``
namespace, as its C++ library does) and reference kernels written here in plain
torch, independent of dexport's kernels, following torchvision's CPU kernels:
bilinear samples outside [-1, H] x [-1, W] count as 0, others are clamped into
the image; legacy (``aligned=False``) rois are at least one pixel. Where
torchvision is installed its ops are used as they are.

``roi_pool`` follows torchvision's CPU kernel too: roi corners rounded (C's round,
halves away from zero) to cells, x2/y2 inclusive and a roi at least one cell, bin
[floor(i*size), ceil((i+1)*size)) max-pooled, an empty bin 0; its second output is
the argmax (flat h*W + w within the image, -1 for an empty bin).

``nms``, ``roi_align``, ``ps_roi_align`` and ``roi_pool`` are the python entry points a model
calls, like ``torchvision.ops``'s.
"""
from __future__ import annotations

import math

import torch

SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align": "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
                 "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor",
    "ps_roi_align": "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
                    "SymInt pooled_width, int sampling_ratio) -> (Tensor, Tensor)",
    "roi_pool": "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
                "SymInt pooled_width) -> (Tensor, Tensor)",
}

_LIBRARY = None  # kept alive: dropping a torch.library.Library removes its ops


def reference_nms(dets: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS, one box at a time, by decreasing score; IoU as torchvision computes it."""
    order = torch.sort(scores, descending=True, stable=True).indices.tolist()
    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    kept: list[int] = []
    for i in order:
        suppressed = False
        for j in kept:
            w = (torch.minimum(x2[i], x2[j]) - torch.maximum(x1[i], x1[j])).clamp(min=0)
            h = (torch.minimum(y2[i], y2[j]) - torch.maximum(y1[i], y1[j])).clamp(min=0)
            inter = w * h
            if inter / (areas[i] + areas[j] - inter) > iou_threshold:
                suppressed = True
                break
        if not suppressed:
            kept.append(i)
    return torch.tensor(kept, dtype=torch.int64)


def _bilinear(image: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """image [C,H,W] sampled at every (ys[i], xs[j]) -> [C, len(ys), len(xs)], torchvision's rule."""
    _, height, width = image.shape

    def axis(coords, size):
        valid = (coords >= -1.0) & (coords <= size)
        c = coords.clamp(min=0)
        low = c.floor().long()
        at_edge = low >= size - 1
        low = torch.where(at_edge, torch.full_like(low, size - 1), low)
        high = torch.where(at_edge, low, low + 1)
        c = torch.where(at_edge, low.to(c.dtype), c)
        frac = c - low
        return low, high, 1 - frac, frac, valid

    y_lo, y_hi, wy_lo, wy_hi, vy = axis(ys, height)
    x_lo, x_hi, wx_lo, wx_hi, vx = axis(xs, width)

    def at(yi, xi):
        return image[:, yi[:, None], xi[None, :]]

    out = (at(y_lo, x_lo) * (wy_lo[:, None] * wx_lo[None, :]) + at(y_lo, x_hi) * (wy_lo[:, None] * wx_hi[None, :])
           + at(y_hi, x_lo) * (wy_hi[:, None] * wx_lo[None, :]) + at(y_hi, x_hi) * (wy_hi[:, None] * wx_hi[None, :]))
    return out * (vy[:, None] & vx[None, :]).to(image.dtype)


def _roi_bins(image, roi, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    """[C, PH, PW] average of each bin's samples for one roi (x1, y1, x2, y2)."""
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (float(v) * spatial_scale - offset for v in roi)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
    bin_h, bin_w = roi_h / pooled_height, roi_w / pooled_width
    grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / pooled_height)
    grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / pooled_width)
    out = image.new_zeros(image.shape[0], pooled_height, pooled_width)
    if grid_h <= 0 or grid_w <= 0:
        return out
    iy = (torch.arange(grid_h, dtype=image.dtype) + 0.5) / grid_h
    ix = (torch.arange(grid_w, dtype=image.dtype) + 0.5) / grid_w
    for ph in range(pooled_height):
        ys = y1 + (ph + iy) * bin_h
        for pw in range(pooled_width):
            xs = x1 + (pw + ix) * bin_w
            out[:, ph, pw] = _bilinear(image, ys, xs).sum(dim=(1, 2)) / (grid_h * grid_w)
    return out


def reference_roi_align(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    out = input.new_zeros(rois.shape[0], input.shape[1], pooled_height, pooled_width)
    for k, roi in enumerate(rois):
        out[k] = _roi_bins(input[int(roi[0])], roi[1:], spatial_scale, pooled_height, pooled_width,
                           sampling_ratio, aligned)
    return out


def reference_ps_roi_align(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio):
    bins = pooled_height * pooled_width
    channels_out = input.shape[1] // bins
    out = input.new_zeros(rois.shape[0], channels_out, pooled_height, pooled_width)
    mapping = torch.zeros(out.shape, dtype=torch.int32)
    for k, roi in enumerate(rois):
        full = _roi_bins(input[int(roi[0])], roi[1:], spatial_scale, pooled_height, pooled_width,
                         sampling_ratio, True)
        for c in range(channels_out):
            for i in range(pooled_height):
                for j in range(pooled_width):
                    channel = (c * pooled_height + i) * pooled_width + j
                    out[k, c, i, j] = full[channel, i, j]
                    mapping[k, c, i, j] = channel
    return out, mapping


def _c_round(v: float) -> int:
    return int(math.floor(v + 0.5)) if v >= 0 else -int(math.floor(-v + 0.5))


def reference_roi_pool(input, rois, spatial_scale, pooled_height, pooled_width):
    """One bin at a time, in the input's float precision where torchvision computes in it."""
    k, channels, height, width = rois.shape[0], input.shape[1], input.shape[2], input.shape[3]
    out = input.new_zeros(k, channels, pooled_height, pooled_width)
    argmax = torch.full(out.shape, -1, dtype=torch.int32)
    for n, roi in enumerate(rois):
        x1, y1, x2, y2 = (_c_round(float(v)) for v in roi[1:] * torch.tensor(spatial_scale, dtype=rois.dtype))
        bin_h = torch.tensor(max(y2 - y1 + 1, 1), dtype=input.dtype) / pooled_height
        bin_w = torch.tensor(max(x2 - x1 + 1, 1), dtype=input.dtype) / pooled_width
        image = input[int(roi[0])]
        for i in range(pooled_height):
            h0 = min(max(int(torch.floor(i * bin_h)) + y1, 0), height)
            h1 = min(max(int(torch.ceil((i + 1) * bin_h)) + y1, 0), height)
            for j in range(pooled_width):
                w0 = min(max(int(torch.floor(j * bin_w)) + x1, 0), width)
                w1 = min(max(int(torch.ceil((j + 1) * bin_w)) + x1, 0), width)
                if h1 <= h0 or w1 <= w0:
                    continue
                window = image[:, h0:h1, w0:w1].reshape(channels, -1)
                best, at = window.max(dim=1)
                out[n, :, i, j] = best
                argmax[n, :, i, j] = ((h0 + at // (w1 - w0)) * width + w0 + at % (w1 - w0)).to(torch.int32)
    return out, argmax


_KERNELS = {"nms": reference_nms, "roi_align": reference_roi_align, "ps_roi_align": reference_ps_roi_align,
            "roi_pool": reference_roi_pool}


def _fake_nms(dets, scores, iou_threshold):
    return dets.new_empty(torch.library.get_ctx().new_dynamic_size(), dtype=torch.int64)


def _fake_roi_align(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    return input.new_empty(rois.shape[0], input.shape[1], pooled_height, pooled_width)


def _fake_ps_roi_align(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio):
    shape = (rois.shape[0], input.shape[1] // (pooled_height * pooled_width), pooled_height, pooled_width)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)


def _fake_roi_pool(input, rois, spatial_scale, pooled_height, pooled_width):
    shape = (rois.shape[0], input.shape[1], pooled_height, pooled_width)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)


_FAKES = {"nms": _fake_nms, "roi_align": _fake_roi_align, "ps_roi_align": _fake_ps_roi_align,
          "roi_pool": _fake_roi_pool}


def defined(name: str) -> bool:
    try:
        getattr(torch.ops.torchvision, name).default
    except (AttributeError, RuntimeError):
        return False
    return True


def register() -> None:
    """Define the torchvision ops this module knows (each one torch does not know yet)."""
    global _LIBRARY
    missing = [name for name in SCHEMAS if not defined(name)]
    if not missing:
        return
    if _LIBRARY is None:
        _LIBRARY = torch.library.Library("torchvision", "FRAGMENT")
    for name in missing:
        _LIBRARY.define(SCHEMAS[name])
        _LIBRARY.impl(name, _KERNELS[name], "CompositeExplicitAutograd")
        torch.library.register_fake(f"torchvision::{name}", _FAKES[name], lib=_LIBRARY)


def nms(boxes, scores, iou_threshold: float):
    return torch.ops.torchvision.nms(boxes, scores, float(iou_threshold))


def roi_align(input, rois, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1,
              aligned: bool = False):
    """``torchvision.ops.roi_align`` on [K,5] rois, with its defaults."""
    h, w = (output_size, output_size) if isinstance(output_size, int) else output_size
    return torch.ops.torchvision.roi_align(input, rois, float(spatial_scale), h, w, int(sampling_ratio),
                                           bool(aligned))


def ps_roi_align(input, rois, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1):
    h, w = (output_size, output_size) if isinstance(output_size, int) else output_size
    return torch.ops.torchvision.ps_roi_align(input, rois, float(spatial_scale), h, w, int(sampling_ratio))[0]



def roi_pool(input, rois, output_size, spatial_scale: float = 1.0):
    """``torchvision.ops.roi_pool`` on [K,5] rois."""
    h, w = (output_size, output_size) if isinstance(output_size, int) else output_size
    return torch.ops.torchvision.roi_pool(input, rois, float(spatial_scale), h, w)[0]


register()
