"""The tracing frontend: ``torch.jit.trace`` through the flattening adapter, then
the inlined TorchScript graph is converted node by node into the IR.

What the conversion keeps, and why:

* parameters and buffers (``prim::GetAttr`` chains) become ``prim::Param``
  nodes named by their qualified names in the user's model
  (``backbone.res2.0.conv1.weight``), so passes and backends can refer to them;
  a tensor reached under two names (tied weights) is stored once;
* constants become attributes; tensor constants with more than a few elements
  go to ``graph.params`` as ``_const.N`` so the text form stays small; an int
  constant that only feeds ``ScalarType``/``Layout``/``MemoryFormat`` arguments
  becomes the torch object it stands for (``torch.float32``), as it reads;
* every node records the module scope that ran it (``layer1.0.conv1``) and the
  innermost source line of the user's code (torch's own frames skipped) as a
  path relative to its import root, so the IR text is the same on every machine.
"""
from __future__ import annotations

import importlib.util
import inspect
import os
import re
import sys
import traceback
import warnings
from typing import Any

import torch

from dexport.adapter import TracingAdapter
from dexport.ir.errors import CaptureError, DexportError
from dexport.ir.graph import CONSTANT, PARAM, SMALL_TENSOR_NUMEL, Block, Graph, Meta, Node, Value
from dexport.ir.ops import has_op, ir_type_from_jit, registered_ops, type_of_constant
from dexport.ir.schema import DictSchema, RecordSchema, Schema, SequenceSchema, TensorSchema

_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_DEXPORT_COMPILER_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
# The zoo's op wrappers only forward to torch.ops.dexport.*: the useful line is
# the model code that called them.
_OP_WRAPPER_FILE = os.path.abspath(importlib.util.find_spec("dexport.models.ops").origin)

# The integer codes TorchScript uses for these enums, as the torch objects they mean.
_DTYPE_CODES = {torch.ops.prim.dtype(torch.empty(0, dtype=d)): d
                for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64,
                          torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8,
                          torch.bool, torch.complex64, torch.complex128)}
_ENUM_CODES = {
    "ScalarType": _DTYPE_CODES,
    "Layout": {0: torch.strided, 1: torch.sparse_coo},
    "MemoryFormat": {0: torch.contiguous_format, 1: torch.preserve_format,
                     2: torch.channels_last, 3: torch.channels_last_3d},
}


def trace(model: torch.nn.Module, example_inputs: tuple, *, inference_func=None) -> Graph:
    """Capture ``model(*example_inputs)`` as an IR graph by tracing."""
    if not isinstance(model, torch.nn.Module):
        raise CaptureError(f"capture by tracing takes an nn.Module, got {type(model).__name__}",
                           hint="wrap the function in an nn.Module whose forward calls it")
    adapter = TracingAdapter(model, example_inputs, inference_func)
    prefix = next(name for name, child in adapter.named_children() if child is model)
    with _ModuleTracker(model) as tracker, torch.no_grad(), warnings.catch_warnings():
        # torch deprecates jit.trace in favour of export; the user cannot act on that here.
        warnings.filterwarnings("ignore", r"`torch\.jit\.trace", DeprecationWarning)
        try:
            traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
        except DexportError:
            raise
        except Exception as exc:
            raise _capture_error(exc, tracker.innermost()) from exc
    jit_graph = traced.inlined_graph
    # The adapter returns a tuple of tensors; lowering tuples makes them the graph's
    # outputs and removes the model's own tuple packing and unpacking on the way.
    torch._C._jit_pass_lower_all_tuples(jit_graph)
    torch._C._jit_pass_dce(jit_graph)
    graph = _Converter(adapter, prefix).convert(jit_graph)
    graph.input_schema = adapter.inputs_schema
    graph.output_schema = adapter.outputs_schema
    arg_names = _positional_names(model) if inference_func is None else []
    for value, name in zip(graph.inputs, _leaf_paths(adapter.inputs_schema, arg_names)):
        value.name_hint = name
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
                or path == _OP_WRAPPER_FILE)


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


# --------------------------------------------------------------------------- conversion

class _Converter:
    def __init__(self, adapter: TracingAdapter, prefix: str):
        self.adapter = adapter
        self.prefix = prefix
        self.graph = Graph()
        self.graph.example_shapes = True  # the trace saw one input's sizes, nothing more
        self.values: dict[int, Value] = {}          # JIT value unique() -> IR value
        self.objects: dict[int, tuple[Any, str]] = {}  # JIT module value -> (object, path)
        self.params_by_tensor: dict[int, Value] = {}
        self.first_body_node: Node | None = None    # Param nodes go before it
        self.num_consts = 0
        self.source_cache: dict[str, str] = {}
        self.schemas: dict[str, Any] = {}
        self.owned_ops = set(registered_ops())  # structural ops keep their plain names

    def convert(self, jit_graph) -> Graph:
        g = self.graph
        jit_inputs = list(jit_graph.inputs())
        self.objects[jit_inputs[0].unique()] = (self.adapter, "")
        for v in jit_inputs[1:]:
            self.values[v.unique()] = g.add_input(ir_type_from_jit(v.type()))
        self._convert_block(jit_graph.block(), g.block)
        self._check_ops()
        return g

    def _convert_block(self, jit_block, block: Block) -> None:
        for node in jit_block.nodes():
            kind = node.kind()
            if kind == "prim::GetAttr":
                self._get_attr(node, block)
            elif kind == "prim::Constant":
                self._constant(node, block)
            else:
                self._op(node, block)
        block.set_returns([self.values[v.unique()] for v in jit_block.outputs()])

    def _meta(self, node) -> Meta:
        return Meta(self._scope(node.scopeName()), _user_source(node.sourceRange(), self.source_cache))

    def _scope(self, scope_name: str) -> str:
        # "__module.model.layer1/__module.model.layer1.0" -> "layer1.0"
        path = scope_name.rsplit("/", 1)[-1]
        path = path[len("__module"):].lstrip(".") if path.startswith("__module") else path
        if path == self.prefix:
            return ""
        return path[len(self.prefix) + 1:] if path.startswith(self.prefix + ".") else path

    def _append(self, block: Block, op: str, inputs, types, attrs=None, meta=None) -> Node:
        node = self.graph.create_node(op, inputs, types, attrs, meta, block=block)
        if block is self.graph.block and self.first_body_node is None:
            self.first_body_node = node
        return node

    def _add_param(self, name: str, tensor: torch.Tensor, meta: Meta) -> Value:
        """A prim::Param at the top of the graph (in first-use order), so every block can read it."""
        self.graph.params[name] = tensor
        node = self.graph.create_node(PARAM, (), [type_of_constant(tensor)], {"name": name}, meta,
                                      before=self.first_body_node)
        node.output.name_hint = name
        return node.output

    def _get_attr(self, node, block: Block) -> None:
        parent, parent_path = self.objects[node.input().unique()]
        name = node.s("name")
        obj = getattr(parent, name)
        path = f"{parent_path}.{name}" if parent_path else name
        out = node.output()
        if isinstance(obj, torch.nn.Module):
            self.objects[out.unique()] = (obj, path)
            return
        if not isinstance(obj, torch.Tensor):
            raise CaptureError(f"the trace reads the non-tensor attribute {path!r}",
                               op="prim::GetAttr", scope=self._scope(node.scopeName()),
                               hint="keep only parameters, buffers and submodules as module attributes "
                                    "read by forward")
        key = id(obj)
        if key not in self.params_by_tensor:
            param_name = path[len(self.prefix) + 1:] if path.startswith(self.prefix + ".") else path
            self.params_by_tensor[key] = self._add_param(param_name, obj.detach(), Meta())
        self.values[out.unique()] = self.params_by_tensor[key]

    def _constant(self, node, block: Block) -> None:
        out = node.output()
        value = out.toIValue()
        meta = self._meta(node)
        if isinstance(value, torch.Tensor):
            value = value.detach()
            if value.numel() > SMALL_TENSOR_NUMEL:
                name = self.graph.unique_param_name(f"_const.{self.num_consts}")
                self.num_consts += 1
                self.values[out.unique()] = self._add_param(name, value, meta)
                return
            typ = type_of_constant(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            value = self._enum_value(out, value)
            typ = type_of_constant(value)
        else:
            typ = ir_type_from_jit(out.type())
        self.values[out.unique()] = self._append(block, CONSTANT, [], [typ], {"value": value}, meta).output

    def _enum_value(self, out, value: int):
        """The torch object an int constant stands for, when every use reads it as one."""
        kinds = set()
        for use in out.uses():
            schema = self._schema(use.user)
            if schema is None:
                return value
            kinds.add(str(schema.arguments[use.offset].real_type).replace("Optional[", "").rstrip("]"))
        if len(kinds) == 1:
            return _ENUM_CODES.get(kinds.pop(), {}).get(value, value)
        return value

    def _schema(self, node):
        text = node.schema()
        if text == "(no schema)":
            return None
        if text not in self.schemas:
            self.schemas[text] = torch._C.parse_schema(text)
        return self.schemas[text]

    def _op(self, node, block: Block) -> None:
        kind = node.kind()
        if kind == "prim::PythonOp":
            raise CaptureError(f"the model calls the Python function {node.pyname()}, which a trace "
                               "records as an opaque call", op=kind, scope=self._scope(node.scopeName()),
                               source=_user_source(node.sourceRange(), self.source_cache),
                               hint="write it with torch ops, or register it as a custom op "
                                    "(torch.library.custom_op) so it becomes one graph node")
        if node.attributeNames():
            raise CaptureError(f"the trace holds {kind} with attributes {node.attributeNames()}, "
                               "which dexport does not convert", op=kind,
                               scope=self._scope(node.scopeName()),
                               source=_user_source(node.sourceRange(), self.source_cache),
                               hint="please report this op with the model that produced it")
        schema = self._schema(node)
        op = kind
        if schema is not None and schema.name == kind and kind not in self.owned_ops:
            op = f"{kind}.{schema.overload_name}" if schema.overload_name else kind
        inputs = [self.values[v.unique()] for v in node.inputs()]
        types = [ir_type_from_jit(v.type()) for v in node.outputs()]
        new = self._append(block, op, inputs, types, meta=self._meta(node))
        for jit_block in node.blocks():
            sub = new.add_block()
            for p in jit_block.inputs():
                self.values[p.unique()] = sub.add_param(ir_type_from_jit(p.type()))
            self._convert_block(jit_block, sub)
        for jit_out, value in zip(node.outputs(), new.outputs):
            self.values[jit_out.unique()] = value

    def _check_ops(self) -> None:
        """Every op must be known to the registry; list all unknown ones at once."""
        missing: dict[str, Node] = {}
        for node in self.graph.nodes():
            if node.op not in missing and not has_op(node.op):
                missing[node.op] = node
        if missing:
            lines = [f"{op}  # {n.meta.scope or '<top level>'} @ {n.meta.source}" for op, n in missing.items()]
            raise CaptureError(
                f"the trace uses {len(missing)} op(s) that neither torch nor dexport defines",
                context="\n".join(lines),
                hint="replace them in the model with ATen ops, or register them "
                     "(torch.library for kernels, dexport.ir.ops.register_op for dexport-owned ops)")
