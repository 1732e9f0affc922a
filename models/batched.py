"""Batch-index helpers of the zoo's ``forward_batched``.

Every zoo model has ``forward_batched(images, image_sizes, output_sizes=None)``: one
traceable call over a whole batch, with no python loop over images or detections, so
a graph captured at one batch size runs at any other. Its inputs and outputs follow
the compiler's detection I/O convention (:mod:`dexport.ir.dialects.detection_io`:
batched images and sizes in, flat detections with per-image ``counts`` out).
Per-image work (top-k, NMS, post-processing) is vectorised with a batch index per
row: NMS runs on ``image * num_classes + class`` groups, and a per-image top-k keeps
the rows whose rank among the earlier rows of the same image is below k. Counting
uses compare-and-sum rather than bincount (ONNX has no bincount).

The helpers also script (``torch.jit.script``): counts such as ``num_groups`` are
annotated ``int``, which is what they are eagerly and scripted; while tracing they
are the traced 0-d size tensors ``x.shape[0]`` gives, so a trace keeps them dynamic.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "group_counts", "rank_in_group", "top_per_image", "clip_boxes_per_row", "rois_of",
    "pad_to_multiple", "normalize_images", "nonempty", "largest_group",
]


def _one_hot(group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """b8[L, G]: row r is True at column group[r]."""
    return group.unsqueeze(1) == torch.arange(num_groups, device=group.device).unsqueeze(0)


def group_counts(group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """i64[G]: how many entries of ``group`` (i64[L], values in [0, G)) equal each g."""
    return _one_hot(group, num_groups).sum(dim=0)


def largest_group(group: torch.Tensor, num_groups: int) -> int:
    """The largest of ``group_counts``, e.g. the most detections of any image, as a size:
    a 0-d tensor eagerly and while tracing (so a trace keeps the size dynamic), an int
    when scripted (TorchScript takes sizes as ints only)."""
    largest = group_counts(group, num_groups).max()
    if torch.jit.is_scripting():
        return int(largest)
    return largest


def rank_in_group(group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """i64[L]: for each row, the number of earlier rows with the same group."""
    hot = _one_hot(group, num_groups)
    return (hot.cumsum(dim=0) * hot).sum(dim=1) - 1


def top_per_image(order: torch.Tensor, image_index: torch.Tensor, k: int,
                  num_images: int) -> torch.Tensor:
    """Indices from ``order`` (candidates in priority order, e.g. NMS output) keeping at
    most ``k`` per image, grouped by image (image 0 first), priority order within one.

    Equals taking ``order[:k]`` of each image's own candidates, one image at a time."""
    image = image_index[order]
    selected = rank_in_group(image, num_images) < k
    order, image = order[selected], image[selected]
    # Unique keys, so any sort gives the same (deterministic) permutation.
    key = image * order.shape[0] + torch.arange(order.shape[0], device=order.device)
    return order[torch.argsort(key)]


def clip_boxes_per_row(boxes: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Clip boxes [..., 4] into [0, w] x [0, h], each row to its own size [..., 2] (h, w)
    (broadcast against the boxes); the same arithmetic as ``ops.clip_boxes``."""
    sizes = sizes.to(boxes.dtype)
    h, w = sizes[..., 0:1], sizes[..., 1:2]
    return torch.minimum(boxes.clamp(min=0), torch.cat([w, h, w, h], dim=-1))


def nonempty(boxes: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """b8[L]: the boxes [L, 4] whose width and height both exceed ``threshold``
    (``Boxes.nonempty`` on a plain tensor)."""
    return ((boxes[:, 2] - boxes[:, 0]) > threshold) & ((boxes[:, 3] - boxes[:, 1]) > threshold)


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
