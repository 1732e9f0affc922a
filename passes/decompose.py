"""``decompose``: rewrite ATen ops the target backend cannot lower through torch's
own decompositions.

For each such node the op is traced with ``make_fx`` on fake inputs built from the
node's input types, with torch's decomposition tables (``core_aten_decompositions()``
first, then ``torch._decomp.decomposition_table``) restricted to the ops the target
lacks, so the trace stops at ops the target has. The resulting ATen graph is spliced
in place of the node; new nodes inherit its scope, source and tags.

Shapes are symbolic while tracing, so a decomposition is never specialised to the
sizes in the types: named dims (``N``, ``H``) become one symbol per name, dims of a
traced graph (``graph.example_shapes``) become symbols too (equal example sizes
share one, as ``make_fx``'s own symbolic mode does), and only proven sizes (a graph
with static shapes, parameters, constants) stay numbers. A decomposition that
guards on a shape (branches on a size, assumes two sizes equal) bakes that shape
into the graph and is refused, as is one whose result uses any op the target
lacks. A refused or undecomposable node is left as it was; the backend's
unsupported-op report then lists it, and ``Decompose.refused`` says why.

Targets are registered by name (``register_target("onnx", has_lowering)``) by the
backend modules, which sit above the passes and so cannot be imported from here.

Cost: one ``make_fx`` trace per node to decompose (milliseconds to tens of ms);
nodes the target supports cost a dict lookup. torch's tracing machinery is imported
on first use (about 0.7 s), so registering the pass costs nothing.
"""
from __future__ import annotations

import functools
import operator
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils import _pytree as pytree

from dexport.ir.errors import PassError
from dexport.ir.graph import CONSTANT, PARAM, SMALL_TENSOR_NUMEL, Graph, Node, Value
from dexport.ir.ops import get_op, has_op, ir_type_from_jit, overload_of, type_of_constant, unify_types
from dexport.ir.types import BOOL, FLOAT, INT, ListType, TensorType, Type
from dexport.passes.base import Pass, register_pass

Supports = Callable[[str], bool]
CONSTRUCT, UNPACK = "prim::ListConstruct", "prim::ListUnpack"

_TARGETS: dict[str, Supports] = {}


def register_target(name: str, supports: Supports) -> None:
    """Make ``decompose{target=name}`` available: ``supports(op_name)`` says whether
    the target lowers an op. Registering a name again replaces it."""
    _TARGETS[name] = supports


def registered_targets() -> list[str]:
    return sorted(_TARGETS)


def target_support(name: str) -> Supports:
    supports = _TARGETS.get(name)
    if supports is None:
        known = ", ".join(registered_targets()) or "none yet"
        raise PassError(f"decompose: unknown target {name!r} (registered: {known})",
                        hint=f"import the backend module that registers it (e.g. dexport.backends.{name}), "
                             f"or call dexport.passes.decompose.register_target")
    return supports


@register_pass
class Decompose(Pass):
    """Rewrites ATen ops without a lowering in ``target`` into ops with one, using
    torch's decompositions traced with symbolic shapes. ``only``: op names
    (separated by commas or spaces) to restrict it to; empty means every op the
    target lacks. After ``run``, ``refused`` lists ``(op, scope, reason)`` for each
    node left alone."""
    name = "decompose"

    @dataclass(frozen=True)
    class Options:
        target: str = "onnx"
        only: str = ""

    def validate(self) -> None:
        target_support(self.options.target)  # a registered target, before the pipeline starts

    def run(self, graph: Graph) -> bool:
        supports = target_support(self.options.target)
        only = [op for op in re.split(r"[,\s]+", self.options.only) if op]
        changed, self.refused = decompose_graph(graph, supports, only=only or None)
        return changed


def decompose_graph(graph: Graph, supports: Supports, *,
                    only: list[str] | None = None) -> tuple[bool, list[tuple[str, str, str]]]:
    """Decompose every ATen node of ``graph`` (nested blocks included) whose op
    ``supports`` rejects (restricted to ``only`` when given). Returns (changed,
    [(op, scope, reason) for each node left alone])."""
    wanted = set(only) if only is not None else None
    refused: list[tuple[str, str, str]] = []
    changed = False
    for node in list(graph.nodes()):
        if not node.op.startswith("aten::") or node.blocks or supports(node.op):
            continue
        if wanted is not None and node.op not in wanted:
            continue
        reason = decompose_node(graph, node, supports)
        if reason is None:
            changed = True
        else:
            refused.append((node.op, node.meta.scope, reason))
    return changed, refused


def decompose_node(graph: Graph, node: Node, supports: Supports) -> str | None:
    """Replace ``node`` by its decomposition; None when done, else why not (the
    graph is then untouched)."""
    try:
        traced = _Tracer(graph, node, supports).trace()
        plan = _plan(traced, supports)
    except _Refusal as refusal:
        return str(refusal)
    _Splicer(graph, node, traced).splice(plan)
    return None


class _Refusal(Exception):
    """Why a node is not decomposed (a normal outcome, not an error)."""


# --------------------------------------------------------------------------- tracing

@functools.lru_cache(maxsize=None)
def _all_decompositions() -> dict:
    from torch._decomp import core_aten_decompositions, decomposition_table
    table = dict(decomposition_table)
    table.update(core_aten_decompositions())  # core wins: it stays at the ATen level
    return table


def _table(supports: Supports) -> dict:
    return {op: fn for op, fn in _all_decompositions().items() if not supports(op.name())}


@dataclass
class _Traced:
    gm: torch.fx.GraphModule
    placeholders: list[Value]        # the IR value each FX placeholder stands for
    symbol_dims: dict                # sympy symbol -> IR dim (name or example int)
    schema: Any
    op: str


class _Tracer:
    """Fake inputs from the node's types, then make_fx with symbolic shapes."""

    def __init__(self, graph: Graph, node: Node, supports: Supports):
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.fx.experimental.symbolic_shapes import ShapeEnv
        self.graph, self.node, self.supports = graph, node, supports
        self.env = ShapeEnv()
        self.mode = FakeTensorMode(shape_env=self.env)
        self.placeholders: list[Value] = []
        self.fakes: list[torch.Tensor] = []
        self.hints: dict[Any, int] = {}   # name (or fresh key) of a dynamic dim -> its size
        self.taken: set[int] = set()      # sizes a fresh hint must not reuse

    def trace(self) -> _Traced:
        node = self.node
        opdef = get_op(node.op)
        schema = opdef.schema
        if schema is None or schema.is_mutable:
            raise _Refusal("only functional torch ops are decomposed")
        if len(node.inputs) != len(schema.arguments):
            raise _Refusal(f"{len(node.inputs)} inputs for {len(schema.arguments)} schema arguments")
        for v in node.inputs:
            for item in (v.node.inputs if v.node is not None and v.node.op == CONSTRUCT else [v]):
                if isinstance(item.type, TensorType) and item.type.shape is not None:
                    self.taken.update(d for d in item.type.shape if isinstance(d, int))
        template = [self._argument(v, i) for i, v in enumerate(node.inputs)]
        overload = overload_of(node.op)
        positional = [a for a in schema.arguments if not a.kwarg_only]
        keywords = [a.name for a in schema.arguments if a.kwarg_only]

        def call(*tensors):
            args = [_fill(t, tensors) for t in template]
            return overload(*args[:len(positional)], **dict(zip(keywords, args[len(positional):])))

        from torch.fx.experimental.proxy_tensor import make_fx
        try:
            gm = make_fx(call, decomposition_table=_table(self.supports), tracing_mode="symbolic")(*self.fakes)
        except Exception as err:  # any failure of torch's tracing means "not decomposable here"
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise _Refusal(f"tracing the decomposition failed: {first}") from None
        if self.env.guards:
            shown = ", ".join(sorted({str(g.expr) for g in self.env.guards})[:4])
            raise _Refusal(f"the decomposition depends on the input shapes ({shown})")
        symbol_dims = {}
        for fake, value in zip(self.fakes, self.placeholders):
            for size, dim in zip(fake.shape, value.type.shape):
                if isinstance(size, torch.SymInt) and size.node.expr.is_Symbol:
                    symbol_dims.setdefault(size.node.expr, dim)
        return _Traced(gm, self.placeholders, symbol_dims, schema, node.op)

    # -- inputs -------------------------------------------------------------------------
    def _argument(self, value: Value, index: int) -> Any:
        """The template of one schema argument: a constant, a _Slot for a fake tensor,
        or a list of those."""
        producer = value.node
        if producer is not None and producer.op == CONSTANT:
            constant = producer.attrs["value"]
            return self._tensor(value) if isinstance(constant, torch.Tensor) else constant
        if producer is not None and producer.op == CONSTRUCT:
            return [self._argument(v, index) for v in producer.inputs]
        if isinstance(value.type, TensorType):
            return self._tensor(value)
        raise _Refusal(f"argument {index} ({value.type}) is computed at run time; "
                       f"only tensors may be, other arguments must be constants")

    def _tensor(self, value: Value) -> "_Slot":
        from torch.fx.experimental.symbolic_shapes import DimDynamic, StatelessSymbolicContext
        for k, seen in enumerate(self.placeholders):  # one placeholder per distinct value
            if seen is value:
                return _Slot(k)
        typ = value.type
        if not isinstance(typ, TensorType) or typ.dtype is None or typ.shape is None:
            raise _Refusal(f"an input's type {typ} has no dtype or rank")
        producer = value.node
        proven = not self.graph.example_shapes or (producer is not None and producer.op in (PARAM, CONSTANT))
        sizes, dynamic = [], []
        for dim in typ.shape:
            if isinstance(dim, int) and proven:
                sizes.append(dim)
                dynamic.append(DimDynamic.STATIC)
                continue
            sizes.append(self._hint(dim))
            dynamic.append(DimDynamic.DUCK)
        context = StatelessSymbolicContext(dynamic_sizes=dynamic, constraint_sizes=[None] * len(sizes))
        fake = self.mode.from_tensor(torch.empty(sizes, dtype=typ.dtype), symbolic_context=context)
        self.fakes.append(fake)
        self.placeholders.append(value)
        return _Slot(len(self.fakes) - 1)

    def _hint(self, dim: int | str) -> int:
        """The size a dynamic dim is traced at; equal hints share one symbol (DUCK).
        Example sizes of 2 or more are traced as themselves, so constants that agree
        with them (a layer_norm's normalized shape) still do. Names get one fresh size
        each, "?", 0 and 1 a fresh size per dim: the smallest >= 3 no other dim uses
        (small, as from_tensor allocates a tensor, lazily)."""
        if isinstance(dim, int) and dim >= 2:
            return dim
        key = dim if isinstance(dim, str) and dim != "?" else ("fresh", len(self.hints))
        if key not in self.hints:
            hint = 3
            while hint in self.taken:
                hint += 1
            self.taken.add(hint)
            self.hints[key] = hint
        return self.hints[key]


@dataclass(frozen=True)
class _Slot:
    index: int


def _fill(template: Any, tensors: tuple) -> Any:
    if isinstance(template, _Slot):
        return tensors[template.index]
    if isinstance(template, list):
        return [_fill(t, tensors) for t in template]
    return template


# --------------------------------------------------------------------------- planning

# Python operators on sizes in the trace -> the IR's scalar ops (suffix by operand kinds).
_SCALAR_OPS = {operator.add: "add", operator.sub: "sub", operator.mul: "mul",
               operator.floordiv: "floordiv", operator.mod: "remainder", operator.truediv: "div",
               operator.neg: "neg"}
# Size queries: FX's sym_* ops -> the ops captured graphs use.
_SIZE_OPS = {"aten::sym_size.int": "aten::size.int", "aten::sym_numel": "aten::numel",
             "aten::sym_stride.int": "aten::stride.int"}


def _kind(value: Any) -> str:
    if isinstance(value, (bool, torch.SymBool)):
        return "bool"
    if isinstance(value, (int, torch.SymInt)):
        return "int"
    if isinstance(value, (float, torch.SymFloat)):
        return "float"
    raise _Refusal(f"a size computation on {type(value).__name__}")


def _meta(arg: Any) -> Any:
    return arg.meta["val"] if isinstance(arg, torch.fx.Node) else arg


def _ir_op(fx_node: torch.fx.Node) -> str | None:
    """The IR op of one FX call (None for getitem, which only selects)."""
    target = fx_node.target
    if target is operator.getitem:
        return None
    if isinstance(target, torch._ops.OpOverload):
        name = target.name()
        return _SIZE_OPS.get(name, name)
    if target in _SCALAR_OPS:
        kinds = [_kind(_meta(a)) for a in fx_node.args]
        suffix = kinds[0] if len(set(kinds)) == 1 else "_".join(kinds)
        name = f"aten::{_SCALAR_OPS[target]}.{suffix}"
        if has_op(name):
            return name
    raise _Refusal(f"the decomposition uses {getattr(target, '__name__', target)!s}, "
                   f"which the IR has no op for")


def _plan(traced: _Traced, supports: Supports) -> dict[torch.fx.Node, str | None]:
    """The IR op of every FX call; refuses when the target lacks any op the splice
    would create (list construction and unpacking included)."""
    plan = {}
    needed: dict[str, None] = {}
    for fx_node in traced.gm.graph.nodes:
        if fx_node.op == "call_function":
            op = plan[fx_node] = _ir_op(fx_node)
            if op is None:
                continue
            needed[op] = None
            if _returns_list(fx_node.target):
                needed[UNPACK] = None
            if any(isinstance(a, (list, tuple)) and any(isinstance(x, torch.fx.Node) for x in a)
                   for a in (*fx_node.args, *fx_node.kwargs.values())):
                needed[CONSTRUCT] = None
        elif fx_node.op == "output":
            if _schema_returns_list(traced.schema):
                needed[CONSTRUCT] = None
        elif fx_node.op not in ("placeholder", "get_attr"):
            raise _Refusal(f"the decomposition has a {fx_node.op} node")
    missing = [op for op in needed if not supports(op)]
    if traced.op in missing:
        raise _Refusal("torch has no decomposition of this op (or none without it)")
    if missing:
        raise _Refusal("the decomposition uses ops the target lacks: " + ", ".join(missing))
    return plan


# --------------------------------------------------------------------------- splicing

class _Splicer:
    """Builds the traced FX graph as IR nodes before ``node``, then replaces it."""

    def __init__(self, graph: Graph, node: Node, traced: _Traced):
        import sympy
        self.graph, self.node, self.traced = graph, node, traced
        self.values: dict[torch.fx.Node, Any] = {}   # FX node -> Value, or a tuple of them
        self.constants: dict[tuple, Value] = {}
        # Symbols back to what the IR called them: names, or (traced graphs) example sizes.
        self.names = {sym: sympy.Symbol(dim) if isinstance(dim, str) else sympy.Integer(dim)
                      for sym, dim in traced.symbol_dims.items() if dim != "?"}

    def splice(self, plan: dict) -> None:
        gm = self.traced.gm
        placeholders = iter(self.traced.placeholders)
        result = None
        for fx_node in gm.graph.nodes:
            if fx_node.op == "placeholder":
                self.values[fx_node] = next(placeholders)
            elif fx_node.op == "get_attr":
                self.values[fx_node] = self._tensor_constant(getattr(gm, fx_node.target))
            elif fx_node.op == "call_function":
                self.values[fx_node] = self._call(fx_node, plan[fx_node])
            else:
                result = fx_node.args[0]
        outputs = self._results(result)
        for old, new in zip(self.node.outputs, outputs):
            old.replace_all_uses_with(new)
        self.graph.erase_nodes([self.node])

    def _results(self, result: Any) -> list[Value]:
        flat = [self._value(r) for r in pytree.tree_leaves(result)]
        if _schema_returns_list(self.traced.schema):
            return [self._create(CONSTRUCT, flat, [self.node.outputs[0].type]).output]
        return flat

    # -- nodes ----------------------------------------------------------------------------
    def _create(self, op: str, inputs: list[Value], types: list[Type], attrs=None) -> Node:
        return self.graph.create_node(op, inputs, types, attrs, self.node.meta.copy(), before=self.node)

    def _call(self, fx_node: torch.fx.Node, op: str | None) -> Any:
        if op is None:  # getitem of a multi-result op
            source, index = fx_node.args
            return self.values[source][index]
        target = fx_node.target
        if isinstance(target, torch._ops.OpOverload):
            schema = target._schema
            inputs = [self._argument(fx_node, k, arg) for k, arg in enumerate(schema.arguments)]
        else:
            inputs = [self._value(a) for a in fx_node.args]
        val = fx_node.meta["val"]
        if _returns_list(target):  # one Tensor[] result: getitem reads its unpacked elements
            elems = [self._type(v) for v in val]
            listed = self._create(op, inputs, [ListType(unify_types(elems))]).output
            return tuple(self._create(UNPACK, [listed], elems).outputs)
        if isinstance(val, (tuple, list)):  # several results
            return tuple(self._create(op, inputs, [self._type(v) for v in val]).outputs)
        return self._create(op, inputs, [self._type(val)]).output

    def _argument(self, fx_node: torch.fx.Node, k: int, arg) -> Value:
        """The Value of schema argument ``arg`` (number ``k``) of an FX call."""
        if k < len(fx_node.args) and not arg.kwarg_only:
            given = fx_node.args[k]
        elif arg.name in fx_node.kwargs:
            given = fx_node.kwargs[arg.name]
        elif arg.has_default_value():
            given = arg.default_value
        else:
            raise PassError(f"decompose: {fx_node.target} has no value for argument {arg.name!r}")
        if isinstance(given, (list, tuple)) and any(isinstance(a, torch.fx.Node) for a in given):
            items = [self._value(a) for a in given]
            list_type = ir_type_from_jit(arg.type)
            return self._create(CONSTRUCT, items, [list_type]).output
        if isinstance(given, (list, tuple)):  # typed by the schema, even when empty
            return self._value(list(given), ir_type_from_jit(arg.type))
        return self._value(given)

    def _value(self, arg: Any, typ: Type | None = None) -> Value:
        if isinstance(arg, torch.fx.Node):
            return self.values[arg]
        if isinstance(arg, tuple):
            arg = list(arg)
        typ = typ or type_of_constant(arg)
        key = (str(typ), repr(arg))
        value = self.constants.get(key)
        if value is None:
            value = self.constants[key] = self._create(CONSTANT, [], [typ], {"value": arg}).output
        return value

    def _tensor_constant(self, tensor: torch.Tensor) -> Value:
        tensor = tensor.detach().clone()
        if tensor.numel() <= SMALL_TENSOR_NUMEL:
            return self._create(CONSTANT, [], [type_of_constant(tensor)], {"value": tensor}).output
        scope = self.node.meta.scope
        return self.graph.add_param(self.graph.unique_param_name(f"{scope}.decomposed" if scope else "decomposed"),
                                    tensor, before=self.node)

    # -- types ----------------------------------------------------------------------------
    def _type(self, val: Any) -> Type:
        if isinstance(val, torch.Tensor):
            return TensorType(val.dtype, tuple(self._dim(d) for d in val.shape))
        return {"int": INT, "float": FLOAT, "bool": BOOL}[_kind(val)]

    def _dim(self, size) -> int | str:
        if isinstance(size, int):
            return size
        expr = size.node.expr
        if expr.is_Symbol and expr in self.traced.symbol_dims:
            return self.traced.symbol_dims[expr]
        if expr.free_symbols - set(self.names):
            return "?"
        expr = expr.xreplace(self.names)
        if expr.is_Integer:
            return int(expr)
        text = str(expr)
        return "?" if any(c in text for c in ",[]") else text


def _returns_list(target: Any) -> bool:
    return isinstance(target, torch._ops.OpOverload) and _schema_returns_list(target._schema)


def _schema_returns_list(schema) -> bool:
    returns = schema.returns
    return len(returns) == 1 and isinstance(ir_type_from_jit(returns[0].type), ListType)
