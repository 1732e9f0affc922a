"""``fold-constants``: pre-compute nodes whose inputs are all constants or parameters."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from dexport.ir.errors import DexportError
from dexport.ir.graph import CONSTANT, PARAM, SMALL_TENSOR_NUMEL, Graph, Node, Value
from dexport.ir.interpreter import evaluate_node
from dexport.ir.types import BOOL, FLOAT, INT, STR, TensorType, tensor_type_of
from dexport.passes.base import Pass, register_pass
from dexport.passes.effects import graph_mutates, has_side_effects, is_random, op_effects
from dexport.passes.scripted import fold_control_flow

_PLAIN = (bool, int, float, str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format)


def _plain(value: Any) -> bool:
    """Whether ``value`` can be a constant attribute (tensors are handled apart)."""
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def _static_numel(value: Value) -> int | None:
    t = value.type
    if isinstance(t, TensorType) and t.is_static:
        return math.prod(t.shape)
    return None


@register_pass
class FoldConstants(Pass):
    """Evaluates (with the interpreter's kernels) every node whose inputs all come
    from ``prim::Constant`` / ``prim::Param`` (or lists built of constants) and replaces its outputs: small
    tensors and plain values by ``prim::Constant``, bigger tensors by new
    parameters. One forward walk folds whole constant chains, since a folded
    node's readers come after it. Never folds side-effecting or random ops,
    nodes with blocks, or outputs over ``max_elements`` elements (folding
    ``aten::zeros([4096, 4096])`` would only bloat the artifact). Nodes whose
    kernel fails are left for the run time to report. An If or a Loop whose
    condition or trip count this made constant is inlined or unrolled
    (``dexport.passes.scripted.CONTROL_FLOW_RULES``) and the walk repeats.

    A graph that still mutates tensors in place (not ``functional``: run
    ``functionalize`` first, as the default pipeline does) is left alone: a folded
    value would be computed once, at compile time, and then mutated across runs or
    loop trips.
    """
    name = "fold-constants"

    @dataclass(frozen=True)
    class Options:
        max_elements: int = 1_000_000  # never fold a tensor output bigger than this
        inline_elements: int = SMALL_TENSOR_NUMEL  # tensors up to this size become prim::Constant

    def run(self, graph: Graph) -> bool:
        if graph_mutates(graph):
            return False
        changed = False
        # A folded condition or trip count decides an If or a Loop; what that inlines
        # may fold further.
        while True:
            changed |= self._fold_walk(graph)
            if not fold_control_flow(graph):
                return changed
            changed = True

    def _fold_walk(self, graph: Graph) -> bool:
        folded: list[Node] = []
        for node in graph.nodes():
            if not self._foldable(node):
                continue
            replacements = self._fold(graph, node)
            if replacements is not None:
                node.replace_all_uses_with(replacements)
                folded.append(node)
        graph.erase_nodes(folded)
        return bool(folded)

    def _foldable(self, node: Node) -> bool:
        if node.op in (CONSTANT, PARAM) or node.blocks or not node.outputs:
            return False
        for v in node.inputs:
            producer = v.node
            if producer is None or (producer.op not in (CONSTANT, PARAM) and _plain_input(v) is _NOT_PLAIN):
                return False
        for out in node.outputs:
            numel = _static_numel(out)
            if numel is not None and numel > self.options.max_elements:
                return False
        return not has_side_effects(node) and not is_random(node)

    def _fold(self, graph: Graph, node: Node) -> list[Value] | None:
        inputs = [graph.params[v.node.attrs["name"]] if v.node.op == PARAM
                  else v.node.attrs["value"] if v.node.op == CONSTANT else _plain_input(v)
                  for v in node.inputs]
        try:
            with torch.no_grad():
                results = evaluate_node(node, inputs)
        except DexportError:
            return None
        if len(results) != len(node.outputs):
            return None
        for r in results:
            if isinstance(r, torch.Tensor):
                if r.numel() > self.options.max_elements or r.is_sparse or r.is_quantized:
                    return None
            elif not _plain(r):
                return None
        sources = [t for t in inputs if isinstance(t, torch.Tensor)]
        return [self._materialize(graph, node, out, r, sources) for out, r in zip(node.outputs, results)]

    def _materialize(self, graph: Graph, node: Node, out: Value, result: Any,
                     sources: list[torch.Tensor]) -> Value:
        if not isinstance(result, torch.Tensor):
            return graph.create_node(CONSTANT, [], [out.type], {"value": result},
                                     node.meta.copy(), before=node).output
        # A view of an input would keep that input's storage alive (and two saved
        # parameters sharing storage); give the folded value its own memory.
        storage = result.untyped_storage().data_ptr()
        if any(t.untyped_storage().data_ptr() == storage for t in sources) or not result.is_contiguous():
            result = result.clone(memory_format=torch.contiguous_format)
        result = result.detach()
        if result.numel() <= self.options.inline_elements:
            return graph.create_node(CONSTANT, [], [tensor_type_of(result)], {"value": result},
                                     node.meta.copy(), before=node).output
        base = next((v.node.attrs["name"] + ".folded" for v in node.inputs if v.node.op == PARAM), "folded")
        return graph.add_param(graph.unique_param_name(base), result, before=node)


_SCALAR_TYPES = (bool, int, float, str)
_SCALAR_IR_TYPES = (INT, FLOAT, BOOL, STR)


def fold_scalars(graph: Graph) -> int:
    """Fold the nodes that compute plain numbers and strings from constants (and from
    lists of constants built in the graph): ``x.dim() - 2``, ``len(sizes)``,
    ``min(len(a), len(b))``, comparisons. Safe in a graph that still mutates tensors,
    as no in-place op can change a number; ``functionalize`` runs it so the loops and
    branches that scripted code decides by ranks and counts are gone before it looks
    at writes inside blocks. Returns the number of nodes folded."""
    folded = []
    for node in graph.nodes():
        if (node.op in (CONSTANT, PARAM) or node.blocks or not node.outputs
                or not all(o.type in _SCALAR_IR_TYPES for o in node.outputs)
                or has_side_effects(node) or is_random(node)):
            continue
        inputs = [_plain_input(v) for v in node.inputs]
        if any(x is _NOT_PLAIN for x in inputs):
            continue
        try:
            results = evaluate_node(node, inputs)
        except Exception:  # left for the run time to report
            continue
        if len(results) != len(node.outputs) or not all(isinstance(r, _SCALAR_TYPES) for r in results):
            continue
        node.replace_all_uses_with([graph.create_node(CONSTANT, [], [o.type], {"value": r}, node.meta.copy(),
                                                      before=node).output for o, r in zip(node.outputs, results)])
        folded.append(node)
    graph.erase_nodes(folded)
    return len(folded)


_NOT_PLAIN = object()


def _plain_input(value: Value) -> Any:
    node = value.node
    if node is not None and node.op == CONSTANT and _plain(node.attrs["value"]):
        return node.attrs["value"]
    if node is not None and node.op == "prim::ListConstruct" and not any(
            op_effects(u.op).mutates for u in value.users()):
        items = [_plain_input(v) for v in node.inputs]
        return _NOT_PLAIN if any(x is _NOT_PLAIN for x in items) else items
    return _NOT_PLAIN
