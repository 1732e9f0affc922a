"""The tracing frontend: ``torch.jit.trace`` through the flattening adapter, then
the inlined TorchScript graph is converted into the IR by the shared jit-graph
importer (``dexport.frontends.jit_importer``, which says what the conversion keeps).

Every node records the innermost source line of the user's code (torch's and
dexport's own frames skipped) as a path relative to its import root, so the IR text
is the same on every machine. A trace sees one input: sizes taken into Python are
baked in, so the frontend needs probe captures (``dexport.frontends.probes``) to
export dynamic shapes.
"""
from __future__ import annotations

import importlib.util
import inspect
import os
import re
import sys
import traceback
import warnings

import torch

from dexport.adapter import TracingAdapter
from dexport.frontends.base import Frontend, register_frontend
from dexport.frontends.jit_importer import JitImporter
from dexport.frontends.value_dependence import ConversionWatch
from dexport.ir.errors import CaptureError, DexportError
from dexport.ir.graph import Graph
from dexport.ir.schema import DictSchema, RecordSchema, Schema, SequenceSchema, TensorSchema

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_DEXPORT_COMPILER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
# The dialects' op wrappers and records (Boxes, Instances) are dexport's code too: the
# useful line is the model code that called them.
_DIALECTS_DIR = os.path.dirname(os.path.abspath(importlib.util.find_spec("dexport.ir.dialects").origin)) + os.sep

def trace(model: torch.nn.Module, example_inputs: tuple, *, inference_func=None) -> Graph:
    """Capture ``model(*example_inputs)`` as an IR graph by tracing."""
    if not isinstance(model, torch.nn.Module):
        raise CaptureError(f"capture by tracing takes an nn.Module, got {type(model).__name__}",
                           hint="wrap the function in an nn.Module whose forward calls it")
    adapter = TracingAdapter(model, example_inputs, inference_func)
    prefix = next(name for name, child in adapter.named_children() if child is model)
    with _ModuleTracker(model) as tracker, torch.no_grad(), warnings.catch_warnings(), \
            ConversionWatch(tracker.innermost, _is_user_file, relative_source_path) as watch:
        # torch deprecates jit.trace in favour of export; the user cannot act on that here.
        warnings.filterwarnings("ignore", r"`torch\.jit\.trace", DeprecationWarning)
        try:
            traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
        except DexportError:
            raise
        except Exception as exc:
            raise _capture_error(exc, tracker.innermost()) from exc
    watch.check()  # value-dependent conversions the model caught and went on from
    jit_graph = traced.inlined_graph
    # The adapter returns a tuple of tensors; lowering tuples makes them the graph's
    # outputs and removes the model's own tuple packing and unpacking on the way.
    torch._C._jit_pass_lower_all_tuples(jit_graph)
    torch._C._jit_pass_dce(jit_graph)
    source_cache: dict[str, str] = {}
    graph = JitImporter(adapter, prefix, lambda stack: _user_source(stack, source_cache)).convert(jit_graph)
    graph.input_schema = adapter.inputs_schema
    graph.output_schema = adapter.outputs_schema
    arg_names = _positional_names(model) if inference_func is None else []
    for value, name in zip(graph.inputs, _leaf_paths(adapter.inputs_schema, arg_names)):
        value.name_hint = name
    # Sizes the trace baked into scripted calls: probes make them shape computations,
    # dexport.capture refuses them without probes.
    graph.baked_sizes = watch.baked_sizes
    return graph


# --------------------------------------------------------------------------- errors

class _ModuleTracker:
    """Knows which module of the model is running, so a failure can name it. The
    hooks only record names; they never touch tensors, so the trace is unchanged."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.stack: list[str] = []
        self.handles: list = []

    def __enter__(self) -> "_ModuleTracker":
        for name, module in self.model.named_modules():
            if isinstance(module, torch.jit.ScriptModule):
                continue  # takes no hooks; the trace inlines its graph
            self.handles.append(module.register_forward_pre_hook(self._enter_hook(name)))
            self.handles.append(module.register_forward_hook(self._exit_hook))
        return self

    def _enter_hook(self, name: str):
        def hook(module, args):
            self.stack.append(name)
        return hook

    def _exit_hook(self, module, args, output):
        self.stack.pop()  # returns None: a forward hook's return value would replace the output

    def __exit__(self, *exc_info) -> None:
        for handle in self.handles:
            handle.remove()

    def innermost(self) -> str | None:
        return self.stack[-1] if self.stack else None


def _capture_error(exc: Exception, scope: str | None) -> CaptureError:
    frames = traceback.extract_tb(exc.__traceback__)
    source = next((f"{relative_source_path(f.filename)}:{f.lineno}" for f in reversed(frames)
                   if _is_user_file(f.filename)), None)
    where = {None: "", "": " in the model's top level"}.get(scope, f" in module {scope!r}")
    return CaptureError(
        f"capture by tracing failed{where}: {type(exc).__name__}: {exc}",
        scope=scope, source=source,
        hint="run the model eagerly on the same example inputs to reproduce; fix the code at the "
             "source line above, or capture with inputs the model accepts")


# --------------------------------------------------------------------------- source locations

def _is_user_file(path: str) -> bool:
    path = os.path.abspath(path) if not path.startswith("<") else path
    return not (path.startswith(_TORCH_DIR) or path.startswith(_DEXPORT_COMPILER_DIR)
                or path.startswith(_DIALECTS_DIR))


_relative_paths: dict[str, str] = {}


def relative_source_path(path: str) -> str:
    """``/any/checkout/models/backbone.py`` -> ``dexport/models/backbone.py``: the path
    under which the file is imported, so sources do not depend on the machine."""
    if path.startswith("<"):
        return path
    if path not in _relative_paths:
        _relative_paths[path] = _import_path(os.path.abspath(path))
    return _relative_paths[path]


def _import_path(path: str) -> str:
    # The module name says where a file sits in the import namespace even when the
    # package directory is mapped (dexport.models lives in models/).
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        # "__main__" (and aliases such as "__mp_main__") say nothing about the path.
        if file and not name.startswith("__") and os.path.abspath(file) == path:
            stem = name.replace(".", "/")
            return stem + "/__init__.py" if os.path.basename(path) == "__init__.py" else stem + ".py"
    roots = [os.path.abspath(p) + os.sep for p in sys.path if p]
    root = max((r for r in roots if path.startswith(r)), key=len, default=None)
    return path[len(root):].replace(os.sep, "/") if root else os.path.basename(path)


_FRAME_LINE = re.compile(r"^(.*)\((\d+)\): .*$")


def _user_source(stack_text: str, cache: dict[str, str]) -> str:
    """The innermost user frame of a traced node's Python stack (innermost first)."""
    if stack_text in cache:
        return cache[stack_text]
    source = ""
    for line in stack_text.splitlines():
        m = _FRAME_LINE.match(line)
        if m and _is_user_file(m.group(1)):
            source = f"{relative_source_path(m.group(1))}:{m.group(2)}"
            break
    cache[stack_text] = source
    return source


# --------------------------------------------------------------------------- input names

def _positional_names(model: torch.nn.Module) -> list[str]:
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params
            if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]


def _leaf_paths(schema: Schema, arg_names: list[str]) -> list[str]:
    """One dotted name per flat tensor: ``x``, ``inputs.0.image``."""
    paths: list[str] = []

    def walk(s: Schema, path: str) -> None:
        if isinstance(s, TensorSchema):
            paths.append(path)
        elif isinstance(s, SequenceSchema):
            for i, item in enumerate(s.items):
                walk(item, f"{path}.{i}")
        elif isinstance(s, (DictSchema, RecordSchema)):
            keys = s.keys if isinstance(s, DictSchema) else s.fields
            for key, value in zip(keys, s.values):
                walk(value, f"{path}.{re.sub(r'[^A-Za-z0-9_]', '_', str(key))}")

    # The top level is the tuple of positional arguments.
    for i, item in enumerate(schema.items):
        walk(item, arg_names[i] if i < len(arg_names) else f"inputs.{i}")
    return paths


class TracingFrontend(Frontend):
    """``torch.jit.trace`` through ``TracingAdapter``."""
    name = "tracing"
    needs_probes = True

    def capture(self, model, example_inputs, *, inference_func=None) -> Graph:
        return trace(model, example_inputs, inference_func=inference_func)


register_frontend(TracingFrontend())
