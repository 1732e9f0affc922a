"""The scripting frontend: ``torch.jit.script`` of the model, inlined, converted into
the IR by the shared jit-graph importer (``dexport.frontends.jit_importer``).

Scripting compiles the model's code rather than recording one run of it, so the
graph keeps the model's control flow (``prim::If``/``prim::Loop`` as nested blocks
with loop-carried values) and its sizes stay computations: batch and resolution are
dynamic by construction and no probe captures are needed.

The compiled entry point is ``forward``, or the method ``inference_func`` names
(a detector's ``forward_batched``): only that method of the top module is compiled,
with what it calls, so a list-API ``forward`` of the same model need not be
scriptable. Submodules are compiled as ``torch.jit.script`` always does (their
``forward`` and what it calls).

The graph's inputs and outputs are flat tensors, as for every frontend: the model's
structured arguments (tuples, lists, dicts of tensors, constants) are rebuilt at the
top of the graph from the flat inputs, and the structured result is taken apart at
the end (``__getitem__``/``TupleIndex`` nodes, which canonicalize folds away where
the structure is built in the graph). The output structure is the one the scripted
model returns on the example inputs. Non-tensor module attributes (ints, flags,
lists of names) read by the code become constants: the exported model is frozen.

Every node records the module scope that ran it (from TorchScript's inlined call
stack) and its source line when that line is the user's code. Scripted graphs carry
no tensor types: ``infer-types`` runs on the captured graph to give them.
"""
from __future__ import annotations

import re
import warnings
from typing import Any

import torch

from dexport.frontends.base import Frontend, register_frontend
from dexport.frontends.jit_importer import JitImporter
from dexport.ir.errors import CaptureError, DexportError
from dexport.ir.graph import CONSTANT, Graph, Meta, Value
from dexport.ir.ops import type_of_constant
from dexport.ir.schema import ConstSchema, DictSchema, Schema, SequenceSchema, TensorSchema, flatten
from dexport.ir.types import ANY, ListType, TensorType, TupleType

# `File "/path/to/file.py", line 12` at the top of a TorchScript source range.
_RANGE_HEAD = re.compile(r'File "([^"]+)", line (\d+)')


def script(model: torch.nn.Module, example_inputs: Any, *, method: str = "forward") -> Graph:
    """Capture ``model.<method>(*example_inputs)`` as an IR graph by scripting."""
    from dexport.frontends.tracing import _is_user_file, relative_source_path  # one notion of "user code"

    if not isinstance(model, torch.nn.Module):
        raise CaptureError(f"capture by scripting takes an nn.Module, got {type(model).__name__}",
                           hint="wrap the function in an nn.Module whose forward calls it")
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    scripted = compile_method(model, method)
    with torch.no_grad():
        try:
            example_outputs = getattr(scripted, method)(*example_inputs)
        except Exception as exc:
            raise CaptureError(f"the scripted model failed on the example inputs: {type(exc).__name__}: "
                               f"{_first_lines(str(exc))}",
                               hint="run the model eagerly on the same inputs to reproduce; the scripted "
                                    "code must accept what the eager model accepts") from exc
    jit_graph = scripted._c._get_method(method).graph.copy()
    torch._C._jit_pass_inline(jit_graph)
    # The lint-like cleanups TorchScript runs before executing a graph: constants
    # pooled, dead code gone (nothing here changes what the graph computes).
    torch._C._jit_pass_constant_propagation(jit_graph)
    torch._C._jit_pass_dce(jit_graph)

    def source_of(range_text: str) -> str:
        m = _RANGE_HEAD.search(range_text)
        return (f"{relative_source_path(m.group(1))}:{m.group(2)}"
                if m and not m.group(1).startswith("<") and _is_user_file(m.group(1)) else "")

    flat_inputs, input_schema = flatten(example_inputs, "inputs")
    flat_outputs, output_schema = flatten(example_outputs, "outputs")
    importer = JitImporter(model, "", source_of, example_shapes=False, scripted=True)
    jit_inputs = list(jit_graph.inputs())[1:]
    if len(jit_inputs) != len(input_schema.items):
        raise CaptureError(f"the scripted {method} takes {len(jit_inputs)} arguments, the example gives "
                           f"{len(input_schema.items)}",
                           hint="pass one example value per positional argument (defaults are not filled in)")
    graph = importer.convert(jit_graph, bind_inputs=lambda g: _bind_inputs(g, input_schema, flat_inputs))
    _flatten_returns(graph, output_schema)
    graph.input_schema, graph.output_schema = input_schema, output_schema
    names = _argument_names(scripted, method)
    for value, name in zip(graph.inputs, _leaf_names(input_schema, names)):
        value.name_hint = name
    # Scripted graphs carry no tensor types; fake propagation gives them (from the
    # inputs' symbolic types), so the first canonicalize already folds rank and dtype
    # checks such as torch.nn.functional's `if input.dim() != 4: raise ...`.
    from dexport.passes import PassManager
    PassManager("infer-types").run(graph)
    return graph


def compile_method(model: torch.nn.Module, method: str) -> torch.jit.ScriptModule:
    """``torch.jit.script`` compiling ``method`` of the top module (and what it calls),
    with torch's compile errors as a CaptureError at the user's source line."""
    if isinstance(model, torch.jit.ScriptModule):
        if not hasattr(model, method):
            raise CaptureError(f"the scripted module has no method {method!r}",
                               hint="script the model with that method exported (@torch.jit.export)")
        return model
    if not callable(getattr(model, method, None)):
        raise CaptureError(f"{type(model).__name__} has no method {method!r} to script")
    from torch.jit import _recursive

    def stubs(module):
        if module is model:
            return [_recursive.make_stub_from_method(module, method)]
        return _recursive.infer_methods_to_compile(module)
    with warnings.catch_warnings():
        # torch 2.13 deprecates torch.jit.script; the user cannot act on that here.
        warnings.filterwarnings("ignore", r".*torch\.jit\.script", DeprecationWarning)
        try:
            return _recursive.create_script_module(model, stubs)
        except DexportError:
            raise
        except Exception as exc:
            raise _compile_error(exc) from exc


def _compile_error(exc: Exception) -> CaptureError:
    """torch.jit.script's message names the unsupported construct and its source range."""
    from dexport.frontends.tracing import _is_user_file, relative_source_path
    text = str(exc).strip()
    sources = [f"{relative_source_path(f)}:{line}" for f, line in _RANGE_HEAD.findall(text) if _is_user_file(f)]
    return CaptureError(
        f"torch.jit.script cannot compile the model: {_first_lines(text, 12)}",
        source=sources[0] if sources else None,
        hint="change the code at that line to TorchScript's subset (type annotations for non-tensor "
             "arguments, no **kwargs or dynamic getattr; training-only code can be marked "
             "@torch.jit.unused), or capture with method='tracing'")


def _first_lines(text: str, n: int = 4) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines[:n]) + ("\n..." if len(lines) > n else "")


# --------------------------------------------------------------------------- structured inputs and outputs

def _bind_inputs(graph: Graph, schema: SequenceSchema, flat: list[torch.Tensor]) -> list[Value]:
    """One IR value per argument of the scripted method, built from the graph's flat
    tensor inputs (typed from the example tensors)."""
    leaves = iter(flat)
    symbols: dict[tuple[str, int], str] = {}

    def build(s: Schema) -> Value:
        if isinstance(s, TensorSchema):
            return graph.add_input(_symbolic_type(next(leaves), symbols))
        if isinstance(s, ConstSchema):
            return _constant(graph, s.value)
        if isinstance(s, SequenceSchema):
            items = [build(item) for item in s.items]
            if s.kind == "tuple":
                return _node(graph, "prim::TupleConstruct", items, TupleType(tuple(v.type for v in items)))
            return _node(graph, "prim::ListConstruct", items, ListType(_common(items)))
        if isinstance(s, DictSchema):
            parts = [x for k, v in zip(s.keys, s.values) for x in (_constant(graph, k), build(v))]
            return _node(graph, "prim::DictConstruct", parts, ANY)
        raise CaptureError(f"scripting cannot take a {s.describe()} argument yet",
                           hint="pass tensors, numbers, or tuples/lists/dicts of them; records such as "
                                "Instances go through dexport.scripting_with_instances")
    return [build(item) for item in schema.items]


def _symbolic_type(example: torch.Tensor, symbols: dict[tuple[str, int], str]) -> TensorType:
    """The example's type with the batch and spatial dims symbolic (N, H, W: the first
    dim and, from rank 3, the last two), as scripted code computes every size from its
    inputs. Dims of one role and one example size share a symbol (images and their
    sizes share N); channel-like dims stay the example's."""
    from dexport.frontends.probes import _role
    shape: list[int | str] = list(example.shape)
    for d, size in enumerate(example.shape):
        role = _role(d, example.dim())
        if role is not None:
            key = (role, int(size))
            if key not in symbols:
                taken = sum(1 for r, _ in symbols if r == role)
                symbols[key] = role if taken == 0 else f"{role}{taken}"
            shape[d] = symbols[key]
    return TensorType(example.dtype, tuple(shape))


def _flatten_returns(graph: Graph, schema: Schema) -> None:
    """Make the graph return the flat tensors of its one structured result."""
    (result,) = graph.block.returns
    flat: list[Value] = []

    def take(s: Schema, value: Value) -> None:
        if isinstance(s, TensorSchema):
            flat.append(value)
        elif isinstance(s, ConstSchema):
            pass
        elif isinstance(s, SequenceSchema):
            for i, item in enumerate(s.items):
                if s.kind == "tuple":
                    part = _node(graph, "prim::TupleIndex", [value, _constant(graph, i)], _item_type(value, i))
                else:
                    part = _node(graph, "aten::__getitem__.t", [value, _constant(graph, i)], ANY)
                take(item, part)
        elif isinstance(s, DictSchema):
            for key, item in zip(s.keys, s.values):
                op = "aten::__getitem__.Dict_str" if isinstance(key, str) else "aten::__getitem__.Dict_int"
                take(item, _node(graph, op, [value, _constant(graph, key)], ANY))
        else:
            raise CaptureError(f"scripting cannot return a {s.describe()} yet",
                               hint="return tensors or tuples/lists/dicts of them; records such as Instances "
                                    "go through dexport.scripting_with_instances")
    take(schema, result)
    graph.block.set_returns(flat)


def _node(graph: Graph, op: str, inputs: list[Value], type_) -> Value:
    return graph.create_node(op, inputs, [type_], None, Meta(), block=graph.block).output


def _constant(graph: Graph, value: Any) -> Value:
    return graph.create_node(CONSTANT, [], [type_of_constant(value)], {"value": value}, Meta(),
                             block=graph.block).output


def _common(values: list[Value]):
    types = {v.type for v in values}
    if len(types) == 1:
        return types.pop()
    return TensorType() if all(isinstance(t, TensorType) for t in types) else ANY


def _item_type(value: Value, i: int):
    t = value.type
    return t.elems[i] if isinstance(t, TupleType) and i < len(t.elems) else ANY


def _argument_names(scripted: torch.jit.ScriptModule, method: str) -> list[str]:
    try:
        schema = scripted._c._get_method(method).schema
    except RuntimeError:
        return []
    return [a.name for a in schema.arguments[1:]]


def _leaf_names(schema: SequenceSchema, arg_names: list[str]) -> list[str]:
    from dexport.frontends.tracing import _leaf_paths
    return _leaf_paths(schema, arg_names)


class ScriptingFrontend(Frontend):
    """``torch.jit.script`` of ``forward`` or of the method named by ``inference_func``."""
    name = "scripting"
    needs_probes = False

    def capture(self, model, example_inputs, *, inference_func=None) -> Graph:
        if inference_func is not None and not isinstance(inference_func, str):
            raise CaptureError("capture by scripting compiles a method of the model; a Python "
                               "inference function cannot be compiled with it",
                               hint="pass inference_func as the name of the model's method to call "
                                    "(e.g. 'forward_batched'), or capture with method='tracing'")
        return script(model, example_inputs, method=inference_func or "forward")


register_frontend(ScriptingFrontend())
