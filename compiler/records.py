"""Registers the zoo's structures (Instances, Boxes, ImageList) with the schemas,
so models that take or return them can be captured and their outputs rebuilt."""
from __future__ import annotations

import torch

from dexport.ir.schema import register_record
from dexport.models.structures import Boxes, ImageList, Instances


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
