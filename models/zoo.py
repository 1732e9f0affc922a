"""The model zoo: named, deterministic model constructors plus optional shipped weights.

``get(name)`` builds the model from a fixed seed, so a name always means the same
model; ``weights="default"`` then loads ``models/weights/<name>.safetensors`` when it
ships. Other architecture modules add their entries with ``register``; they are
imported on first use (see ``_EXTENSION_MODULES``).
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from dexport.models.rcnn import GeneralizedRCNN, RCNNConfig

__all__ = ["names", "get", "config", "register", "WEIGHTS_DIR"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# Modules that call register() at import; one that does not exist (yet) is skipped.
_EXTENSION_MODULES = (
    "dexport.models.retinanet",
    "dexport.models.cascade",
    "dexport.models.pointrend",
    "dexport.models.panoptic",
)

_REGISTRY: dict[str, tuple[Callable[[Any], nn.Module], Any]] = {}
_extensions_loaded = False


def register(name: str, factory: Callable[[Any], nn.Module], config: Any) -> None:
    """Add a zoo entry: ``factory(config)`` builds the model (in train mode is fine).

    The zoo seeds torch's generator before calling the factory, so the factory must
    draw all its random init from torch's global generator.
    """
    if name in _REGISTRY:
        raise ValueError(f"zoo entry {name!r} is already registered")
    _REGISTRY[name] = (factory, config)


def _load_extensions() -> None:
    global _extensions_loaded
    if _extensions_loaded:
        return
    _extensions_loaded = True  # set first: an extension may itself call names()
    for module in _EXTENSION_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise


def _entry(name: str) -> tuple[Callable[[Any], nn.Module], Any]:
    _load_extensions()
    if name not in _REGISTRY:
        raise ValueError(f"unknown zoo model {name!r}; available: {', '.join(names())}")
    return _REGISTRY[name]


def names() -> list[str]:
    """All zoo model names, sorted."""
    _load_extensions()
    return sorted(_REGISTRY)


def config(name: str) -> Any:
    """The (immutable) config the named model is built from."""
    return _entry(name)[1]


def get(name: str, weights: str | os.PathLike | None = "default") -> nn.Module:
    """Build the named model in eval mode.

    ``weights``: "default" loads the shipped ``<name>.safetensors`` when there is one
    and otherwise keeps the deterministic init; None always keeps the init; a path
    loads that safetensors file (all tensors must match the model).
    """
    factory, cfg = _entry(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = factory(cfg)
    if weights == "default":
        shipped = WEIGHTS_DIR / f"{name}.safetensors"
        path = shipped if shipped.exists() else None
    else:
        path = None if weights is None else Path(weights)
    if path is not None:
        from safetensors.torch import load_file
        model.load_state_dict(load_file(str(path)))
    return model.eval()


for _name, _cfg in [
    ("faster_rcnn_R50_FPN", RCNNConfig.r50()),
    ("mask_rcnn_R50_FPN", RCNNConfig.r50(mask_on=True)),
    ("keypoint_rcnn_R50_FPN", RCNNConfig.r50(keypoint_on=True, num_classes=1)),
    ("faster_rcnn_tiny", RCNNConfig.tiny()),
    ("mask_rcnn_tiny", RCNNConfig.tiny(mask_on=True)),
    ("keypoint_rcnn_tiny", RCNNConfig.tiny(keypoint_on=True, num_classes=1)),
]:
    register(_name, GeneralizedRCNN, _cfg)
