"""The standard-ONNX backend: IR graph -> ``onnx.ModelProto``.

Emission walks the top block once, in order, and calls one *lowering* per IR
node. A lowering is registered for one or more op names and turns a node into
ONNX nodes through a ``LoweringContext``::

    @lowering("aten::relu")
    def _relu(ctx, node):
        return [ctx.op("Relu", ctx.input(node, 0))]

It returns one entry per IR output: the ONNX name of the output tensor, or, for
an IR list (``list[Tensor]`` from ``aten::unbind``, ``list[int]``), ``ctx.seq``
of the element entries. Lowerings for ``aten::*``/``prim::*``
live in ``dexport.backends.onnx_aten`` (recurrent layers in ``onnx_rnn``), those for
``dexport::*`` in ``dexport.backends.onnx_detection``; all are imported on first use.

How IR values map to ONNX
-------------------------
* tensors -> tensors; IR ``int`` / ``float`` / ``bool`` -> 0-d int64 / float64 / bool
  tensors (so shape arithmetic stays dynamic: ``aten::size`` is Shape+Gather, never
  a traced number); ``list[int]`` -> a 1-D int64 tensor when an op reads it as one
  (constants become one initializer, dynamic elements Unsqueeze+Concat);
  ``list[Tensor]`` -> a Python list of names, never an ONNX value.
* ``prim::Constant`` and ``prim::Param`` emit nothing by themselves: they become
  initializers the first time an op reads them as tensors (params keep their
  names), so constants used only as attributes cost nothing.

The context API (``ctx``)
-------------------------
``ctx.input(node, i, dtype=None)``   ONNX name of input ``i`` (cast to ``dtype``)
``ctx.inputs(node, i)``              names of a ``list[Tensor]`` input (None for None)
``ctx.is_const(node, i)`` / ``ctx.const(node, i)``
                                     whether input ``i`` is a compile-time constant
                                     (prim::Constant, or a list of them) / its value
                                     (raises a DexportError naming the node if not)
``ctx.is_none(node, i)``             input ``i`` is the constant None
``ctx.items(node, i, count)``        the element entries of a list/tuple input
``ctx.seq(entries)`` / ``ctx.const_entry(value)`` / ``ctx.lazy(make)``
                                     entries a lowering may return besides names: an
                                     IR list, a constant, a value made on first read
``ctx.emit(op_type, inputs, num_outputs=1, domain="", **attrs) -> list[str]``
``ctx.op(op_type, *inputs, **attrs) -> str``  the same for one output
``ctx.constant(value, dtype) -> str``  an initializer (deduplicated by content)
``ctx.int64(value) -> str``          int64 initializer (0-d for an int, 1-D for a list)
``ctx.cast(name, dtype)``            Cast unless ``name`` is known to be ``dtype``
``ctx.shape(name)`` / ``ctx.dim(name, d)``   Shape / one dim as a 0-d int64
``ctx.unsqueeze(name, axes)`` / ``ctx.squeeze(name, axes)`` / ``ctx.reduce(op, name, axes, keepdims)``
                                     opset-independent forms
``ctx.materialize(entry, dtype=None)`` the ONNX name of any entry (made on demand)
``ctx.typed(name, dtype)`` / ``ctx.same_dtype(src, out)`` / ``ctx.dtypes``
                                     record what an emitted name holds (lets casts be
                                     skipped); names returned for IR outputs are recorded
                                     from the IR type automatically
``ctx.param(name)`` / ``ctx.tensor_proto(tensor)`` / ``ctx.fresh(base)``
                                     a parameter's initializer / a TensorProto for tensor
                                     attributes / a fresh unique name (for subgraphs)
``ctx.rank(node, i)`` / ``ctx.dtype(node, i)`` / ``ctx.out_dtype(node, k=0)`` / ``ctx.out_rank``
                                     from the IR types (ranks and dtypes are facts even
                                     in traced graphs; int dims are not, so no helper
                                     hands them out)
``ctx.fail(what, hint=None)``        a DexportError naming the node being lowered
``ctx.opset``                        the default-domain opset being emitted
"""
from __future__ import annotations

import functools
import importlib.metadata
import warnings
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from dexport.ir.errors import DexportError, UnsupportedOpsError
from dexport.ir.graph import Graph, Node, Value
from dexport.ir.types import ListType, OptionalType, ScalarType, TensorType, Type
from dexport.backends.base import (Backend, Emission, Intermediates, LoweringTable, MissingOp, Option,
                                   TensorIO, missing_ops, register_backend, unsupported_ops_error)

Lowering = Callable[["LoweringContext", Node], list]

# The standard-ONNX lowering table; the modules holding its lowerings import this one,
# so the table imports them on first lookup.
LOWERINGS = LoweringTable("onnx", modules=("dexport.backends.onnx_aten", "dexport.backends.onnx_detection",
                                              "dexport.backends.onnx_control_flow", "dexport.backends.onnx_rnn"))
lowering = LOWERINGS.register  # @lowering("aten::relu") registers fn(ctx, node) -> list

MIN_OPSET, MAX_OPSET = 17, 21

TORCH_TO_ONNX = {
    torch.float32: TensorProto.FLOAT, torch.float64: TensorProto.DOUBLE,
    torch.float16: TensorProto.FLOAT16, torch.bfloat16: TensorProto.BFLOAT16,
    torch.int8: TensorProto.INT8, torch.int16: TensorProto.INT16,
    torch.int32: TensorProto.INT32, torch.int64: TensorProto.INT64,
    torch.uint8: TensorProto.UINT8, torch.bool: TensorProto.BOOL,
}
# The tensor an IR scalar becomes.
SCALAR_DTYPES = {"int": torch.int64, "float": torch.float64, "bool": torch.bool}


def has_lowering(op: str) -> bool:
    return op in LOWERINGS


# --------------------------------------------------------------------------- support check

def check_support(graph: Graph, table: LoweringTable = LOWERINGS) -> list[MissingOp]:
    """Every op of ``graph`` (nested blocks included) without a lowering in ``table``,
    sorted by name: ``(op, count, [(scope, source), ...])`` with each distinct place
    once, in graph order."""
    return missing_ops(graph, table.__contains__)


def _unsupported_error(missing, opset: int) -> UnsupportedOpsError:
    return unsupported_ops_error(
        missing, f"ONNX lowering (opset {opset})",
        hint="the 'decompose' pass (in dexport export's default pipeline) rewrites the ops "
             "torch can decompose into lowered ones; for these, replace the op in the model, "
             "or register a lowering with @dexport.backends.onnx.lowering('<op>') returning "
             "the ONNX names of the node's outputs")


# --------------------------------------------------------------------------- value entries

class _Const:
    """A compile-time constant; it becomes an initializer only when read as a tensor."""
    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


class _Seq:
    """An IR list/tuple: its element entries, and its 1-D tensor form once made."""
    __slots__ = ("items", "tensors")

    def __init__(self, items: Sequence):
        self.items = list(items)
        self.tensors: dict[torch.dtype | None, str] = {}


class _Lazy:
    """An ONNX value made on first use (parameters: an initializer per used param)."""
    __slots__ = ("make", "name")

    def __init__(self, make: Callable[[], str]):
        self.make = make
        self.name: str | None = None


def _dtype_of_type(typ: Type) -> torch.dtype | None:
    if isinstance(typ, TensorType):
        return typ.dtype
    if isinstance(typ, ScalarType):
        return SCALAR_DTYPES.get(typ.kind)
    return None


def _tensor_proto(name: str, t: torch.Tensor) -> TensorProto:
    t = t.detach().cpu().contiguous()
    if t.dtype not in TORCH_TO_ONNX:
        raise DexportError(f"tensor {name!r} has dtype {t.dtype}, which ONNX cannot hold",
                           hint="cast it to a supported dtype before export")
    proto = TensorProto()
    proto.name = name
    proto.data_type = TORCH_TO_ONNX[t.dtype]
    proto.dims.extend(int(d) for d in t.shape)
    proto.raw_data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return proto


def _as_tensor(value: Any, dtype: torch.dtype | None) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if dtype is not None else value
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
        return value.to(dtype) if dtype is not None else value
    if dtype is None:
        flat = value if isinstance(value, (list, tuple)) else [value]
        dtype = (torch.bool if all(isinstance(v, bool) for v in flat) and flat else
                 torch.int64 if all(isinstance(v, int) for v in flat) else torch.float64)
    return torch.tensor(value, dtype=dtype)


# --------------------------------------------------------------------------- context

class LoweringContext:
    """The state of one emission: the ONNX nodes and initializers made so far, the
    IR value -> entry map, and fresh-name allocation (a counter, so the same graph
    always gets the same names)."""

    def __init__(self, graph: Graph, opset: int, reserved: Iterable[str] = (),
                 table: LoweringTable = LOWERINGS):
        self.graph = graph
        self.opset = opset
        self.table = table
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.domains: dict[str, int] = {}
        self.dtypes: dict[str, torch.dtype] = {}   # ONNX name -> dtype, where known
        self.env: dict[Value, Any] = {}
        self.current: Node | None = None
        self._used: set[str] = set(reserved)
        self._counter = 0
        self._constants: dict[tuple, str] = {}

    # -- names ---------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        name = base
        while name in self._used:
            self._counter += 1
            name = f"{base}_{self._counter}"
        self._used.add(name)
        return name

    def _next_id(self) -> int:
        self._counter += 1
        return self._counter

    # -- reading inputs ------------------------------------------------------------------
    def input(self, node: Node, i: int, dtype: torch.dtype | None = None) -> str:
        """The ONNX name of input ``i`` (a tensor, or a 0-d tensor for an IR scalar, or a
        1-D tensor for a list of scalars), cast to ``dtype`` when given."""
        value = node.inputs[i]
        typ = value.type
        if isinstance(typ, ListType) and isinstance(typ.elem, (TensorType, OptionalType)):
            raise self.fail(f"input {i} of {node.op} is a list of tensors, read as one tensor",
                            "lowerings read list[Tensor] inputs with ctx.inputs(node, i)")
        return self.materialize(self.env[value], dtype)

    def inputs(self, node: Node, i: int) -> list[str | None]:
        """The element names of a ``list[Tensor]`` input (None where an element is None)."""
        entry = self.env[node.inputs[i]]
        if not isinstance(entry, _Seq):
            raise self.fail(f"input {i} of {node.op} is not a list of known length",
                            "lists read element-wise must be built by prim::ListConstruct "
                            "or an op with a fixed number of results")
        return [None if isinstance(e, _Const) and e.value is None else self.materialize(e)
                for e in entry.items]

    def is_const(self, node: Node, i: int) -> bool:
        return _is_const(self.env[node.inputs[i]])

    def const(self, node: Node, i: int) -> Any:
        """The Python value of input ``i`` when it is a compile-time constant."""
        entry = self.env[node.inputs[i]]
        if not _is_const(entry):
            raise self.fail(f"input {i} of {node.op} must be a compile-time constant for ONNX, "
                            f"but it is computed at run time",
                            "make the argument a constant in the model (or fold it with the "
                            "'fold-constants' pass), or extend this op's lowering")
        return _const_value(entry)

    def is_none(self, node: Node, i: int) -> bool:
        entry = self.env[node.inputs[i]]
        return isinstance(entry, _Const) and entry.value is None

    def materialize(self, entry: Any, dtype: torch.dtype | None = None) -> str:
        """The ONNX tensor name of an entry, made (initializer, Concat) on demand."""
        if isinstance(entry, str):
            return self.cast(entry, dtype) if dtype is not None else entry
        if isinstance(entry, _Lazy):
            if entry.name is None:
                entry.name = entry.make()
            return self.materialize(entry.name, dtype)
        if isinstance(entry, _Const):
            if entry.value is None or not isinstance(entry.value, (bool, int, float, list, tuple,
                                                                   torch.Tensor)):
                raise self.fail(f"the constant {entry.value!r} cannot be an ONNX tensor",
                                "this argument must be read with ctx.const, not ctx.input")
            return self.constant(entry.value, dtype)
        if isinstance(entry, _Seq):
            return self._seq_tensor(entry, dtype)
        raise self.fail(f"no ONNX value for {entry!r}")

    def _seq_tensor(self, seq: _Seq, dtype: torch.dtype | None) -> str:
        """A list of scalars as one 1-D tensor: an initializer if every element is
        constant, else each run of constants as one initializer and each dynamic
        element unsqueezed, all concatenated."""
        if dtype in seq.tensors:
            return seq.tensors[dtype]
        if _is_const(seq):
            name = self.constant(_const_value(seq), dtype)
        else:
            elem_dtype = dtype or next(self.dtypes.get(self.materialize(e)) for e in seq.items
                                       if not isinstance(e, _Const))
            parts, run = [], []
            for e in seq.items:
                if isinstance(e, _Const):
                    run.append(e.value)
                    continue
                if run:
                    parts.append(self.constant(run, elem_dtype))
                    run = []
                parts.append(self.unsqueeze(self.materialize(e, elem_dtype), [0]))
            if run:
                parts.append(self.constant(run, elem_dtype))
            name = parts[0] if len(parts) == 1 else self.op("Concat", *parts, axis=0)
            self.dtypes[name] = elem_dtype
        seq.tensors[dtype] = name
        return name

    # -- making ONNX values -------------------------------------------------------------
    def emit(self, op_type: str, inputs: Sequence[str], num_outputs: int = 1, domain: str = "",
             **attrs: Any) -> list[str]:
        """Append one ONNX node; returns its output names. An input "" is an omitted
        optional input. Attributes are sorted by name (onnx.helper does this). A
        non-default ``domain`` (custom operators) is imported at version 1."""
        k = self._next_id()
        outputs = [self.fresh(f"{op_type}_{k}" + (f"_o{j}" if j else "")) for j in range(num_outputs)]
        node = self.current
        prefix = f"{node.meta.scope}/" if node is not None and node.meta.scope else ""
        proto = helper.make_node(op_type, list(inputs), outputs, name=f"{prefix}{op_type}_{k}",
                                 domain=domain or None, **attrs)
        if node is not None and node.meta.source:
            proto.doc_string = node.meta.source
        if domain:
            self.domains.setdefault(domain, 1)
        self.nodes.append(proto)
        return outputs

    def op(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        return self.emit(op_type, inputs, 1, **attrs)[0]

    def constant(self, value: Any, dtype: torch.dtype | None = None) -> str:
        """An initializer holding ``value`` (a number, a list of numbers, a tensor or an
        ndarray) as ``dtype``; equal constants share one initializer."""
        t = _as_tensor(value, dtype)
        t = t.detach().cpu().contiguous()
        key = (t.dtype, tuple(t.shape), t.reshape(-1).view(torch.uint8).numpy().tobytes())
        name = self._constants.get(key)
        if name is None:
            name = self._constants[key] = self.fresh(f"const_{len(self._constants)}")
            self.initializers.append(_tensor_proto(name, t))
            self.dtypes[name] = t.dtype
        return name

    def param(self, name: str) -> str:
        """The initializer of ``graph.params[name]``, named ``name``, made once."""
        if name not in self.dtypes:
            t = self.graph.params[name]
            self.initializers.append(_tensor_proto(name, t))
            self.dtypes[name] = t.dtype
        return name

    @staticmethod
    def tensor_proto(value: torch.Tensor, name: str = "value") -> TensorProto:
        """A TensorProto (for tensor attributes such as ConstantOfShape's value)."""
        return _tensor_proto(name, value)

    def int64(self, value: int | Sequence[int]) -> str:
        return self.constant(value, torch.int64)

    def cast(self, name: str, dtype: torch.dtype) -> str:
        if self.dtypes.get(name) == dtype:
            return name
        out = self.op("Cast", name, to=TORCH_TO_ONNX[dtype])
        self.dtypes[out] = dtype
        return out

    def typed(self, name: str, dtype: torch.dtype | None) -> str:
        """Record that ``name`` holds ``dtype`` (lets later casts be skipped)."""
        if dtype is not None:
            self.dtypes.setdefault(name, dtype)
        return name

    def shape(self, name: str) -> str:
        return self.typed(self.op("Shape", name), torch.int64)

    def dim(self, name: str, d: int) -> str:
        """Size of dim ``d`` (non-negative) of ``name`` as a 0-d int64, computed at run time."""
        return self.typed(self.op("Gather", self.shape(name), self.int64(d), axis=0), torch.int64)

    def unsqueeze(self, name: str, axes: Sequence[int]) -> str:
        return self.same_dtype(name, self.op("Unsqueeze", name, self.int64(list(axes))))

    def squeeze(self, name: str, axes: Sequence[int]) -> str:
        return self.same_dtype(name, self.op("Squeeze", name, self.int64(list(axes))))

    def reduce(self, op_type: str, name: str, axes: Sequence[int] | None, keepdims: bool) -> str:
        """Reduce* over ``axes`` (None: all); axes are an input from opset 18 (13 for ReduceSum)."""
        if axes is None:
            return self.op(op_type, name, keepdims=int(keepdims))
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, name, self.int64(list(axes)), keepdims=int(keepdims))
        return self.op(op_type, name, axes=list(axes), keepdims=int(keepdims))

    def same_dtype(self, src: str, out: str) -> str:
        """Record that ``out`` holds what ``src`` holds (reshapes, gathers, slices)."""
        return self.typed(out, self.dtypes.get(src))

    # -- IR facts ------------------------------------------------------------------------
    def rank(self, node: Node, i: int) -> int:
        typ = node.inputs[i].type
        if isinstance(typ, ScalarType):
            return 0
        if not isinstance(typ, TensorType) or typ.rank is None:
            raise self.fail(f"input {i} of {node.op} has no known rank ({typ}); the ONNX "
                            f"lowering needs it",
                            "capture with example inputs so every tensor has a rank")
        return typ.rank

    def dtype(self, node: Node, i: int) -> torch.dtype:
        dtype = _dtype_of_type(node.inputs[i].type)
        if dtype is None:
            raise self.fail(f"input {i} of {node.op} has no known dtype ({node.inputs[i].type})")
        return dtype

    def out_dtype(self, node: Node, k: int = 0) -> torch.dtype:
        dtype = _dtype_of_type(node.outputs[k].type)
        if dtype is None:
            raise self.fail(f"output {k} of {node.op} has no known dtype ({node.outputs[k].type})")
        return dtype

    def out_rank(self, node: Node, k: int = 0) -> int:
        typ = node.outputs[k].type
        if isinstance(typ, ScalarType):
            return 0
        if not isinstance(typ, TensorType) or typ.rank is None:
            raise self.fail(f"output {k} of {node.op} has no known rank ({typ})")
        return typ.rank

    # -- sequences -----------------------------------------------------------------------
    @staticmethod
    def seq(items: Sequence) -> _Seq:
        """The entry of an IR list/tuple output from its element entries (names or
        other entries), e.g. ``return [ctx.seq(ctx.emit("Split", ..., n))]``."""
        return _Seq(items)

    @staticmethod
    def const_entry(value: Any) -> _Const:
        """The entry of an output that is a compile-time constant."""
        return _Const(value)

    @staticmethod
    def entry_is_const(entry: Any) -> bool:
        return _is_const(entry)

    @staticmethod
    def entry_value(entry: Any) -> Any:
        """The Python value of a constant entry (see ``entry_is_const``)."""
        return _const_value(entry)

    @staticmethod
    def lazy(make: Callable[[], str]) -> _Lazy:
        """The entry of an output made only if something reads it (``make() -> name``)."""
        return _Lazy(make)

    def items(self, node: Node, i: int, count: int) -> list:
        """The ``count`` element entries of list/tuple input ``i``; a list held as a 1-D
        tensor (``aten::size``) is split into 0-d elements."""
        entry = self.env[node.inputs[i]]
        if isinstance(entry, _Seq):
            return list(entry.items)
        if isinstance(entry, _Const) and isinstance(entry.value, (list, tuple)):
            return [_Const(v) for v in entry.value]
        name = self.materialize(entry)
        dtype = self.dtypes.get(name)
        return [self.typed(self.op("Gather", name, self.int64(k), axis=0), dtype)
                for k in range(count)]

    # -- errors --------------------------------------------------------------------------
    def fail(self, what: str, hint: str | None = None) -> DexportError:
        node = self.current
        if node is None:
            return DexportError(what, hint=hint)
        from dexport.ir.printer import format_context
        graph = node.graph
        return UnsupportedOpsError(what, op=node.op, scope=node.meta.scope, source=node.meta.source,
                                   hint=hint, context=format_context(graph, node) if graph else None)

    # -- walking -------------------------------------------------------------------------
    def lower_block_nodes(self, nodes: Iterable[Node]) -> None:
        for node in nodes:
            self.lower_node(node)

    def lower_node(self, node: Node) -> None:
        outer, self.current = self.current, node
        try:
            results = self.table[node.op](self, node)
            if len(results) != len(node.outputs):
                raise self.fail(f"the ONNX lowering of {node.op} gave {len(results)} results for "
                                f"{len(node.outputs)} outputs", "fix the lowering")
            for value, entry in zip(node.outputs, results):
                if isinstance(entry, str):
                    self.typed(entry, _dtype_of_type(value.type))
                self.env[value] = entry
        finally:
            self.current = outer


def _is_const(entry: Any) -> bool:
    if isinstance(entry, _Const):
        return True
    return isinstance(entry, _Seq) and all(_is_const(e) for e in entry.items)


def _const_value(entry: Any) -> Any:
    if isinstance(entry, _Const):
        return entry.value
    return [_const_value(e) for e in entry.items]


# --------------------------------------------------------------------------- emission

@functools.lru_cache(maxsize=None)
def runtime_ir_version() -> int:
    """The highest ONNX IR version both the onnx package and the installed onnxruntime
    read (probed once with a one-node model: onnxruntime has no API that says)."""
    import onnxruntime
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    for version in range(onnx.IR_VERSION, 7, -1):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", MIN_OPSET)],
                                  ir_version=version)
        try:
            onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        except Fail:
            continue
        return version
    return 8  # the first IR version that opset 17 allows


def _dims(typ: Type, mode: Any, io_name: str, fallback: str, static_ok: bool) -> list:
    """The declared dims of a graph input/output: a symbol where the IR has one, a
    number only where it is proven (or the user asked for static shapes), else a
    fresh per-tensor name."""
    if isinstance(typ, ScalarType):
        return []
    shape = typ.shape
    axes = mode.get(io_name) if isinstance(mode, dict) else None
    if isinstance(axes, (list, tuple)):
        axes = {a: f"{io_name}_dim{a}" for a in axes}
    dims = []
    for d, dim in enumerate(shape):
        if axes is not None:
            dims.append(axes[d] if d in axes else dim if isinstance(dim, int) else None)
        elif isinstance(dim, str) and dim != "?":
            dims.append(dim)
        elif isinstance(dim, int) and (static_ok or mode is None or isinstance(mode, dict)):
            dims.append(dim)
        else:
            dims.append(f"{fallback}_dim{d}")
    return dims


def _io_type(ctx: LoweringContext, value: Value, what: str) -> torch.dtype:
    typ = value.type
    dtype = _dtype_of_type(typ)
    ok = (isinstance(typ, TensorType) and typ.shape is not None) or isinstance(typ, ScalarType)
    if dtype is None or not ok or dtype not in TORCH_TO_ONNX:
        raise DexportError(f"graph {what} of type {typ} cannot be an ONNX {what}",
                           hint="ONNX graph inputs/outputs are tensors with a known dtype and "
                                "rank: flatten structured values with the graph's schemas and "
                                "capture with example inputs")
    return dtype


def emit_onnx(graph: Graph, *, opset: int = 17, input_names: Sequence[str] | None = None,
              output_names: Sequence[str] | None = None, dynamic_axes: Any = "auto",
              check: bool = True, value_names: dict[Value, str] | None = None,
              table: LoweringTable = LOWERINGS) -> onnx.ModelProto:
    """Lower ``graph`` to a standard ONNX model.

    ``dynamic_axes``: ``"auto"`` declares each graph input/output dim as the IR's
    symbol (``N``, ``H``), as a number only when proven static (the graph's dims are
    not example shapes), else as a per-tensor symbol ``input0_dim2`` / ``output1_dim0``;
    ``None`` declares every int dim as that number (fixed-shape models); a dict
    ``{io_name: {axis: symbol}}`` (or ``{io_name: [axis, ...]}``) names those axes, as
    torch.onnx.export does, fixing the others. Traced sizes never reach the graph's
    computation, whatever the declaration. ``check`` runs the ONNX checker with full
    shape inference, which a correct lowering always passes.
    ``value_names``: a dict filled with IR value -> ONNX name for every output of a
    top-block node that became an ONNX value of the top graph (a tensor, or the 0-d
    tensor of a scalar); constants never read as tensors, lists and values inside
    If/Loop bodies are left out. Tools that compare the two graphs value by value
    (``dexport.bisect``) read it. ``table``: the lowerings to use (a table that inherits
    this backend's, such as a flavour with extra ops).
    Raises UnsupportedOpsError listing every op without a lowering, before emitting."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise DexportError(f"opset {opset} is not supported", hint=f"use {MIN_OPSET}..{MAX_OPSET}")
    if not (dynamic_axes is None or dynamic_axes == "auto" or isinstance(dynamic_axes, dict)):
        raise DexportError(f"dynamic_axes={dynamic_axes!r} is not understood",
                           hint="use 'auto', None (static) or {io_name: {axis: symbol}}")
    missing = check_support(graph, table)
    if missing:
        raise _unsupported_error(missing, opset)
    in_names = _io_names(graph.inputs, input_names, "input", use_hints=True, taken=graph.params)
    out_names = _io_names(graph.outputs, output_names, "output", use_hints=False, taken=graph.params)
    clash = sorted((set(in_names) & set(out_names)) | (set(in_names + out_names) & set(graph.params)))
    if clash:
        raise DexportError(f"names used twice (inputs, outputs and parameters share one namespace): "
                           f"{clash}", hint="give distinct input_names and output_names")
    ctx = LoweringContext(graph, opset, reserved=[*in_names, *out_names, *graph.params], table=table)
    static_ok = not graph.example_shapes

    inputs = []
    for k, (value, name) in enumerate(zip(graph.inputs, in_names)):
        dtype = _io_type(ctx, value, "input")
        inputs.append(helper.make_tensor_value_info(
            name, TORCH_TO_ONNX[dtype], _dims(value.type, dynamic_axes, name, f"input{k}", static_ok)))
        ctx.dtypes[name] = dtype
        ctx.env[value] = name
    ctx.lower_block_nodes(graph.block.nodes)

    outputs = []
    renames: dict[str, str] = {}
    produced = {o for n in ctx.nodes for o in n.output}
    for k, (value, name) in enumerate(zip(graph.outputs, out_names)):
        dtype = _io_type(ctx, value, "output")
        inner = ctx.materialize(ctx.env[value], dtype)
        if inner in produced and inner not in renames:
            renames[inner] = name  # the producing node writes the output directly
        else:
            ctx.nodes.append(helper.make_node("Identity", [inner], [name], name=f"Identity_{name}"))
        outputs.append(helper.make_tensor_value_info(
            name, TORCH_TO_ONNX[dtype], _dims(value.type, dynamic_axes, name, f"output{k}", static_ok)))
    if renames:
        _rename(ctx.nodes, renames)
    if value_names is not None:
        for node in graph.block.nodes:
            for value in node.outputs:
                entry = ctx.env.get(value)
                name = entry.name if isinstance(entry, _Lazy) else entry
                if isinstance(name, str):
                    value_names[value] = renames.get(name, name)

    onnx_graph = helper.make_graph(ctx.nodes, "dexport", inputs, outputs, ctx.initializers)
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v)
                                                 for d, v in sorted(ctx.domains.items())]
    model = helper.make_model(onnx_graph, opset_imports=opsets, producer_name="dexport",
                              producer_version=_version(),
                              ir_version=min(onnx.IR_VERSION, runtime_ir_version()))
    if check:
        check_model(model)
    return model


def _rename(nodes: Iterable[onnx.NodeProto], renames: dict[str, str]) -> None:
    """Rename values in ``nodes`` and in their subgraphs (If/Loop bodies read outer names)."""
    for n in nodes:
        for i, x in enumerate(n.input):
            n.input[i] = renames.get(x, x)
        for i, x in enumerate(n.output):
            n.output[i] = renames.get(x, x)
        for attr in n.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _rename(attr.g.node, renames)


def _io_names(values: Sequence[Value], given: Sequence[str] | None, kind: str,
              use_hints: bool, taken: Iterable[str]) -> list[str]:
    if given is not None:
        given = list(given)
        if len(given) != len(values) or len(set(given)) != len(given) or not all(given):
            raise DexportError(f"{len(given)} {kind} names for {len(values)} graph {kind}s "
                               f"(names must be distinct and non-empty)",
                               hint=f"pass one name per flattened {kind}")
        return given
    names: list[str] = []
    for k, v in enumerate(values):
        hint = v.name_hint if use_hints else None
        names.append(hint if hint and hint not in names and hint not in taken else f"{kind}{k}")
    if len(set(names)) != len(names):  # a hint equal to a later "inputK"
        names = [f"{kind}{k}" for k in range(len(values))]
    return names


def _version() -> str:
    try:
        return importlib.metadata.version("dexport")
    except importlib.metadata.PackageNotFoundError:
        return ""


def check_model(model: onnx.ModelProto) -> None:
    """The ONNX checker with full, strict shape inference (``full_check`` runs it with
    type checking in strict mode); failures become a DexportError (a failing emitted
    model is a lowering bug, not a user error)."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise DexportError(f"the emitted ONNX model is invalid: {err}",
                           hint="this is a bug in an ONNX lowering; the node name in the message "
                                "is '<module scope>/<OpType>_<k>'") from None


# --------------------------------------------------------------------------- onnxsim

def simplify(model: onnx.ModelProto, inputs: Sequence[np.ndarray] | None = None, *,
             rtol: float = 1e-4, atol: float = 1e-5) -> onnx.ModelProto:
    """``model`` simplified by onnxsim (constant folding, redundant-node removal),
    or ``model`` itself, with a warning that says why, when onnxsim fails or the
    simplified model gives different outputs on ``inputs`` (flat arrays, one per
    graph input; without them outputs are not compared). onnxsim's own random-input
    check is off: it would make the result depend on a random draw."""
    try:
        import onnxsim
        simplified, _ = onnxsim.simplify(model, check_n=0)
        check_model(simplified)
    except Exception as err:  # onnxsim raises many kinds; any of them means "keep the original"
        warnings.warn(f"onnxsim failed ({type(err).__name__}: {err}); keeping the unsimplified model",
                      stacklevel=2)
        return model
    if inputs is not None:
        before, after = run_onnx(model, inputs), run_onnx(simplified, inputs)
        for k, (a, b) in enumerate(zip(before, after)):
            if a.shape != b.shape or a.dtype != b.dtype or not np.allclose(a, b, rtol=rtol, atol=atol):
                warnings.warn(f"onnxsim changed output {k} ({model.graph.output[k].name}); keeping "
                              f"the unsimplified model", stacklevel=2)
                return model
    return simplified


def run_onnx(model: onnx.ModelProto, inputs: Sequence[Any]) -> list[np.ndarray]:
    """Run ``model`` in onnxruntime (CPU) on flat inputs (tensors or arrays)."""
    import onnxruntime
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {}
    for info, x in zip(session.get_inputs(), inputs):
        feed[info.name] = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return session.run(None, feed)


# --------------------------------------------------------------------------- the backend

class OnnxBackend(Backend):
    """Standard ONNX (``model.onnx``) run by plain onnxruntime."""
    name = "onnx"
    label = "ONNX"
    runtime = "onnxruntime"
    decompose_target = "onnx"  # decompose{target=onnx} rewrites exactly the ops this table lacks
    table = LOWERINGS
    options = (Option("opset", 17, f"ONNX opset, {MIN_OPSET}..{MAX_OPSET}"),
               Option("simplify", False, "run onnxsim on the emitted ONNX model"))
    dists = ("onnx", "onnxruntime")
    model_file = "model.onnx"

    def emit(self, graph: Graph, *, input_names=None, output_names=None, options) -> Emission:
        options = self.resolve_options(options)
        proto = emit_onnx(graph, opset=options["opset"], input_names=input_names, output_names=output_names)
        if options["simplify"]:
            proto = simplify(proto)
        return Emission({self.model_file: proto.SerializeToString()}, self.model_file,
                        [_declared(i) for i in proto.graph.input], [_declared(o) for o in proto.graph.output])

    def resolve_options(self, given) -> dict:
        options = super().resolve_options(given)
        if not (isinstance(options["opset"], int) and MIN_OPSET <= options["opset"] <= MAX_OPSET):
            raise DexportError(f"opset {options['opset']!r} is not supported",
                               hint=f"pass an opset in {MIN_OPSET}..{MAX_OPSET} (--opset)")
        return options

    # The manifest keeps its documented top-level keys for these two options.
    def manifest_fields(self, options) -> dict:
        return {"opset": options["opset"], "simplified": bool(options["simplify"])}

    def options_from_manifest(self, manifest) -> dict:
        return self.resolve_options({"opset": manifest.get("opset", 17),
                                     "simplify": bool(manifest.get("simplified", False))})

    def summary(self, options) -> str:
        return f"ONNX (opset {options['opset']})"

    def load(self, read, manifest, *, threads=None):
        from dexport.backends.onnx_runtime import OnnxRunner
        return OnnxRunner(read(manifest["model_file"]), threads=threads)

    def describe(self, read, manifest) -> dict:
        from dexport.backends.onnx_runtime import node_count
        return {"nodes": node_count(read(manifest["model_file"]))}

    def run_intermediates(self, graph: Graph, flat_inputs, options) -> Intermediates:
        # Before any simplify: onnxsim would merge away the values compared.
        from dexport.backends.onnx_runtime import run_exposed
        names: dict[Value, str] = {}
        model = emit_onnx(graph, opset=self.resolve_options(options)["opset"], value_names=names)
        exposed = [v for node in graph.block.nodes for v in node.outputs if v in names]
        values = run_exposed(model, [names[v] for v in exposed], flat_inputs)
        return Intermediates({v: names[v] for v in exposed}, dict(zip(exposed, values)))


def _declared(value_info) -> TensorIO:
    tensor = value_info.type.tensor_type
    dtype = _ONNX_TO_TORCH.get(tensor.elem_type)
    return TensorIO(value_info.name, [d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim],
                    str(dtype).removeprefix("torch.") if dtype is not None else None)


_ONNX_TO_TORCH = {code: dtype for dtype, code in TORCH_TO_ONNX.items()}


ONNX = register_backend(OnnxBackend())
