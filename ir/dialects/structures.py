"""The struct dialect's detection records: Boxes, Instances, ImageList (detectron2's
conventions, plain torch), registered with the schemas so models that take or return
them can be captured and their outputs rebuilt.

Everything here must survive ``torch.jit.trace``: sizes that depend on the input
resolution are kept as 0-d int64 tensors while tracing, so a trace taken at one
resolution still computes the right sizes at another.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import device as Device  # TorchScript reads `torch.device` only under a plain name

from dexport.ir.schema import register_record

__all__ = ["Boxes", "pairwise_iou", "Instances", "ImageList"]


def _clamp_upto(x: torch.Tensor, hi: int) -> torch.Tensor:
    """Clamp x into [0, hi] where hi is a number or a 0-d tensor (kept traced)."""
    if isinstance(hi, torch.Tensor):
        return torch.minimum(x.clamp(min=0), hi.to(x.dtype))
    return x.clamp(min=0, max=hi)


def _quiet_len(value) -> int:
    """len() without the tracer's warning: lengths here only check consistency, and
    every traced op takes its sizes from the tensors themselves."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return len(value)


class Boxes:
    """N boxes as an N×4 float tensor in (x1, y1, x2, y2) absolute pixel coordinates."""

    def __init__(self, tensor: torch.Tensor):
        if not isinstance(tensor, torch.Tensor):
            tensor = torch.as_tensor(tensor, dtype=torch.float32)
        elif not tensor.is_floating_point():
            tensor = tensor.to(torch.float32)
        # An empty list/tensor still means "zero boxes", so keep the N×4 shape. Shape
        # values are tensors while tracing, so only the eager path inspects them.
        if tensor.dim() == 1 and tensor.shape[0] == 0:
            tensor = tensor.reshape(0, 4)
        if tensor.dim() != 2 or (not torch.jit.is_tracing() and tensor.shape[-1] != 4):
            raise ValueError(f"Boxes expects an N×4 tensor, got shape {list(tensor.shape)}")
        self.tensor = tensor

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __getitem__(self, item) -> "Boxes":
        """Index by int (one box), slice, bool mask or index tensor; always returns Boxes."""
        if isinstance(item, int):
            return Boxes(self.tensor[item].view(1, -1))
        return Boxes(self.tensor[item])

    @torch.jit.unused
    def __iter__(self):
        yield from self.tensor

    @torch.jit.unused
    def __repr__(self) -> str:
        return f"Boxes({self.tensor})"

    @property
    def device(self) -> Device:
        return self.tensor.device

    def clone(self) -> "Boxes":
        return Boxes(self.tensor.clone())

    def to(self, device: Device) -> "Boxes":
        return Boxes(self.tensor.to(device))

    def area(self) -> torch.Tensor:
        t = self.tensor
        return (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])

    def clip(self, box_size: tuple[int, int]) -> None:
        """Clip in place to an image of size (h, w): x into [0, w], y into [0, h].

        h and w may be ints or 0-d tensors; tensors keep the clip resolution-generic
        under tracing. The tensor is replaced rather than written in place so traced
        graphs hold no in-place view updates.
        """
        h, w = box_size
        t = self.tensor
        self.tensor = torch.stack(
            (
                _clamp_upto(t[:, 0], w),
                _clamp_upto(t[:, 1], h),
                _clamp_upto(t[:, 2], w),
                _clamp_upto(t[:, 3], h),
            ),
            dim=1,
        )

    def nonempty(self, threshold: float = 0.0) -> torch.Tensor:
        """Bool mask of the boxes whose width and height both exceed ``threshold``."""
        t = self.tensor
        return ((t[:, 2] - t[:, 0]) > threshold) & ((t[:, 3] - t[:, 1]) > threshold)

    def scale(self, scale_x: float, scale_y: float) -> None:
        """Scale x coordinates by scale_x and y by scale_y (in place on this object)."""
        t = self.tensor
        self.tensor = torch.stack(
            (t[:, 0] * scale_x, t[:, 1] * scale_y, t[:, 2] * scale_x, t[:, 3] * scale_y), dim=1
        )

    def get_centers(self) -> torch.Tensor:
        t = self.tensor
        return (t[:, :2] + t[:, 2:]) / 2

    @staticmethod
    def cat(boxes_list: list["Boxes"]) -> "Boxes":
        if not boxes_list:
            return Boxes(torch.empty(0, 4))
        return Boxes(torch.cat([b.tensor for b in boxes_list], dim=0))


def pairwise_iou(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """IoU of every pair: an N×M tensor; pairs that do not overlap (or have zero union) give 0."""
    a, b = boxes1.tensor, boxes2.tensor
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = boxes1.area()[:, None] + boxes2.area()[None, :] - inter
    return torch.where(inter > 0, inter / union.clamp(min=torch.finfo(a.dtype).tiny), 0.0)


def _index_field(value, item):
    """value[item]; python lists also accept bool masks and index tensors (eager only)."""
    if isinstance(value, list) and isinstance(item, torch.Tensor):
        if item.dtype == torch.bool:
            item = item.nonzero().flatten()
        return [value[i] for i in item.tolist()]
    return value[item]


class Instances:
    """Per-image detection results or annotations: named fields of equal length.

    ``image_size`` is (h, w): python ints in eager mode, or 0-d int64 tensors while
    tracing so the traced graph keeps the true size at another resolution.
    Fields can be tensors, Boxes, lists, or anything with ``__len__``/``__getitem__``
    (and a static ``cat`` for :meth:`Instances.cat`).
    """

    def __init__(self, image_size, **fields: Any):
        self._image_size = tuple(image_size)
        self._fields: dict[str, Any] = {}
        for name, value in fields.items():
            self.set(name, value)

    @property
    def image_size(self) -> tuple:
        return self._image_size

    # Attribute access maps onto fields; names starting with "_" are real attributes.
    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            super().__setattr__(name, value)
        else:
            self.set(name, value)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails, i.e. for field names.
        fields = self.__dict__.get("_fields")
        if fields is None or name not in fields:
            raise AttributeError(f"Instances has no field {name!r}; fields: {list(fields or [])}")
        return fields[name]

    def set(self, name: str, value: Any) -> None:
        """Add or replace a field; its length must match the other fields."""
        others = [v for k, v in self._fields.items() if k != name]
        if others:
            n, m = _quiet_len(others[0]), _quiet_len(value)
            if n != m:
                raise ValueError(f"field {name!r} has length {m}, but the Instances has {n}")
        self._fields[name] = value

    def has(self, name: str) -> bool:
        return name in self._fields

    def remove(self, name: str) -> None:
        del self._fields[name]

    def get(self, name: str) -> Any:
        return self._fields[name]

    @property
    def fields(self) -> dict[str, Any]:
        """The live field dict, in insertion order."""
        return self._fields

    def get_fields(self) -> dict[str, Any]:
        """detectron2's name for :attr:`fields`."""
        return self._fields

    def __len__(self) -> int:
        for value in self._fields.values():
            return _quiet_len(value)
        raise NotImplementedError("an Instances with no fields has no length")

    def __getitem__(self, item) -> "Instances":
        """Select instances by int, slice, bool mask or index tensor (every field alike)."""
        if isinstance(item, int):
            n = len(self)
            if item >= n or item < -n:
                raise IndexError(f"Instances index {item} out of range for length {n}")
            item = slice(item, None, n)  # keeps a length-1 dimension on every field
        out = Instances(self._image_size)
        for name, value in self._fields.items():
            out._fields[name] = _index_field(value, item)
        return out

    def to(self, device) -> "Instances":
        out = Instances(self._image_size)
        for name, value in self._fields.items():
            out._fields[name] = value.to(device) if hasattr(value, "to") else value
        return out

    @staticmethod
    def cat(instance_lists: list["Instances"]) -> "Instances":
        """Concatenate Instances of the same image; every input must have the same fields."""
        if not instance_lists:
            raise ValueError("Instances.cat needs at least one Instances")
        if len(instance_lists) == 1:
            return instance_lists[0]
        first = instance_lists[0]
        names = list(first._fields)
        for other in instance_lists[1:]:
            if list(other._fields) != names:
                raise ValueError(
                    f"Instances.cat: fields differ: {names} vs {list(other._fields)}"
                )
        out = Instances(first._image_size)
        for name in names:
            values = [inst._fields[name] for inst in instance_lists]
            head = values[0]
            if isinstance(head, torch.Tensor):
                merged = torch.cat(values, dim=0)
            elif isinstance(head, list):
                merged = [item for value in values for item in value]
            elif hasattr(type(head), "cat"):
                merged = type(head).cat(values)
            else:
                raise TypeError(f"Instances.cat: cannot concatenate field {name!r} of {type(head)}")
            out._fields[name] = merged
        return out

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}: {type(v).__name__}" for k, v in self._fields.items())
        n = len(self) if self._fields else 0
        return f"Instances(num_instances={n}, image_size={self._image_size}, fields=[{fields}])"


class ImageList:
    """A batch of images padded to one size, with each image's true (h, w).

    ``image_sizes`` holds (h, w) tuples: ints in eager mode, 0-d int64 tensors while
    tracing (taken from the tracked tensor shapes, so the padding is recomputed for
    every new resolution when the trace runs).
    """

    def __init__(self, tensor: torch.Tensor, image_sizes: list[tuple]):
        self.tensor = tensor
        self.image_sizes = image_sizes

    def __len__(self) -> int:
        return len(self.image_sizes)

    def __getitem__(self, idx: int) -> torch.Tensor:
        """The idx-th image without its padding."""
        h, w = self.image_sizes[idx]
        return self.tensor[idx, ..., :h, :w]

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def to(self, device) -> "ImageList":
        return ImageList(self.tensor.to(device), self.image_sizes)

    @staticmethod
    def from_tensors(
        tensors: list[torch.Tensor], size_divisibility: int = 0, pad_value: float = 0.0
    ) -> "ImageList":
        """Pad images (…, H, W) on the bottom/right to the largest H and W, rounded up
        to a multiple of ``size_divisibility`` (when > 1), and stack them."""
        if not tensors:
            raise ValueError("ImageList.from_tensors needs at least one image")
        if torch.jit.is_tracing():
            # Tracked shapes: the trace recomputes the padding for every input size.
            shapes = [torch._shape_as_tensor(t)[-2:] for t in tensors]
            image_sizes = [(s[0], s[1]) for s in shapes]
            max_h, max_w = torch.stack(shapes).max(dim=0).values.unbind()
            if size_divisibility > 1:
                d = size_divisibility
                max_h = torch.div(max_h + (d - 1), d, rounding_mode="floor") * d
                max_w = torch.div(max_w + (d - 1), d, rounding_mode="floor") * d
        else:
            for t in tensors:
                if t.shape[:-2] != tensors[0].shape[:-2]:
                    raise ValueError(
                        f"images differ in leading dims: {tuple(t.shape)} vs "
                        f"{tuple(tensors[0].shape)}"
                    )
            image_sizes = [(int(t.shape[-2]), int(t.shape[-1])) for t in tensors]
            max_h = max(h for h, _ in image_sizes)
            max_w = max(w for _, w in image_sizes)
            if size_divisibility > 1:
                d = size_divisibility
                max_h = (max_h + d - 1) // d * d
                max_w = (max_w + d - 1) // d * d
        padded = [
            F.pad(t, [0, max_w - w, 0, max_h - h], value=pad_value)
            for t, (h, w) in zip(tensors, image_sizes)
        ]
        return ImageList(torch.stack(padded), image_sizes)


# --------------------------------------------------------------------------- schemas

def _size_to_ints(size):
    # While tracing, image sizes are 0-d tensors so the graph computes them; once
    # rebuilt outside a trace they are plain ints again, as eager code produces.
    if torch.jit.is_tracing():
        return tuple(size)
    return tuple(int(s) for s in size)


def _instances_to_fields(inst: Instances) -> dict:
    return {"image_size": tuple(inst.image_size), **inst.get_fields()}


def _instances_from_fields(parts: dict) -> Instances:
    parts = dict(parts)
    return Instances(_size_to_ints(parts.pop("image_size")), **parts)


def _image_list_to_fields(images: ImageList) -> dict:
    return {"tensor": images.tensor, "image_sizes": [tuple(s) for s in images.image_sizes]}


def _image_list_from_fields(parts: dict) -> ImageList:
    return ImageList(parts["tensor"], [_size_to_ints(s) for s in parts["image_sizes"]])


register_record(Boxes, kind="Boxes", to_fields=lambda b: {"tensor": b.tensor},
                from_fields=lambda parts: Boxes(parts["tensor"]))
register_record(Instances, kind="Instances", to_fields=_instances_to_fields,
                from_fields=_instances_from_fields)
register_record(ImageList, kind="ImageList", to_fields=_image_list_to_fields,
                from_fields=_image_list_from_fields)
