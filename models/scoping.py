"""Module scopes for methods other than ``forward``.

A trace records which module ran each op only when the module is *called*
(``nn.Module.__call__`` pushes the scope). The batched inference path calls methods
such as ``rpn.propose`` and ``roi_heads.detect`` directly, so without help their ops
would carry no scope and errors, dumps and bisection could not say which module
they came from. ``@module_scope`` gives such a method the scope a call would give.
"""
from __future__ import annotations

import functools
import types

import torch

__all__ = ["module_scope"]


def module_scope(method):
    """Run ``method`` (of an ``nn.Module``) inside the module's trace scope when traced;
    a plain call otherwise. Mirrors what ``nn.Module`` does around ``forward``.

    ``torch.jit.script`` compiles the source of ``method`` itself (inspect unwraps the
    wrapper) but resolves its names in the wrapper's globals and names the wrapper's
    file in its source ranges; so the wrapper is rebuilt over the method's globals and
    file, and reads nothing global itself (torch's hooks come in through its closure)."""
    tracing_state = torch._C._get_tracing_state
    trace = torch.jit._trace

    def scoped(self, *args, **kwargs):
        state = tracing_state()
        names = trace._trace_module_map  # set while torch.jit.trace runs
        name = names.get(self) if state is not None and names is not None else None
        if not name:
            return method(self, *args, **kwargs)
        state.push_scope(name)
        try:
            return method(self, *args, **kwargs)
        finally:
            state.pop_scope()

    code = scoped.__code__.replace(co_filename=method.__code__.co_filename)
    scoped = types.FunctionType(code, method.__globals__, scoped.__name__, None,
                                scoped.__closure__)
    return functools.wraps(method)(scoped)
