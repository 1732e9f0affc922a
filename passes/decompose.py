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
unsupported-op report then lists it, and ``Decompose.refused`` says why. The trace is
built into the graph by the shared FX importer (``dexport.ir.fx_importer``).

Targets are registered by name (``register_target("onnx", has_lowering)``) by the
backend modules, which sit above the passes and so cannot be imported from here.

Cost: one ``make_fx`` trace per node to decompose (milliseconds to tens of ms);
nodes the target supports cost a dict lookup. torch's tracing machinery is imported
on first use (about 0.7 s), so registering the pass costs nothing.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch

from dexport.ir.errors import PassError
from dexport.ir.fx_importer import CONSTRUCT, FxImporter, FxImportError, plan, schema_returns_list
from dexport.ir.graph import CONSTANT, PARAM, Graph, Node, Value
from dexport.ir.ops import get_op, overload_of
from dexport.ir.types import TensorType
from dexport.passes.base import Pass, register_pass

Supports = Callable[[str], bool]

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
    refused: dict[Node, tuple[str, str, str]] = {}
    changed = False
    # A splice may bring ops the target lacks that decompose further (a composite whose
    # parts have their own decompositions): repeat until a round changes nothing.
    for _ in range(MAX_ROUNDS):
        pending = [node for node in graph.nodes()
                   if node.op.startswith("aten::") and not node.blocks and not supports(node.op)
                   and node not in refused and (wanted is None or node.op in wanted)]
        if not pending:
            return changed, list(refused.values())
        for node in pending:
            reason = decompose_node(graph, node, supports)
            if reason is None:
                changed = True
            else:
                refused[node] = (node.op, node.meta.scope, reason)
    left = sorted({n.op for n in graph.nodes() if n.op.startswith("aten::") and not supports(n.op)} - {r[0] for r in refused.values()})
    raise PassError(f"decompose: no fixpoint after {MAX_ROUNDS} rounds; still decomposing {', '.join(left)}",
                    hint="a decomposition keeps producing ops the target lacks; register a lowering for one of them")


MAX_ROUNDS = 8  # composites nest a few levels deep (interpolate -> upsample -> index ops)


def decompose_node(graph: Graph, node: Node, supports: Supports) -> str | None:
    """Replace ``node`` by its decomposition; None when done, else why not (the
    graph is then untouched)."""
    try:
        traced = _Tracer(graph, node, supports).trace()
        ops = _plan(traced, supports)
        _splice(graph, node, traced, ops)
    except _Refusal as refusal:
        return str(refusal)
    return None


class _Refusal(Exception):
    """Why a node is not decomposed (a normal outcome, not an error)."""


class _Failed(Exception):
    """torch's tracing raised (its first line)."""


# --------------------------------------------------------------------------- tracing

@functools.lru_cache(maxsize=None)
def _all_decompositions() -> dict:
    from torch._decomp import core_aten_decompositions, decomposition_table
    table = dict(decomposition_table)
    table.update(core_aten_decompositions())  # core wins: it stays at the ATen level
    return table


def _table(supports: Supports) -> dict:
    return {op: fn for op, fn in _all_decompositions().items() if not supports(op.name())}


def _native_multi_head_attention(query, key, value, embed_dim, num_head, qkv_weight, qkv_bias,
                                 proj_weight, proj_bias, mask=None, need_weights=True,
                                 average_attn_weights=True, mask_type=None):
    """nn.MultiheadAttention's eval fast path (batch first), which torch gives no
    decomposition: in-projection, scaled dot-product per head, out-projection."""
    if mask is not None:
        raise NotImplementedError("_native_multi_head_attention with a mask")
    F = torch.nn.functional
    if query is key and key is value:
        q, k, v = F.linear(query, qkv_weight, qkv_bias).chunk(3, dim=-1)
    else:
        w, b = qkv_weight.chunk(3), qkv_bias.chunk(3)
        q, k, v = (F.linear(x, wi, bi) for x, wi, bi in zip((query, key, value), w, b))
    head = embed_dim // num_head

    def heads(x):  # (B, L, E) -> (B, H, L, D)
        return x.unflatten(-1, (num_head, head)).transpose(1, 2)
    q, k, v = heads(q), heads(k), heads(v)
    weights = torch.softmax(q @ k.transpose(-2, -1) * (1.0 / head ** 0.5), dim=-1)
    out = F.linear((weights @ v).transpose(1, 2).flatten(-2), proj_weight, proj_bias)
    if not need_weights:
        return out, query.new_empty((0,))
    return out, weights.mean(dim=1) if average_attn_weights else weights


def _native_multi_head_attention_checks(query, key, value, embed_dim, num_head, *rest, **options):
    """What the fast path itself requires (it has no meta kernel to say so)."""
    for x in (query, key, value):
        torch._check(x.size(-1) == embed_dim)
    torch._check(embed_dim % num_head == 0)
    return query.clone(), query.new_empty((0,))


# Ops torch has no decomposition for, decomposed by dexport (same contract as torch's
# table), each with the shape checks the op itself makes (see _Tracer._own_guards).
_OWN_DECOMPOSITIONS = {torch.ops.aten._native_multi_head_attention.default: _native_multi_head_attention}
_OWN_CHECKS = {torch.ops.aten._native_multi_head_attention.default: _native_multi_head_attention_checks}


def _own_table(supports: Supports) -> dict:
    return {op: fn for op, fn in _OWN_DECOMPOSITIONS.items() if not supports(op.name())}


def target_decompositions(supports: Supports) -> dict:
    """The decompositions ``decompose`` traces with for a target: torch's and dexport's,
    for the ops the target lacks (so tracing stops at ops it has)."""
    return {**_table(supports), **_own_table(supports)}


def has_decomposition(op: torch._ops.OpOverload) -> bool:
    """Whether ``decompose`` can rewrite ``op``: an entry in torch's tables or dexport's,
    or a composite kernel (CompositeImplicitAutograd), which tracing always expands."""
    return (op in _all_decompositions() or op in _OWN_DECOMPOSITIONS
            or torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CompositeImplicitAutograd"))


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
        schema = get_op(node.op).schema
        if schema is None or schema.is_mutable:
            raise _Refusal("only functional torch ops are decomposed")
        if len(node.inputs) != len(schema.arguments):
            raise _Refusal(f"{len(node.inputs)} inputs for {len(schema.arguments)} schema arguments")
        try:
            gm = self.trace_with(target_decompositions(self.supports))
        except _Failed as err:  # any failure of torch's tracing means "not decomposable here"
            raise _Refusal(f"tracing the decomposition failed: {err}") from None
        baked = {str(g.expr) for g in self.env.guards} - self._own_guards()
        if baked:
            shown = ", ".join(sorted(baked)[:4])
            raise _Refusal(f"the decomposition depends on the input shapes ({shown})")
        symbol_dims = {}
        for fake, value in zip(self.fakes, self.placeholders):
            for size, dim in zip(fake.shape, value.type.shape):
                if isinstance(size, torch.SymInt) and size.node.expr.is_Symbol:
                    symbol_dims.setdefault(size.node.expr, dim)
        return _Traced(gm, self.placeholders, symbol_dims, schema, node.op)

    def _own_guards(self) -> set[str]:
        """The guards the op itself puts on these inputs, traced without decompositions:
        its shape checks (layer_norm's normalized shape against the last dim) and, for a
        composite, what its captured form already fixed (chunk's number of outputs).
        Eager rejects other sizes, or the capture fixed them, so they are no baked
        assumption; a guard only a decomposition adds is."""
        if not self.env.guards:
            return set()
        plain = _Tracer(self.graph, self.node, self.supports)
        try:
            plain.trace_with(_OWN_CHECKS)
        except _Failed:
            return set()
        return {str(g.expr) for g in plain.env.guards}

    def trace_with(self, table: dict) -> torch.fx.GraphModule:
        """make_fx of the node's op on fresh symbolic fakes, decomposing by ``table``."""
        from torch.fx.experimental.proxy_tensor import make_fx
        node, schema = self.node, get_op(self.node.op).schema
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
        try:
            return make_fx(call, decomposition_table=table, tracing_mode="symbolic")(*self.fakes)
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise _Failed(first) from None

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


# --------------------------------------------------------------------------- planning and splicing

def _plan(traced: _Traced, supports: Supports) -> dict[torch.fx.Node, str | None]:
    """The IR op of every FX call; refuses when the target lacks any op the splice
    would create (list construction and unpacking included)."""
    try:
        ops, needed = plan(traced.gm)
    except FxImportError as err:
        raise _Refusal(err.what) from None
    if schema_returns_list(traced.schema) and CONSTRUCT not in needed:
        needed.append(CONSTRUCT)
    missing = [op for op in needed if not supports(op)]
    if traced.op in missing:
        raise _Refusal("torch has no decomposition of this op (or none without it)")
    if missing:
        raise _Refusal("the decomposition uses ops the target lacks: " + ", ".join(missing))
    return ops


def _splice(graph: Graph, node: Node, traced: _Traced, ops: dict) -> None:
    """Build the traced FX graph as IR nodes before ``node``, then replace it."""
    scope = node.meta.scope
    importer = FxImporter(graph, before=node, meta=node.meta, symbol_dims=traced.symbol_dims,
                          param_prefix=f"{scope}.decomposed" if scope else "decomposed")
    try:
        outputs = importer.import_graph(traced.gm, traced.placeholders, ops)
    except FxImportError as err:  # planned ops all exist: a missing argument is torch's bug or ours
        raise PassError(f"decompose: {err.what}", op=node.op, scope=scope, source=node.meta.source) from None
    if schema_returns_list(traced.schema):
        outputs = [importer.create(CONSTRUCT, outputs, [node.outputs[0].type]).output]
    for old, new in zip(node.outputs, outputs):
        old.replace_all_uses_with(new)
    graph.erase_nodes([node])
