"""What an op does besides computing its outputs: the facts dce, cse and
fold-constants need before they may delete, merge or pre-compute a node.

* **side effects**: the node must run even if nobody reads its outputs
  (asserts, printing, raising, anything that writes to an argument).
* **mutates**: the op writes to one of its arguments (in-place ``aten::add_``,
  ``out=`` variants, ``aten::append``); read from torch's schema alias info.
* **random**: two runs may differ (torch tags these ``nondeterministic_seeded``).

Ops nobody knows (neither torch nor dexport's registry) are assumed to have
side effects, so the cleanup passes leave them alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from dexport.ir.errors import DexportError
from dexport.ir.graph import Graph, Node
from dexport.ir.ops import get_op, has_op, overload_of

# Ops that must run even when their results are unused.
SIDE_EFFECT_OPS = frozenset({
    "prim::RaiseException", "prim::Print", "prim::SetAttr",
    "aten::warn", "aten::_print",
    "aten::_assert_async", "aten::_assert_async.msg", "aten::_assert_scalar",
    "aten::_assert_tensor_metadata", "aten::_functional_assert_async.msg",
    "aten::_functional_assert_scalar",
    "aten::sym_constrain_range", "aten::sym_constrain_range_for_size",
    "aten::manual_seed", "aten::seed",
})


@dataclass(frozen=True)
class OpEffects:
    side_effects: bool
    mutates: bool
    random: bool


@lru_cache(maxsize=None)
def op_effects(op: str) -> OpEffects:
    """The effects of op ``op`` (cached per name)."""
    if not has_op(op):
        return OpEffects(side_effects=True, mutates=False, random=False)
    schema = get_op(op).schema
    if schema is None:  # dexport-owned: pure unless listed
        return OpEffects(op in SIDE_EFFECT_OPS, False, False)
    mutates = bool(schema.is_mutable)
    try:
        tags = overload_of(op).tags
    except DexportError:
        tags = ()
    random = torch.Tag.nondeterministic_seeded in tags
    return OpEffects(mutates or op in SIDE_EFFECT_OPS, mutates, random)


def has_side_effects(node: Node) -> bool:
    """Whether ``node`` (or any node in its blocks) must run even if unused."""
    if op_effects(node.op).side_effects:
        return True
    return any(has_side_effects(n) for b in node.blocks for n in b.nodes)


def is_random(node: Node) -> bool:
    if op_effects(node.op).random:
        return True
    return any(is_random(n) for b in node.blocks for n in b.nodes)


def graph_mutates(graph: Graph) -> bool:
    """Whether any node writes to an argument. With mutation, two equal-looking
    expressions (or a copy and its source) can hold different values."""
    return any(op_effects(n.op).mutates for n in graph.nodes())
