"""Module scopes for methods other than ``forward``.

A trace records which module ran each op only when the module is *called*
(``nn.Module.__call__`` pushes the scope). The batched inference path calls methods
such as ``rpn.propose`` and ``roi_heads.detect`` directly, so without help their ops
would carry no scope and errors, dumps and bisection could not say which module
they came from. ``@module_scope`` gives such a method the scope a call would give.
"""
from __future__ import annotations

import functools

import torch

__all__ = ["module_scope"]


def module_scope(method):
    """Run ``method`` (of an ``nn.Module``) inside the module's trace scope when traced;
    a plain call otherwise. Mirrors what ``nn.Module`` does around ``forward``."""
    @functools.wraps(method)
    def scoped(self, *args, **kwargs):
        state = torch._C._get_tracing_state()
        names = torch.jit._trace._trace_module_map  # set while torch.jit.trace runs
        name = names.get(self) if state is not None and names is not None else None
        if not name:
            return method(self, *args, **kwargs)
        state.push_scope(name)
        try:
            return method(self, *args, **kwargs)
        finally:
            state.pop_scope()
    return scoped
