"""What a loaded artifact accepts as input, checked before onnxruntime sees it.

Detectors take the zoo's list API: a list of dicts with ``image`` (a tensor, C×H×W)
and optional ``height`` / ``width`` (the size to return results at). The eager zoo
model is the reference for what is accepted: its pre-processing computes
``(image - pixel_mean) / pixel_std`` in float32, so integer and half-precision images
are converted to float32 (float64 too: the network computes in float32), and a
1-channel image broadcasts to the 3 channels. Everything eager rejects or gets wrong
by accident (bool images, 2-D or 4-channel or H×W×C images, empty images, sizes that
are not positive integers) is a DexportError naming what is expected.
"""
from __future__ import annotations

import numbers
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from dexport.ir.errors import DexportError

EXPECTED = ('a list of dicts, one per image: {"image": tensor of shape (3, H, W), optional "height" and '
            '"width": the positive integer size to return results at}')


def _error(what: str, hint: str = EXPECTED) -> DexportError:
    return DexportError(f"detector input: {what}", hint=f"pass {hint}" if hint is EXPECTED else hint)


def detection_inputs(batched_inputs: Any) -> list[dict]:
    """``batched_inputs`` checked and converted as the eager zoo model treats it:
    a new list of ``{"image": float32 (3, H, W)[, "height": int][, "width": int]}``."""
    if isinstance(batched_inputs, torch.Tensor):
        raise _error(f"got a tensor of shape {tuple(batched_inputs.shape)}, not a list of dicts",
                     hint='wrap each image in a dict: [{"image": x} for x in images]')
    if isinstance(batched_inputs, Mapping):
        raise _error("got one dict, not a list of dicts", hint="pass a list: [inputs]")
    if not isinstance(batched_inputs, (list, tuple)):
        raise _error(f"got {type(batched_inputs).__name__}")
    if not batched_inputs:
        raise _error("got an empty list; there is nothing to run")
    return [_one_image(i, item) for i, item in enumerate(batched_inputs)]


def _one_image(i: int, item: Any) -> dict:
    where = f"item {i}"
    if not isinstance(item, Mapping):
        raise _error(f"{where} is a {type(item).__name__}, not a dict")
    if "image" not in item:
        raise _error(f"{where} has no 'image' key (keys: {sorted(map(str, item))[:8]})")
    out = {"image": _image(f"{where}['image']", item["image"])}
    for key in ("height", "width"):
        if key in item:
            out[key] = _size(f"{where}[{key!r}]", item[key])
    return out


def _image(where: str, image: Any) -> torch.Tensor:
    if isinstance(image, np.ndarray):
        raise _error(f"{where} is a numpy array, not a torch tensor", hint="convert it: torch.from_numpy(array)")
    if not isinstance(image, torch.Tensor):
        raise _error(f"{where} is a {type(image).__name__}, not a tensor")
    if image.dtype == torch.bool or image.is_complex():
        raise _error(f"{where} has dtype {image.dtype}",
                     hint="pass pixel values as a float (or uint8/integer) tensor, 0..255 in the model's channel order")
    shape = tuple(image.shape)
    if image.dim() != 3:
        hint = ("a grayscale image needs a channel axis: image[None] is (1, H, W)" if image.dim() == 2 else
                "pass one dict per image: [{'image': x} for x in batch]" if image.dim() == 4 else
                "pass a (3, H, W) tensor")
        raise _error(f"{where} has shape {shape}; expected (3, H, W)", hint=hint)
    if image.shape[0] not in (1, 3):
        hint = ("this looks like H×W×C: pass image.permute(2, 0, 1)" if image.shape[-1] in (1, 3) else
                "the model takes 3-channel images (or 1-channel, repeated): drop the extra channels")
        raise _error(f"{where} has {image.shape[0]} channels in shape {shape}; expected (3, H, W)", hint=hint)
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise _error(f"{where} has shape {shape}: an empty image", hint="pass images with positive height and width")
    image = image.detach().cpu().to(torch.float32)  # what eager's `image - pixel_mean` computes in
    # eager broadcasts a 1-channel image against the 3 per-channel means
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def _size(where: str, value: Any) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point() \
            and value.dtype != torch.bool:
        value = int(value.reshape(()))
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _error(f"{where} is {value!r:.60}, not an integer",
                     hint="height and width are the positive integer size to return results at")
    if value <= 0:
        raise _error(f"{where} is {int(value)}", hint="height and width must be positive")
    return int(value)


def read_image_file(path) -> torch.Tensor:
    """A float32 (3, H, W) image stored as ``.npy`` or ``.pt``, read without running
    pickled code (``allow_pickle=False``, ``weights_only=True``)."""
    import pickle
    try:
        if str(path).endswith(".npy"):
            x = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            x = torch.load(path, weights_only=True, map_location="cpu")
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise DexportError(f"{path}: not a readable image array ({type(e).__name__}: {str(e)[:200]})",
                           hint="store each image as a plain tensor/array: torch.save(t, f) or np.save(f, a)") from None
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[0] != 3 or x.dtype == torch.bool:
        got = f"shape {tuple(x.shape)}, {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise DexportError(f"{path}: expected a [3, H, W] image, got {got}",
                           hint="store each image as a [3, H, W] array in the model's channel order")
    return x.float()


def structured_inputs(schema, inputs: tuple, declared: Sequence[dict]) -> list[torch.Tensor]:
    """The flat tensors of a structured artifact's call, checked against the graph's
    declared inputs (the manifest's ``inputs``: ``name``, ``shape`` with ints for fixed
    dims, and ``dtype`` where the backend declares it)."""
    flat = schema.flatten(inputs)  # raises SchemaError (a DexportError) on a wrong structure
    for x, decl in zip(flat, declared):
        name, dims = decl.get("name"), list(decl.get("shape", ()))
        dtype = getattr(torch, decl["dtype"], None) if decl.get("dtype") else None
        if isinstance(dtype, torch.dtype) and x.dtype != dtype:
            raise DexportError(f"input {name!r}: dtype {x.dtype}, the exported graph takes {dtype}",
                               hint=f"pass x.to({dtype}) as at capture")
        if x.dim() != len(dims) or any(isinstance(d, int) and d != n for d, n in zip(dims, x.shape)):
            raise DexportError(f"input {name!r}: shape {tuple(x.shape)}, the exported graph takes "
                               f"{[d if isinstance(d, int) else '?' for d in dims]}",
                               hint="dims shown as ? may differ from the capture's; the others may not")
    return flat


__all__ = ["EXPECTED", "detection_inputs", "read_image_file", "structured_inputs"]
