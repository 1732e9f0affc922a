"""``infer-types``: fill in the dtypes, ranks and symbolic shapes that capture left
unknown (``Tensor``, ``f32[*]``, ``?`` dims), by running the graph on fake tensors.

Every node runs its interpreter kernel under torch's ``FakeTensorMode`` with a
``ShapeEnv``: graph inputs are fake tensors whose named dims (``N``, ``H``) are one
symbol per name and whose expression dims (``8*ceil(H/32)``) are computed from those
symbols, so results come out symbolic. dexport's own ops run their fake kernels;
data-dependent sizes (NMS survivors) become fresh symbols, written ``n0``, ``n1``...
Blocks are walked too: an ``If``'s outputs get what both branches agree on, a
``Loop``'s carried values (body parameters and outputs) what the initial values and
the body's results agree on, walking the body again until that is stable
(``prim::Uninitialized``, TorchScript's placeholder on a path that has not set a value
yet, takes the type of the other side).

What propagation finds only adds to a type, never replaces it: a known dtype, rank
or dim stays. A dtype or rank (or, where int dims are facts, a size) that
propagation contradicts is a ``PassError`` naming the node. On a traced graph
(``graph.example_shapes``) int dims are example sizes, not facts: there only
dtypes, ranks and symbolic dims are filled in (an unknown dim that came out as a
number stays ``?``), and int dims are never compared. The same holds on any graph
where a symbol had to be specialised to a number on the way (a size check in some
kernel), as the numbers then hold for the hint sizes only.

A node whose kernel fails on fake tensors (a value-dependent op) gets fake outputs
built from its declared types, so propagation continues past it.
Cost: one fake-kernel call per node (tens of microseconds), plus a small fit per
distinct symbolic expression written back.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import torch

from dexport.ir.dims import DimExpr, parse_dim
from dexport.ir import dims as dimexpr
from dexport.ir.errors import PassError
from dexport.ir.graph import CONSTANT, PARAM, Block, Graph, Node, Value
from dexport.ir.interpreter import evaluate_node
from dexport.ir.ops import get_op
from dexport.ir.types import FLOAT, INT, NONE, ListType, TensorType, Type
from dexport.ir.verifier import type_conflict
from dexport.passes.base import Pass, register_pass

_UNKNOWN = object()  # a value propagation knows nothing about (None is a value)
_UNSET = object()    # the type of prim::Uninitialized in a join: whatever the other side has
_MAX_LOOP_WALKS = 6  # walks of a loop body to agree on its carried types
_FIRST_HINT = 64  # sizes named dims are traced at: big enough for any kernel's size checks
# Sizes each symbol takes when an expression is read back as text (dexport.ir.dims.fit).
_SAMPLES = (67, 96, 130, 201, 257, 322)


@register_pass
class InferTypes(Pass):
    """Fills unknown dtypes, ranks and dims from fake-tensor propagation; a
    contradiction with a known type is a PassError."""
    name = "infer-types"

    @dataclass(frozen=True)
    class Options:
        # False: run only the nodes with an output to fill in (their inputs come from
        # their declared types); True: every node, checking complete types too.
        every_node: bool = False

    def run(self, graph: Graph) -> bool:
        if not self.options.every_node and all(_complete(t) for t in _all_types(graph)):
            return False  # nothing to fill in (most captured graphs): no fake mode at all
        return _Propagation(graph, self.options.every_node).run()


class _Propagation:
    def __init__(self, graph: Graph, every_node: bool):
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.fx.experimental.symbolic_shapes import ShapeEnv
        self.graph, self.every_node = graph, every_node
        self.env = ShapeEnv()
        self.mode = FakeTensorMode(shape_env=self.env, allow_non_fake_inputs=False)
        self.values: dict[Value, Any] = {}        # IR value -> fake value (absent: unknown)
        self.inferred: dict[Value, Type] = {}     # value -> the type propagation gives it
        self.found: list[tuple[Node, Value, Type]] = []  # (node, value, type propagation gives)
        self.symbols: dict[str, Any] = {}          # dim name -> its SymInt
        self.names: dict[Any, str] = {}            # sympy symbol -> dim name
        self.used_names = _dim_names(graph)
        self.taken = {d for t in _all_tensor_types(graph) for d in t.shape or () if isinstance(d, int)}

    def run(self) -> bool:
        # A kernel that fails on fake tensors is an expected outcome here, not an error
        # for torch to log with its traceback.
        quiet = logging.getLogger("torch._subclasses.fake_tensor")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            with self.mode:
                for name in sorted(self.used_names):
                    self._symbol(name)
                self._walk(self.graph.block)
        finally:
            quiet.setLevel(level)
        self.ints_are_facts = not self.graph.example_shapes and not self._specialized()
        changed = False
        for node, value, inferred in self.found:
            changed |= self._merge(node, value, inferred)
        return changed

    # -- walking ---------------------------------------------------------------------
    def _walk(self, block: Block) -> None:
        for node in block.nodes:
            results = self._evaluate(node)
            if results is None:
                continue  # the outputs' fakes come from their declared types, when asked for
            for out, fake in zip(node.outputs, results):
                if fake is _UNKNOWN:
                    continue
                inferred = fake.type if isinstance(fake, _Typed) else self._type_of(fake)
                if isinstance(fake, _Typed):
                    fake = _UNKNOWN  # a fake from the type, made when a reader needs it
                if inferred is not None and isinstance(out.type, (TensorType, ListType)):
                    self.found.append((node, out, inferred))
                    self.inferred[out] = inferred
                if fake is not _UNKNOWN:
                    self.values[out] = fake

    def _evaluate(self, node: Node) -> list | None:
        """The node's fake outputs (or their types), or None where there is nothing to add."""
        if node.op in (CONSTANT, PARAM):
            return None  # made from the constant or parameter itself when read
        if node.op == "prim::If" and len(node.blocks) == 2:
            return self._if(node)
        if node.op == "prim::Loop" and len(node.blocks) == 1:
            return self._loop(node)
        if node.blocks:  # an unknown op with blocks: its blocks keep their declared types
            for b in node.blocks:
                self._walk(b)
            return None
        # A complete tensor type gives a faithful fake; an int or a list (a size read
        # by a later factory) needs its value, so those nodes always run.
        if not self.every_node and all(isinstance(out.type, TensorType) and _complete(out.type)
                                       for out in node.outputs):
            return None
        inputs = [self._fake(v) for v in node.inputs]
        if node.op == "prim::ListConstruct" and node.inputs and all(
                isinstance(v.type, TensorType) for v in node.inputs):
            if all(x is not _UNKNOWN for x in inputs):
                return [inputs]  # the list of fakes, for a reader such as cat
            elem = functools.reduce(_agreement, [self._known_type(v) for v in node.inputs])
            return [_Typed(ListType(elem))]  # what the elements' types say
        if any(x is _UNKNOWN for x in inputs):
            return self._by_type_rule(node)
        try:
            results = list(evaluate_node(node, inputs))
        except Exception:  # a value-dependent kernel or one fake tensors cannot run
            return self._by_type_rule(node)
        return results if len(results) == len(node.outputs) else None

    @staticmethod
    def _by_type_rule(node: Node) -> list | None:
        """What the op's type rule says (``torch.tensor(n)`` of a symbolic n is an i64
        scalar), where the kernel cannot run."""
        try:
            types = get_op(node.op).type_rule(node)
        except Exception:
            return None
        if types is None or len(types) != len(node.outputs):
            return None
        return [_Typed(t) if isinstance(t, TensorType) and (t.dtype is not None or t.shape is not None)
                else _UNKNOWN for t in types]

    def _if(self, node: Node) -> list:
        for b in node.blocks:
            self._walk(b)
        joined = [_join(self._slot_type(r0), self._slot_type(r1))
                  for r0, r1 in zip(node.blocks[0].returns, node.blocks[1].returns)]
        return [_UNKNOWN if t is _UNSET or t is None else _Typed(t) for t in joined]

    def _loop(self, node: Node) -> list:
        """A loop's carried values: what the initial values and every trip's results
        agree on, found by walking the body until that stops changing (a dtype or a
        rank is lost at most once, so a few walks suffice)."""
        body = node.blocks[0]
        carried_in, carried_params = node.inputs[2:], body.params[1:]
        carried = [self._slot_type(v) for v in carried_in]
        counter = self._loop_counter(node)
        mark = len(self.found)
        for _ in range(_MAX_LOOP_WALKS):
            del self.found[mark:]  # only the last walk's findings hold on every trip
            self._forget(body)
            if counter is not _UNKNOWN:
                self.values[body.params[0]] = counter
            for param, typ in zip(carried_params, carried):
                if typ is not None and typ is not _UNSET:
                    self.inferred[param] = typ
            self._walk(body)
            joined = [_join(t, self._slot_type(r)) for t, r in zip(carried, body.returns[1:])]
            if joined == carried:
                break
            carried = joined
        else:  # no fixpoint (cannot happen for a finite lattice): learn nothing
            del self.found[mark:]
            self._forget(body)
            return [_UNKNOWN] * len(node.outputs)
        carried = [None if t is _UNSET else t for t in carried]
        for param, typ in zip(carried_params, carried):
            if typ is not None and isinstance(param.type, (TensorType, ListType)):
                self.found.append((node, param, typ))
        return [_Typed(t) if t is not None else _UNKNOWN for t in carried]

    def _loop_counter(self, node: Node) -> Any:
        """The trip number's fake: an unbacked int known to lie in [0, max_trip), so
        that indexing with it (``x[:, i]``) passes the kernels' bounds checks."""
        trips = self._fake(node.inputs[0])
        if not isinstance(trips, (int, torch.SymInt)):
            return _UNKNOWN
        counter = self.env.create_unbacked_symint()
        try:
            torch._check(counter >= 0)
            torch._check(counter < trips)
        except Exception:  # a bound torch cannot record: the counter stays unknown
            return _UNKNOWN
        return counter

    def _slot_type(self, value: Value):
        """The type ``value`` brings into a join (_UNSET: TorchScript's placeholder for a
        value not set yet on this path, which any other path's type overrides)."""
        node = value.node
        if node is not None and node.op == "prim::Uninitialized":
            return _UNSET
        return self._known_type(value)

    def _forget(self, block: Block) -> None:
        """Drop what an earlier walk of ``block`` learnt (its carried types changed)."""
        for value in _defined_in(block):
            self.values.pop(value, None)
            self.inferred.pop(value, None)

    def _known_type(self, value: Value) -> Type:
        inferred = self.inferred.get(value)
        return value.type if inferred is None else _more_known(value.type, inferred)

    def _fake(self, value: Value) -> Any:
        """The fake of ``value``: computed, or made from its constant, parameter or type."""
        fake = self.values.get(value, _UNKNOWN)
        if fake is _UNKNOWN and value not in self.values:
            producer = value.node
            if producer is not None and producer.op == CONSTANT:
                fake = self._fake_constant(producer.attrs["value"])
            elif producer is not None and producer.op == PARAM:
                fake = self.mode.from_tensor(self.graph.params[producer.attrs["name"]], static_shapes=True)
            else:
                fake = self._fake_of_type(self._known_type(value))
            self.values[value] = fake
        return fake

    # -- fake values -----------------------------------------------------------------
    def _symbol(self, name: str | None):
        """The SymInt of a dim name (one per name), or a fresh one for None."""
        if name is not None and name in self.symbols:
            return self.symbols[name]
        from torch.fx.experimental.symbolic_shapes import DimDynamic
        hint = _FIRST_HINT
        while hint in self.taken:
            hint += 1
        self.taken.add(hint)
        source = _dim_source(name or f"?{hint}")
        sym = self.env.create_symbol(hint, source, dynamic_dim=DimDynamic.DYNAMIC)
        size = self.env.create_symintnode(sym, hint=hint, source=source)
        if name is not None:
            self.symbols[name] = size
            self.names[size.node.expr] = name
        return size

    def _dim(self, dim: int | str):
        if isinstance(dim, int):
            if not self.graph.example_shapes or dim < 2:
                return dim
            # An example size: a symbol of its own (equal sizes share one, so they still
            # broadcast), so nothing computed from it passes for a fact or a named dim.
            from torch.fx.experimental.symbolic_shapes import DimDynamic
            source = _dim_source(f"example{len(self.values)}")
            sym = self.env.create_symbol(dim, source, dynamic_dim=DimDynamic.DUCK)
            return self.env.create_symintnode(sym, hint=dim, source=source)
        if dim == "?":
            return self._symbol(None)
        if dim in self.used_names:
            return self._symbol(dim)
        expr = parse_dim(dim)
        if isinstance(expr, int):
            return expr
        return expr.evaluate({s: self._symbol(s) for s in expr.symbols})

    def _fake_of_type(self, typ: Type) -> Any:
        if isinstance(typ, TensorType):
            if typ.dtype is None or typ.shape is None:
                return _UNKNOWN
            try:
                return torch.empty([self._dim(d) for d in typ.shape], dtype=typ.dtype)
            except Exception:  # a dim text the dims module cannot evaluate
                return _UNKNOWN
        if typ == INT:
            return self.env.create_unbacked_symint()
        if typ == FLOAT:  # unknown (a trip number made float): sizes from it stay unknown
            return self.env.create_unbacked_symfloat()
        if typ == NONE:
            return None
        return _UNKNOWN

    def _fake_constant(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return self.mode.from_tensor(value, static_shapes=True)
        if isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
            return type(value)(self._fake_constant(v) for v in value)
        return value

    # -- types -----------------------------------------------------------------------
    def _type_of(self, fake: Any) -> Type | None:
        if isinstance(fake, _Typed):
            return fake.type
        if isinstance(fake, torch.Tensor):
            return TensorType(fake.dtype, tuple(self._ir_dim(d) for d in fake.shape))
        if isinstance(fake, (list, tuple)) and fake and all(isinstance(t, torch.Tensor) for t in fake):
            elem = functools.reduce(_agreement, [self._type_of(t) for t in fake])
            return ListType(elem) if elem is not None else None
        return None

    def _ir_dim(self, size) -> int | str:
        """An IR dim: an int (a number here: _merge decides whether it is a fact), a
        name, a fitted expression over names, or ``?``."""
        if isinstance(size, int):
            return size
        expr = size.node.expr
        if expr.is_Integer:
            return int(expr)
        for sym in expr.free_symbols:
            if sym not in self.names:  # a fresh (data-dependent or unknown) size
                if not sym.name.startswith("u"):
                    return "?"
                self.names[sym] = self._fresh_name()
        return _expression_text(expr.xreplace({s: _sympy_symbol(n) for s, n in self.names.items()}))

    def _fresh_name(self) -> str:
        k = 0
        while f"n{k}" in self.used_names:
            k += 1
        self.used_names.add(f"n{k}")
        return f"n{k}"

    def _specialized(self) -> bool:
        """Whether a named dim was fixed to a number by a kernel's size check."""
        return any(self.env.replacements.get(sym, sym).is_number for sym in self.names)

    # -- writing back ----------------------------------------------------------------
    def _merge(self, node: Node, value: Value, inferred: Type) -> bool:
        declared = value.type
        conflict = self._conflict(declared, inferred)
        if conflict is not None:
            raise PassError(f"infer-types: {node.op} gives {inferred} by fake propagation, but its "
                            f"output {value.index} is declared {declared} ({conflict})",
                            op=node.op, scope=node.meta.scope, source=node.meta.source,
                            hint="the declared type or the op's kernel is wrong: check what capture "
                                 "recorded for this node (dexport export --dump-ir)")
        merged = _more_known(declared, self._as_written(inferred))
        if merged == declared:
            return False
        value.type = merged
        return True

    def _conflict(self, declared: Type, inferred: Type) -> str | None:
        if not self.ints_are_facts:  # compare dtypes and ranks only
            declared, inferred = _without_ints(declared), _without_ints(inferred)
        return type_conflict(inferred, declared)

    def _as_written(self, inferred: Type) -> Type:
        return inferred if self.ints_are_facts else _without_ints(inferred)


def _dim_source(label: str):
    """A guard source naming a dim (the ShapeEnv wants one per symbol)."""
    from torch._guards import GuardSource, Source

    class DimSource(Source):
        @property
        def name(self) -> str:
            return label

        def guard_source(self):
            return GuardSource.CONSTANT

    return DimSource()


class _Typed:
    """A value known by its type only (an If's output)."""

    def __init__(self, type: Type):
        self.type = type


def _complete(t: Type) -> bool:
    """Whether propagation has nothing to add to ``t``."""
    if isinstance(t, ListType):
        return _complete(t.elem)
    if isinstance(t, TensorType):
        return t.dtype is not None and t.shape is not None and "?" not in t.shape
    return True


def _agreement(a: Type | None, b: Type | None) -> Type | None:
    """What two tensor (or list of tensor) types agree on, None if not even that."""
    if a == b:
        return a
    if isinstance(a, ListType) and isinstance(b, ListType):
        elem = _agreement(a.elem, b.elem)
        return ListType(elem) if elem is not None else None
    if not isinstance(a, TensorType) or not isinstance(b, TensorType):
        return None
    dtype = a.dtype if a.dtype == b.dtype else None
    shape = None
    if a.shape is not None and b.shape is not None and len(a.shape) == len(b.shape):
        shape = tuple(x if x == y else "?" for x, y in zip(a.shape, b.shape))
    return TensorType(dtype, shape)


def _join(a, b):
    """``_agreement`` where _UNSET (a placeholder, prim::Uninitialized) takes the other side."""
    if a is _UNSET:
        return b
    if b is _UNSET:
        return a
    return _agreement(a, b)


def _more_known(declared: Type, inferred: Type) -> Type:
    """``declared`` with its unknown parts taken from ``inferred`` (the types agree)."""
    if isinstance(declared, ListType) and isinstance(inferred, ListType):
        return ListType(_more_known(declared.elem, inferred.elem))
    if not isinstance(declared, TensorType) or not isinstance(inferred, TensorType):
        return declared
    dtype = declared.dtype if declared.dtype is not None else inferred.dtype
    if declared.shape is None:
        shape = inferred.shape
    elif inferred.shape is None or len(inferred.shape) != len(declared.shape):
        shape = declared.shape
    else:
        shape = tuple(i if d == "?" else d for d, i in zip(declared.shape, inferred.shape))
    return TensorType(dtype, shape)


def _without_ints(t: Type) -> Type:
    if isinstance(t, ListType):
        return ListType(_without_ints(t.elem))
    if isinstance(t, TensorType) and t.shape is not None:
        return TensorType(t.dtype, tuple("?" if isinstance(d, int) else d for d in t.shape))
    return t


def _all_types(graph: Graph):
    """The type of every value of the graph, nested blocks included."""
    def blocks(block: Block):
        yield block
        for node in block.nodes:
            for b in node.blocks:
                yield from blocks(b)
    for block in blocks(graph.block):
        for v in block.params:
            yield v.type
        for node in block.nodes:
            for out in node.outputs:
                yield out.type


def _defined_in(block: Block):
    """The parameters of ``block`` and the outputs of its nodes, nested blocks included."""
    yield from block.params
    for node in block.nodes:
        yield from node.outputs
        for b in node.blocks:
            yield from _defined_in(b)


def _all_tensor_types(graph: Graph):
    for t in _all_types(graph):
        yield from _tensor_types(t)


def _tensor_types(t: Type):
    if isinstance(t, TensorType):
        yield t
    elif isinstance(t, ListType):
        yield from _tensor_types(t.elem)


def _dim_names(graph: Graph) -> set[str]:
    """Every symbol any dim of the graph's types uses."""
    names = set()
    for t in _all_tensor_types(graph):
        for d in t.shape or ():
            if isinstance(d, str) and d != "?":
                try:
                    expr = parse_dim(d)
                except Exception:  # noqa: BLE001 - a dim text the dims module does not read stays opaque
                    continue
                if isinstance(expr, DimExpr):
                    names.update(expr.symbols)
    return names


@functools.lru_cache(maxsize=None)
def _sympy_symbol(name: str):
    import sympy
    return sympy.Symbol(name, integer=True, positive=True)


@functools.lru_cache(maxsize=4096)
def _expression_text(expr) -> str:
    """The canonical IR text of a sympy size over dim names (``8*ceil(H/32)``), found
    by fitting its values on sample sizes; ``?`` when no IR expression matches."""
    import sympy
    if expr.is_Symbol:
        return expr.name
    symbols = sorted(expr.free_symbols, key=lambda s: s.name)
    samples = {s.name: tuple(_SAMPLES[(i + k) % len(_SAMPLES)] for i in range(len(_SAMPLES)))
               for k, s in enumerate(symbols)}
    try:
        target = tuple(int(expr.xreplace({s: sympy.Integer(samples[s.name][i]) for s in symbols}))
                       for i in range(len(_SAMPLES)))
    except (TypeError, ValueError):
        return "?"
    fitted = dimexpr.fit(target, samples)
    return str(fitted) if fitted is not None else "?"
