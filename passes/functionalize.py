"""``functionalize``: in-place and ``out=`` ops become their functional forms.

Which ops write, and which outputs alias an input, is read from the torch schemas'
alias info (``Tensor(a!)`` writes, ``Tensor(a)`` views), never from a list of names.
One forward walk over the top block tracks, for every tensor, the storage it lives in
and how it was derived from that storage (a chain of view nodes). A write:

* computes the functional result (``add_.Tensor`` -> ``add.Tensor``; ``copy_`` -> the
  source expanded to the destination's shape and dtype; ``fill_`` -> ``full_like``;
  ``zero_`` -> ``zeros_like``; ``foo.out`` -> the ``foo`` overload without ``out``);
* rebuilds the storage's base through the inverse of each view on the way
  (``select_scatter``, ``slice_scatter``, ``reshape_as``, ``transpose``, ...), giving the
  base a new SSA value;
* and every later reader of the base or of any view of it (taken before or after the
  write) reads a value re-derived from the new base.

Lists that scripted code builds with ``append`` or edits by constant index in the top
block (after the loops and branches the constants decide are unrolled and inlined)
become ``prim::ListConstruct``s (``dexport.passes.scripted.functional_lists``).

Refused with a ``PassError`` (op, scope, source line, what to do): writes into a graph
input, a parameter or a constant (the caller or the next run would see them); writes
inside nested blocks; writes through views without a known inverse (``expand``, list
results of ``split``/``unbind``); and reshape-like ops whose aliasing depends on
memory layout (``reshape``/``contiguous`` of a transposed or strided view) once a write
makes the difference observable.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dexport.ir.errors import DexportError, PassError
from dexport.ir.graph import CONSTANT, PARAM, Graph, Node, Value
from dexport.ir.ops import constant_input, get_op, has_op, overload_of
from dexport.ir.types import NONE, ListType, TensorType, TupleType, Type
from dexport.passes.base import Pass, register_pass, register_property
from dexport.passes.effects import op_effects
from dexport.passes.scripted import (MAX_UNROLL_TRIPS, fold_control_flow, fold_tuple_indexing, functional_dicts,
                                     functional_lists)

# Containers hold references: a list built before a write reads the new values after it.
_CONTAINERS = frozenset({"prim::ListConstruct", "prim::TupleConstruct"})
_UNPACKS = frozenset({"prim::ListUnpack", "prim::TupleUnpack"})
# Views that only reinterpret the shape: undone by reshaping the new view to the base's shape.
_SHAPE_VIEWS = frozenset({"view", "reshape", "_unsafe_view", "_reshape_alias", "flatten", "unflatten",
                          "unsqueeze", "squeeze", "view_as", "reshape_as"})
# Views that are the whole tensor: undone by taking the new value as the base.
_IDENTITY_VIEWS = frozenset({"alias", "detach", "contiguous", "to", "type_as", "lift_fresh"})
# Ops whose result is a view only when the input's memory layout allows (else a copy).
_LAYOUT_DEPENDENT = frozenset({"reshape", "flatten", "unflatten", "contiguous", "reshape_as"})
# Ops that return the input itself (never a copy) when the dtype does not change.
_DTYPE_DEPENDENT = frozenset({"to", "type_as"})


def _base_name(op: str) -> tuple[str, str, str]:
    ns, _, rest = op.partition("::")
    name, _, overload = rest.partition(".")
    return ns, name, overload


def _schema(op: str):
    if not has_op(op):
        return None
    return get_op(op).schema


def written_arguments(op: str) -> list[int]:
    """Indices of the arguments ``op`` writes to (``Tensor(a!)``)."""
    schema = _schema(op)
    if schema is None:
        return []
    return [i for i, a in enumerate(schema.arguments) if a.alias_info is not None and a.alias_info.is_write]


def is_view_op(op: str) -> bool:
    """Whether ``op``'s outputs alias its first argument without writing it."""
    schema = _schema(op)
    if schema is None or not schema.arguments:
        return False
    first = schema.arguments[0].alias_info
    if first is None or first.is_write:
        return False
    return any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)


def mutating_nodes(graph: Graph) -> list[Node]:
    return [n for n in graph.nodes() if op_effects(n.op).mutates]


def _functional_check(graph: Graph):
    bad = mutating_nodes(graph)
    if not bad:
        return None
    n = bad[0]
    return (f"{len(bad)} node(s) mutate their arguments (first: {n.op} at {n.meta.source or n.meta.scope or '?'})",
            "run the 'functionalize' pass first")


register_property("functional", _functional_check)


@dataclass(eq=False)
class _Storage:
    current: Value
    kind: str            # "fresh", "input", "param", "constant"
    version: int = 0


@dataclass(eq=False)
class _Alias:
    """How a value reads its storage(s): a base value (recipe None) or derived by
    ``recipe`` (a view or container node) at the given storage versions."""
    deps: tuple[tuple[_Storage, int], ...]
    recipe: Node | None = None
    contiguous: bool = True   # its elements are laid out like a fresh tensor's
    ambiguous: str = ""       # why it may be a copy rather than a view


@register_pass
class Functionalize(Pass):
    """Rewrites every in-place and ``out=`` op into its functional form, including
    writes through views (see the module docstring for what is refused)."""
    name = "functionalize"
    establishes = ("functional",)

    def run(self, graph: Graph) -> bool:
        # Scripted code's lists: control flow the constants decide goes first (an unrolled
        # loop's appends come to the top block), then lists built by appends or edited by
        # index become ListConstructs.
        # Dicts (scripted code's `out = {}; out["boxes"] = b`) likewise, once the tuples
        # that carry them to the outputs are indexed directly.
        changed = bool(fold_control_flow(graph)) | bool(functional_lists(graph))
        changed |= bool(fold_tuple_indexing(graph)) | bool(functional_dicts(graph))
        for node in graph.nodes():
            if op_effects(node.op).mutates and node.block is not graph.block:
                if node.op == "aten::append.t":
                    raise _refusal(node, "a list grows inside a scripted loop or branch that the constants "
                                         f"do not decide (loops of up to {MAX_UNROLL_TRIPS} constant trips "
                                         "are unrolled); ONNX sequences are not emitted",
                                   "compute the rows as one tensor (e.g. torch.where, a masked or batched "
                                   "op over all rows) instead of appending to a list in the loop")
                raise _refusal(node, "writes inside a nested block (prim::If / prim::Loop body), "
                                     "which functionalize does not handle",
                               "move the in-place op out of the scripted branch or loop, or write it "
                               "functionally (y = x + 1 instead of x += 1)")
        if not any(op_effects(n.op).mutates for n in graph.block.nodes):
            return changed
        _Walk(graph).run()
        return True


def _refusal(node: Node, what: str, hint: str) -> PassError:
    return PassError(f"cannot functionalize {node.op}: {what}", op=node.op, scope=node.meta.scope,
                     source=node.meta.source, hint=hint)


class _Walk:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.alias: dict[Value, _Alias] = {}
        self.derived: dict[tuple[Value, tuple[int, ...]], Value] = {}
        for v in graph.inputs:
            self._root(v, "input")

    # -- tracking ------------------------------------------------------------------
    def _root(self, v: Value, kind: str) -> None:
        self.alias[v] = _Alias(((_Storage(v, kind), 0),))

    def _register(self, node: Node) -> None:
        """Record how the outputs of ``node`` (already reading fresh inputs) alias."""
        op = node.op
        if op in (PARAM, CONSTANT):
            for o in node.outputs:
                self._root(o, "param" if op == PARAM else "constant")
            return
        tracked = [self.alias[v] for v in node.inputs if v in self.alias]
        if op in _CONTAINERS or op in _UNPACKS:
            if tracked:
                deps = _now(dict.fromkeys(s for a in tracked for s, _ in a.deps))
                amb = next((a.ambiguous for a in tracked if a.ambiguous), "")
                for o in node.outputs:
                    self.alias[o] = _Alias(deps, node, False, amb)
            return
        if node.inputs and is_view_op(op) and node.inputs[0] in self.alias:
            parent = self.alias[node.inputs[0]]
            _, name, _ = _base_name(op)
            ambiguous = parent.ambiguous
            if name in _DTYPE_DEPENDENT:
                src, out = node.inputs[0].type, node.outputs[0].type
                same = (isinstance(src, TensorType) and isinstance(out, TensorType)
                        and src.dtype is not None and src.dtype == out.dtype)
                differs = (isinstance(src, TensorType) and isinstance(out, TensorType)
                           and None not in (src.dtype, out.dtype) and src.dtype != out.dtype)
                if differs:  # a converted copy: a storage of its own
                    for o in node.outputs:
                        self._root(o, "fresh")
                    return
                if not same:
                    ambiguous = ambiguous or f"{op} may or may not copy (dtype unknown)"
            if name in _LAYOUT_DEPENDENT and not parent.contiguous:
                ambiguous = ambiguous or f"{op} of a strided view may be a copy rather than a view"
            for o in node.outputs:
                self.alias[o] = _Alias(_now(s for s, _ in parent.deps), node,
                                       parent.contiguous and _keeps_layout(node), ambiguous)
            return
        for o in node.outputs:
            if isinstance(o.type, (TensorType, ListType, TupleType)) or o.type is None:
                self._root(o, "fresh")

    def fresh(self, v: Value, anchor: Node) -> Value:
        """A value holding what ``v`` holds now (re-derived from its storages' current
        values when a write came after it), computed before ``anchor``."""
        a = self.alias.get(v)
        if a is None:
            return v
        if a.recipe is None:
            return a.deps[0][0].current
        versions = tuple(s.version for s, _ in a.deps)
        if versions == tuple(k for _, k in a.deps):
            return v
        key = (v, versions)
        if key not in self.derived:
            node = a.recipe
            if a.ambiguous:
                raise _refusal(anchor, f"it reads {node.op} (at {node.meta.source or node.meta.scope or '?'}) "
                                       f"after a write to its base, and {a.ambiguous}",
                               "call .clone() where a copy is meant, or avoid the in-place write")
            inputs = [self.fresh(i, anchor) for i in node.inputs]
            copy = self.graph.create_node(node.op, inputs, [o.type for o in node.outputs], dict(node.attrs),
                                          node.meta.copy(), before=anchor)
            self._register(copy)
            for o, c in zip(node.outputs, copy.outputs):
                self.derived[(o, versions)] = c
        return self.derived[key]

    def refresh_inputs(self, node: Node, anchor: Node) -> None:
        for i, v in enumerate(node.inputs):
            new = self.fresh(v, anchor)
            if new is not v:
                node.replace_input(i, new)
        for b in node.blocks:  # nested blocks read outer values as they are at the node
            for inner in b.nodes:
                self.refresh_inputs(inner, anchor)
            self.refresh_inputs(b.return_node, anchor)

    # -- the walk ------------------------------------------------------------------
    def run(self) -> None:
        block = self.graph.block
        for node in block.nodes:
            self.refresh_inputs(node, node)
            if op_effects(node.op).mutates:
                self.functionalize(node)
            else:
                self._register(node)
        self.refresh_inputs(block.return_node, block.return_node)

    def functionalize(self, node: Node) -> None:
        written = written_arguments(node.op)
        if len(written) != 1 or not isinstance(node.inputs[written[0]].type, TensorType):
            raise _refusal(node, "it writes to something other than exactly one tensor argument",
                           "write the code functionally")
        k = written[0]
        target = node.inputs[k]
        a = self.alias.get(target)
        if a is None or len(a.deps) != 1:
            raise _refusal(node, "the tensor it writes to is not tracked", "write the code functionally")
        storage = a.deps[0][0]
        if storage.kind != "fresh":
            what = {"input": "a graph input, which the caller would see changed",
                    "param": "a parameter or buffer, which later runs would see changed",
                    "constant": "a constant, which later runs would see changed"}[storage.kind]
            raise _refusal(node, f"it writes into {what}",
                           "write to a copy (x = x.clone() first) or use the out-of-place op (x = x + y)")
        result = self.functional_result(node, k, target)
        # Scatter the new value up the chain of views to the storage's base.
        value, v = result, target
        while self.alias[v].recipe is not None:
            view = self.alias[v].recipe
            if self.alias[v].ambiguous:
                raise _refusal(node, f"it writes through {view.op}, and {self.alias[v].ambiguous}",
                               "call .clone() where a copy is meant, or write into the base directly")
            base = view.inputs[0]
            value = self.inverse(view, base, value, node)
            v = base
        storage.current = value
        storage.version += 1
        self.alias[value] = _Alias(((storage, storage.version),))
        for o in node.outputs:  # in-place ops return the tensor they wrote
            o.replace_all_uses_with(target)
        node.erase()

    # -- building ------------------------------------------------------------------
    def _node(self, op: str, inputs: list[Value], type: Type, anchor: Node) -> Value:
        return self.graph.create_node(op, inputs, [type], meta=anchor.meta.copy(), before=anchor).output

    def _const(self, value, type: Type, anchor: Node) -> Value:
        return self.graph.create_node(CONSTANT, (), [type], {"value": value}, before=anchor).output

    def _like(self, result: Value, target: Value, anchor: Node) -> Value:
        """``result`` in ``target``'s dtype (in-place ops keep the destination's dtype)."""
        rt, tt = result.type, target.type
        if isinstance(rt, TensorType) and rt.dtype is not None and rt.dtype == tt.dtype:
            return result
        return self._node("aten::type_as", [result, target], tt, anchor)

    def functional_result(self, node: Node, k: int, target: Value) -> Value:
        ns, name, overload = _base_name(node.op)
        tt = target.type
        if ns == "aten" and name == "copy_":
            src = self._node("aten::expand_as", [node.inputs[1], target], TensorType(node.inputs[1].type.dtype
                             if isinstance(node.inputs[1].type, TensorType) else None, tt.shape), node)
            return self._like(src, target, node)
        if ns == "aten" and name == "zero_":
            nones = [self._const(None, NONE, node) for _ in range(5)]
            return self._node("aten::zeros_like", [target, *nones], tt, node)
        if ns == "aten" and name == "fill_":
            if overload == "Scalar":
                nones = [self._const(None, NONE, node) for _ in range(5)]
                return self._node("aten::full_like", [target, node.inputs[1], *nones], tt, node)
            value = self._node("aten::expand_as", [node.inputs[1], target], TensorType(None, tt.shape), node)
            return self._like(value, target, node)
        schema = get_op(node.op).schema
        if name.endswith("_") and not name.endswith("__"):
            functional = f"{ns}::{name[:-1]}" + (f".{overload}" if overload else "")
            inputs = list(node.inputs)
        else:  # an out= variant: the overload taking every argument but the written one
            functional, inputs = None, [v for i, v in enumerate(node.inputs) if i != k]
            wanted = [a.name for i, a in enumerate(schema.arguments) if i != k]
            try:
                packet = overload_of(node.op)._overloadpacket
                for ov in packet.overloads():
                    if [a.name for a in getattr(packet, ov)._schema.arguments] == wanted:
                        functional = f"{ns}::{name}" + ("" if ov == "default" else f".{ov}")
                        break
            except (DexportError, AttributeError):
                functional = None
        if functional is None or not has_op(functional) or op_effects(functional).mutates:
            raise _refusal(node, "it has no functional counterpart",
                           "write the code with the out-of-place op")
        ftype = get_op(functional).schema
        if len(ftype.arguments) != len(inputs) or len(ftype.returns) != 1:
            raise _refusal(node, f"its functional counterpart {functional} takes other arguments",
                           "write the code with the out-of-place op")
        # 0-d tensors of a lower or equal category do not take part in type promotion.
        others = [v.type for i, v in enumerate(inputs) if i != 0 and isinstance(v.type, TensorType)
                  and not (v.type.rank == 0 and _category(v.type.dtype) <= _category(tt.dtype))]
        keeps_dtype = tt.dtype is not None and all(t.dtype == tt.dtype for t in others)
        result = self._node(functional, inputs, tt if keeps_dtype else TensorType(None, tt.shape), node)
        return result if keeps_dtype else self._like(result, target, node)

    def inverse(self, view: Node, base: Value, value: Value, anchor: Node) -> Value:
        """The base with the view ``view`` of it replaced by ``value``."""
        _, name, _ = _base_name(view.op)
        bt = base.type
        args = list(view.inputs[1:])
        if name == "select" and view.op.endswith(".int"):
            return self._node("aten::select_scatter", [base, value, *args], bt, anchor)
        if name == "slice" and view.op.endswith(".Tensor"):
            return self._node("aten::slice_scatter", [base, value, *args], bt, anchor)
        if name == "diagonal" and view.op == "aten::diagonal":
            return self._node("aten::diagonal_scatter", [base, value, *args], bt, anchor)
        if name == "as_strided" and view.op == "aten::as_strided":
            return self._node("aten::as_strided_scatter", [base, value, *args], bt, anchor)
        if name in _SHAPE_VIEWS:
            return self._node("aten::reshape_as", [value, base], bt, anchor)
        if name in _IDENTITY_VIEWS:
            return value
        if view.op == "aten::transpose.int":
            return self._node("aten::transpose.int", [value, *args], bt, anchor)
        if view.op in ("aten::t", "aten::numpy_T"):
            return self._node(view.op, [value], bt, anchor)
        if view.op == "aten::permute":
            dims = constant_input(view, 1)
            if isinstance(dims, (list, tuple)):
                rank = len(dims)
                inv = [0] * rank
                for i, d in enumerate(dims):
                    inv[d % rank] = i
                perm = self._const(inv, ListType(_int_type()), anchor)
                return self._node("aten::permute", [value, perm], bt, anchor)
        raise _refusal(anchor, f"it writes through {view.op} (at {view.meta.source or view.meta.scope or '?'}), "
                               "which has no known inverse", "write into the base tensor directly, or "
                                                             "build the result out of place (torch.cat, torch.where)")


def _now(storages) -> tuple[tuple[_Storage, int], ...]:
    """Dependencies on ``storages`` as they are now."""
    return tuple((s, s.version) for s in storages)


def _category(dtype) -> int:
    if dtype is None:
        return 9
    if dtype.is_complex:
        return 3
    if dtype.is_floating_point:
        return 2
    return 0 if dtype == torch.bool else 1


def _int_type() -> Type:
    from dexport.ir.types import INT
    return INT


def _keeps_layout(view: Node) -> bool:
    """Whether a view of a contiguous tensor is contiguous too."""
    _, name, _ = _base_name(view.op)
    if name in _SHAPE_VIEWS or name in _IDENTITY_VIEWS:
        return True
    if name in ("select", "slice"):
        return constant_input(view, 1) == 0 and (name == "select" or constant_input(view, 4) == 1)
    return False
