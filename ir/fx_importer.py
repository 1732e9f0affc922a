"""The FX importer: an ATen-level ``torch.fx`` graph (every node's ``meta["val"]`` a
fake tensor or a symbolic size) built as IR nodes.

Shared by everything that reaches the IR through FX: the ``decompose`` pass splices
the ``make_fx`` trace of a decomposition in place of a node, and a torch.export
frontend imports a whole exported program the same way. It lives in ``dexport.ir``
(not with the frontends) because passes may import only the IR.

What it maps:

* ``OpOverload`` calls -> the op of the same schema name, arguments in schema order
  (defaults filled in); FX's size queries (``sym_size.int``, ...) -> the ops captured
  graphs use (``aten::size.int``); Python operators on sizes -> the IR's scalar ops
  (``aten::add.int``); ``getitem`` selects an output, no node;
* constants -> ``prim::Constant`` (one per distinct value), ``get_attr`` tensors ->
  constants when small, parameters otherwise; lists of values -> ``prim::ListConstruct``,
  a ``Tensor[]`` result -> its ``prim::ListUnpack``;
* types from ``meta["val"]``: symbolic dims back to the names the caller gives for
  them (``symbol_dims``), an expression over them as text (``2*N``), else ``?``.

Anything it cannot map raises ``FxImportError`` naming it; callers that treat that
as a normal outcome (decompose leaves the node alone) catch it.
"""
from __future__ import annotations

import math
import operator
from typing import Any

import torch

from dexport.ir.errors import DexportError
from dexport.ir.graph import CONSTANT, SMALL_TENSOR_NUMEL, Graph, Meta, Node, Value
from dexport.ir.ops import has_op, ir_type_from_jit, type_of_constant, unify_types
from dexport.ir.types import BOOL, FLOAT, INT, ListType, TensorType, Type

CONSTRUCT, UNPACK = "prim::ListConstruct", "prim::ListUnpack"

# Python operators on sizes in the trace -> the IR's scalar ops (suffix by operand kinds).
_SCALAR_OPS = {operator.add: "add", operator.sub: "sub", operator.mul: "mul",
               operator.floordiv: "floordiv", operator.mod: "remainder", operator.truediv: "div",
               operator.neg: "neg"}
# Size queries: FX's sym_* ops -> the ops captured graphs use.
_SIZE_OPS = {"aten::sym_size.int": "aten::size.int", "aten::sym_numel": "aten::numel",
             "aten::sym_stride.int": "aten::stride.int"}
# Number conversions in the trace (upsampling computes sizes from float scales).
_CONVERSIONS = {torch.sym_float: "aten::Float.Scalar", math.trunc: "aten::Int.float"}


class FxImportError(DexportError):
    """An FX graph holds something the IR has no form for."""


def value_kind(value: Any) -> str:
    """``int`` / ``float`` / ``bool`` for a Python or symbolic number."""
    if isinstance(value, (bool, torch.SymBool)):
        return "bool"
    if isinstance(value, (int, torch.SymInt)):
        return "int"
    if isinstance(value, (float, torch.SymFloat)):
        return "float"
    raise FxImportError(f"a size computation on {type(value).__name__}")


def _meta_val(arg: Any) -> Any:
    return arg.meta["val"] if isinstance(arg, torch.fx.Node) else arg


def ir_op(fx_node: torch.fx.Node) -> str | None:
    """The IR op of one FX call (None for getitem, which only selects)."""
    target = fx_node.target
    if target is operator.getitem:
        return None
    if isinstance(target, torch._ops.OpOverload):
        name = target.name()
        return _SIZE_OPS.get(name, name)
    if target in _CONVERSIONS:
        return _CONVERSIONS[target]
    if target in _SCALAR_OPS:
        kinds = [value_kind(_meta_val(a)) for a in fx_node.args]
        suffix = kinds[0] if len(set(kinds)) == 1 else "_".join(kinds)
        name = f"aten::{_SCALAR_OPS[target]}.{suffix}"
        if has_op(name):
            return name
    raise FxImportError(f"the FX graph uses {getattr(target, '__name__', target)!s}, which the IR has no op for")


def schema_returns_list(schema) -> bool:
    returns = schema.returns
    return len(returns) == 1 and isinstance(ir_type_from_jit(returns[0].type), ListType)


def returns_list(target: Any) -> bool:
    return isinstance(target, torch._ops.OpOverload) and schema_returns_list(target._schema)


def plan(gm: torch.fx.GraphModule) -> tuple[dict[torch.fx.Node, str | None], list[str]]:
    """The IR op of every FX call, and every op the import will create (list
    construction and unpacking included), in first-use order."""
    ops: dict[torch.fx.Node, str | None] = {}
    needed: dict[str, None] = {}
    for fx_node in gm.graph.nodes:
        if fx_node.op == "call_function":
            op = ops[fx_node] = ir_op(fx_node)
            if op is None:
                continue
            needed[op] = None
            if returns_list(fx_node.target):
                needed[UNPACK] = None
            if any(isinstance(a, (list, tuple)) and any(isinstance(x, torch.fx.Node) for x in a)
                   for a in (*fx_node.args, *fx_node.kwargs.values())):
                needed[CONSTRUCT] = None
        elif fx_node.op not in ("placeholder", "get_attr", "output"):
            raise FxImportError(f"the FX graph has a {fx_node.op} node")
    return ops, list(needed)


class FxImporter:
    """Builds an FX graph as IR nodes of ``graph`` before ``before`` (each with a copy
    of ``meta``). ``symbol_dims`` maps the FX graph's sympy symbols to the IR dims they
    stand for (a name, or an example size); ``param_prefix`` names the parameters
    large ``get_attr`` tensors become."""

    def __init__(self, graph: Graph, *, before: Node, meta: Meta, symbol_dims: dict,
                 param_prefix: str = "imported"):
        import sympy
        self.graph, self.before, self.meta = graph, before, meta
        self.symbol_dims, self.param_prefix = symbol_dims, param_prefix
        self.values: dict[torch.fx.Node, Any] = {}   # FX node -> Value, or a tuple of them
        self.constants: dict[tuple, Value] = {}
        # Symbols back to what the IR called them: names, or (traced graphs) example sizes.
        self.names = {sym: sympy.Symbol(dim) if isinstance(dim, str) else sympy.Integer(dim)
                      for sym, dim in symbol_dims.items() if dim != "?"}

    def import_graph(self, gm: torch.fx.GraphModule, placeholders: list[Value],
                     ops: dict[torch.fx.Node, str | None] | None = None) -> list[Value]:
        """Build ``gm`` with its placeholders bound to ``placeholders``; returns the
        flattened output Values. ``ops``: the ``plan`` already made, if any."""
        from torch.utils import _pytree as pytree
        ops = ops if ops is not None else plan(gm)[0]
        bound = iter(placeholders)
        result = None
        for fx_node in gm.graph.nodes:
            if fx_node.op == "placeholder":
                self.values[fx_node] = next(bound)
            elif fx_node.op == "get_attr":
                self.values[fx_node] = self._tensor_constant(getattr(gm, fx_node.target))
            elif fx_node.op == "call_function":
                self.values[fx_node] = self._call(fx_node, ops[fx_node])
            else:
                result = fx_node.args[0]
        return [self.value(r) for r in pytree.tree_leaves(result)]

    # -- nodes ----------------------------------------------------------------------------
    def create(self, op: str, inputs: list[Value], types: list[Type], attrs=None) -> Node:
        return self.graph.create_node(op, inputs, types, attrs, self.meta.copy(), before=self.before)

    def _call(self, fx_node: torch.fx.Node, op: str | None) -> Any:
        if op is None:  # getitem of a multi-result op
            source, index = fx_node.args
            return self.values[source][index]
        target = fx_node.target
        if isinstance(target, torch._ops.OpOverload):
            schema = target._schema
            inputs = [self._argument(fx_node, k, arg) for k, arg in enumerate(schema.arguments)]
        else:
            inputs = [self.value(a) for a in fx_node.args]
        val = fx_node.meta["val"]
        if returns_list(target):  # one Tensor[] result: getitem reads its unpacked elements
            elems = [self.type_of(v) for v in val]
            listed = self.create(op, inputs, [ListType(unify_types(elems))]).output
            return tuple(self.create(UNPACK, [listed], elems).outputs)
        if isinstance(val, (tuple, list)):  # several results
            return tuple(self.create(op, inputs, [self.type_of(v) for v in val]).outputs)
        return self.create(op, inputs, [self.type_of(val)]).output

    def _argument(self, fx_node: torch.fx.Node, k: int, arg) -> Value:
        """The Value of schema argument ``arg`` (number ``k``) of an FX call."""
        if k < len(fx_node.args) and not arg.kwarg_only:
            given = fx_node.args[k]
        elif arg.name in fx_node.kwargs:
            given = fx_node.kwargs[arg.name]
        elif arg.has_default_value():
            given = arg.default_value
        else:
            raise FxImportError(f"{fx_node.target} has no value for argument {arg.name!r}")
        if isinstance(given, (list, tuple)) and any(isinstance(a, torch.fx.Node) for a in given):
            items = [self.value(a) for a in given]
            list_type = ir_type_from_jit(arg.type)
            return self.create(CONSTRUCT, items, [list_type]).output
        if isinstance(given, (list, tuple)):  # typed by the schema, even when empty
            return self.value(list(given), ir_type_from_jit(arg.type))
        return self.value(given)

    def value(self, arg: Any, typ: Type | None = None) -> Value:
        """The Value of an FX argument: a built node's, or a (shared) constant's."""
        if isinstance(arg, torch.fx.Node):
            return self.values[arg]
        if isinstance(arg, tuple):
            arg = list(arg)
        typ = typ or type_of_constant(arg)
        key = (str(typ), repr(arg))
        value = self.constants.get(key)
        if value is None:
            value = self.constants[key] = self.create(CONSTANT, [], [typ], {"value": arg}).output
        return value

    def _tensor_constant(self, tensor: torch.Tensor) -> Value:
        tensor = tensor.detach().clone()
        if tensor.numel() <= SMALL_TENSOR_NUMEL:
            return self.create(CONSTANT, [], [type_of_constant(tensor)], {"value": tensor}).output
        return self.graph.add_param(self.graph.unique_param_name(self.param_prefix), tensor, before=self.before)

    # -- types ----------------------------------------------------------------------------
    def type_of(self, val: Any) -> Type:
        if isinstance(val, torch.Tensor):
            return TensorType(val.dtype, tuple(self._dim(d) for d in val.shape))
        return {"int": INT, "float": FLOAT, "bool": BOOL}[value_kind(val)]

    def _dim(self, size) -> int | str:
        if isinstance(size, int):
            return size
        expr = size.node.expr
        if expr.is_Symbol and expr in self.symbol_dims:
            return self.symbol_dims[expr]
        if expr.free_symbols - set(self.names):
            return "?"
        expr = expr.xreplace(self.names)
        if expr.is_Integer:
            return int(expr)
        text = str(expr)
        return "?" if any(c in text for c in ",[]") else text


__all__ = ["CONSTRUCT", "UNPACK", "FxImportError", "FxImporter", "ir_op", "plan", "returns_list",
           "schema_returns_list", "value_kind"]
