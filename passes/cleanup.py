"""The standard cleanups: dead code elimination (``dce``) and common
subexpression elimination (``cse``). Both are linear in the graph size."""
from __future__ import annotations

from typing import Any

import torch

from dexport.ir.graph import CONSTANT, PARAM, Block, Graph, Node
from dexport.ir.types import Type
from dexport.passes.base import Pass, register_pass
from dexport.passes.effects import graph_mutates, has_side_effects, op_effects


# --------------------------------------------------------------------------- dce

@register_pass
class DeadCodeElimination(Pass):
    """Removes nodes whose outputs nobody reads and that have no side effects,
    unused results of ``prim::If``, loop-carried values of ``prim::Loop`` that
    only feed themselves, and parameter tensors no ``prim::Param`` reads.

    One reverse walk marks dead nodes (a node's readers are always walked
    before it), then they are erased in one batch. Removing If/Loop results can
    kill more nodes, so the two steps repeat until neither finds anything.
    """
    name = "dce"

    def run(self, graph: Graph) -> bool:
        changed = False
        while True:
            control: list[Node] = []
            dead = _mark_dead(graph.block, control)
            graph.erase_nodes(dead)
            pruned = [n for n in control if n.graph is graph and _prune_results(graph, n)]
            changed |= bool(dead) or bool(pruned)
            if not pruned:
                break
        return _drop_unread_params(graph) or changed


def _mark_dead(block: Block, control: list[Node], dead_ids: set[int] | None = None) -> list[Node]:
    """Dead nodes of ``block`` and its nested blocks; nodes with blocks go to ``control``."""
    dead_ids = set() if dead_ids is None else dead_ids
    dead: list[Node] = []
    for node in block.reversed_nodes():
        if node.blocks:
            control.append(node)
            for b in node.blocks:
                dead += _mark_dead(b, control, dead_ids)
            if has_side_effects(node):
                continue
        elif op_effects(node.op).side_effects:
            continue
        if _all_uses_dead(node, dead_ids):
            dead.append(node)
            dead_ids.add(id(node))
            if node.blocks:  # what its blocks read is read by no one now
                _add_nested(node, dead_ids)
    return dead


def _all_uses_dead(node: Node, dead_ids: set[int]) -> bool:
    for out in node.outputs:
        for user, _ in out.uses:
            if id(user) not in dead_ids:
                return False
    return True


def _add_nested(node: Node, ids: set[int]) -> None:
    for b in node.blocks:
        ids.add(id(b.return_node))
        for n in b.nodes:
            ids.add(id(n))
            _add_nested(n, ids)


def _prune_results(graph: Graph, node: Node) -> bool:
    """Drop unused results of an If, or dead carried values of a Loop."""
    if node.op == "prim::If":
        unused = [k for k, out in enumerate(node.outputs) if not out.uses]
        for k in reversed(unused):
            for b in node.blocks:
                b.return_node.remove_input(k)
            node.remove_output(k)
        return bool(unused)
    if node.op == "prim::Loop":
        # inputs (max_trip, cond, *carried); body params (iter, *carried);
        # body returns (cond, *carried); outputs (*carried)
        body = node.blocks[0]
        dead = _dead_carried(node)
        for k in reversed(dead):
            body.return_node.remove_input(1 + k)
            node.remove_input(2 + k)
            node.remove_output(k)
        if dead:
            graph.erase_nodes(_mark_dead(body, []))
            for k in reversed(dead):
                body.remove_param(1 + k)
        return bool(dead)
    return False


def _dead_carried(loop: Node) -> list[int]:
    """Carried values whose loop output is unused and whose body parameter only
    feeds the computation of dead carried values (e.g. ``b = b * 2``)."""
    body = loop.blocks[0]
    ret = body.return_node
    live = [bool(out.uses) for out in loop.outputs]

    def top(user: Node) -> Node:  # the body-level node that holds ``user``
        while user.block is not body:
            user = user.block.owner
        return user

    def live_use(user: Node, index: int, live_nodes: set[int]) -> bool:
        holder = top(user)
        if holder is ret:
            return index == 0 or live[index - 1]
        return id(holder) in live_nodes

    while True:
        live_nodes: set[int] = set()
        for n in body.reversed_nodes():
            if has_side_effects(n) or any(live_use(u, i, live_nodes) for out in n.outputs for u, i in out.uses):
                live_nodes.add(id(n))
        grew = False
        for k, is_live in enumerate(live):
            if not is_live and any(live_use(u, i, live_nodes) for u, i in body.params[1 + k].uses):
                live[k] = grew = True
        if not grew:
            return [k for k, is_live in enumerate(live) if not is_live]


def _drop_unread_params(graph: Graph) -> bool:
    read = {n.attrs["name"] for n in graph.nodes() if n.op == PARAM}
    if all(name in read for name in graph.params):
        return False
    graph.params = {name: t for name, t in graph.params.items() if name in read}
    return True


# --------------------------------------------------------------------------- cse

class _Unhashable(Exception):
    pass


_SIMPLE = frozenset({int, str, bool, type(None), torch.dtype, torch.device, torch.layout,
                     torch.memory_format})


def _freeze(x: Any) -> Any:
    """A hashable key equal for equal attribute values and different for values
    Python calls equal but the IR does not (True vs 1, 0.0 vs -0.0)."""
    kind = type(x)
    if kind in _SIMPLE:
        return (kind, x)
    if kind is float:
        return (float, x.hex())
    if kind is list or kind is tuple:
        return (kind, tuple([_freeze(e) for e in x]))
    if isinstance(x, torch.Tensor):
        flat = x.detach().cpu().contiguous().reshape(-1)
        return (torch.Tensor, x.dtype, tuple(x.shape), flat.view(torch.uint8).numpy().tobytes())
    raise _Unhashable


def _immutable_constant(node: Node) -> bool:
    value = node.attrs.get("value")
    return not isinstance(value, (list, torch.Tensor))


@register_pass
class CommonSubexpressionElimination(Pass):
    """Merges nodes with the same op, inputs, attributes and output types.

    Value numbering in one pre-order walk: a node may reuse an equal node that
    dominates it (earlier in its block or in an enclosing block, never one in a
    sibling block). Side-effecting and random ops are never merged, nor are
    nodes with blocks. If the graph mutates anything in place, equal-looking
    expressions may hold different values, so only immutable constants are
    merged then (run ``functionalize`` first, as the default pipeline does, to get
    the rest).
    """
    name = "cse"

    def run(self, graph: Graph) -> bool:
        self.only_constants = graph_mutates(graph)
        self.table: dict[tuple, Node] = {}
        self.merged: list[Node] = []
        self.mergeable_ops: dict[str, bool] = {}
        # Types are hashed by value once per type object, not once per node.
        self.type_numbers: dict[Type, int] = {}
        self.type_number_of: dict[int, int] = {}  # id(type) -> number; types outlive the pass
        self._block(graph.block)
        graph.erase_nodes(self.merged)
        return bool(self.merged)

    def _block(self, block: Block) -> None:
        added: list[tuple] = []  # keys visible only inside this block
        table = self.table
        for node in block.nodes:
            if node.blocks:
                for b in node.blocks:
                    self._block(b)
                continue
            key = self._key(node)
            if key is None:
                continue
            twin = table.get(key)
            if twin is None:
                table[key] = node
                added.append(key)
            else:
                node.replace_all_uses_with(twin.outputs)
                self.merged.append(node)
        for key in added:
            del table[key]  # leaving the block: its values do not dominate what follows

    def _mergeable_op(self, op: str) -> bool:
        if op == CONSTANT:
            return True
        if self.only_constants:
            return False
        effects = op_effects(op)
        return op == PARAM or not (effects.side_effects or effects.random)

    def _type_number(self, t: Type) -> int:
        number = self.type_number_of.get(id(t))
        if number is None:
            number = self.type_number_of[id(t)] = self.type_numbers.setdefault(t, len(self.type_numbers))
        return number

    def _key(self, node: Node) -> tuple | None:
        op = node.op
        ok = self.mergeable_ops.get(op)
        if ok is None:
            ok = self.mergeable_ops[op] = self._mergeable_op(op)
        outputs = node.outputs
        if not ok or not outputs or (self.only_constants and not _immutable_constant(node)):
            return None
        attrs = ()
        if node.attrs:
            try:
                attrs = tuple([(k, _freeze(v)) for k, v in sorted(node.attrs.items())])
            except _Unhashable:
                return None
        types = tuple([self._type_number(o.type) for o in outputs])
        return (op, tuple(map(id, node.inputs)), attrs, types)
