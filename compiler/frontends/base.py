"""The frontend interface and the frontend registry.

A frontend captures a model called on example inputs as an IR graph:
``capture(model, example_inputs, inference_func=...) -> Graph``. ``needs_probes``
says whether its graphs bake the example's sizes in (a trace does), so that
exporting dynamic shapes needs differential capture on probe inputs
(``dexport.frontends.probes``); the driver asks the frontend instead of deciding.
Built-in frontends register themselves when imported; the registry imports them on
first use.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

import torch

from dexport.ir.errors import CaptureError
from dexport.ir.graph import Graph


class Frontend:
    """Base class of every frontend; subclasses set ``name`` and ``needs_probes`` and
    implement ``capture``."""
    name: str = ""
    needs_probes: bool = False

    def capture(self, model: torch.nn.Module, example_inputs: Any, *,
                inference_func: Callable[..., Any] | None = None) -> Graph:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<frontend {self.name}>"


_BUILTIN_MODULES = ("dexport.frontends.tracing",)
_FRONTENDS: dict[str, Frontend] = {}
_builtins_loaded = False


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)


def register_frontend(frontend: Frontend) -> Frontend:
    """Make ``frontend`` available as ``method=frontend.name``; a name registered again
    is replaced."""
    if not frontend.name:
        raise CaptureError(f"{type(frontend).__name__} has no name", hint="set the class attribute 'name'")
    _FRONTENDS[frontend.name] = frontend
    return frontend


def unregister_frontend(name: str) -> None:
    _FRONTENDS.pop(name, None)


def frontend_names() -> list[str]:
    _load_builtins()
    return sorted(_FRONTENDS)


def get_frontend(name: str) -> Frontend:
    _load_builtins()
    frontend = _FRONTENDS.get(name)
    if frontend is None:
        raise CaptureError(f"unknown capture method {name!r}", hint=f"use one of: {', '.join(frontend_names())}")
    return frontend


__all__ = ["Frontend", "frontend_names", "get_frontend", "register_frontend", "unregister_frontend"]
