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

from typing import Any, Callable

import torch

from dexport.ir.errors import CaptureError
from dexport.ir.graph import Graph
from dexport.ir.registry import Registry


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


# Frontends shipped with dexport register themselves when imported, on first use of the registry.
_FRONTENDS: Registry[Frontend] = Registry(("dexport.frontends.tracing", "dexport.frontends.scripting"), error=CaptureError,
                                          unknown="unknown capture method {name!r}")


def register_frontend(frontend: Frontend) -> Frontend:
    """Make ``frontend`` available as ``method=frontend.name``; a name registered again
    is replaced."""
    return _FRONTENDS.register(frontend.name, frontend)


def unregister_frontend(name: str) -> None:
    _FRONTENDS.unregister(name)


def frontend_names() -> list[str]:
    return _FRONTENDS.names()


def get_frontend(name: str) -> Frontend:
    return _FRONTENDS.get(name)


__all__ = ["Frontend", "frontend_names", "get_frontend", "register_frontend", "unregister_frontend"]
