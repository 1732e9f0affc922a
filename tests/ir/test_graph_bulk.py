"""Graph.erase_nodes, Node.remove_output and erasing nodes with nested blocks."""
import pytest
import torch

from dexport.ir import BOOL, DexportError, Graph, TensorType

F32 = TensorType(torch.float32, (2,))


def _graph_with_if():
    g = Graph()
    x = g.add_input(F32, "x")
    c = g.add_input(BOOL, "c")
    one = g.create_node("prim::Constant", [], [F32], {"value": torch.ones(2)})
    cond = g.create_node("prim::If", [c], [F32, F32])
    then, other = cond.add_block(), cond.add_block()
    inner = g.create_node("prim::If", [c], [F32], block=then)
    deep = g.create_node("aten::relu", [x], [F32], block=inner.add_block())
    inner.blocks[0].set_returns([deep.output])
    inner.add_block().set_returns([x])
    then.set_returns([inner.output, one.output])
    other.set_returns([x, one.output])
    return g, x, one, cond


def test_create_node_into_an_empty_nested_block():
    g, x, one, cond = _graph_with_if()
    inner = cond.blocks[0].return_node.inputs[0].node
    assert inner.block is cond.blocks[0] and inner.graph is g


def test_erase_drops_uses_from_doubly_nested_blocks():
    g, x, one, cond = _graph_with_if()
    cond.erase()
    assert x.uses == [] and one.output.uses == []


def test_erase_nodes_bulk_keeps_other_uses():
    g = Graph()
    x = g.add_input(F32, "x")
    k = g.create_node("prim::Constant", [], [F32], {"value": torch.ones(2)})
    adds = [g.create_node("aten::mul.Tensor", [x, k.output], [F32]) for _ in range(5)]
    g.set_outputs([adds[2].output])
    g.erase_nodes([adds[0], adds[1], adds[3], adds[4]])
    assert x.uses == [(adds[2], 0)] and k.output.uses == [(adds[2], 1)]
    assert [n for n in g.nodes()] == [k, adds[2]]


def test_erase_nodes_with_blocks_and_duplicates():
    g, x, one, cond = _graph_with_if()
    g.erase_nodes([cond, cond])
    assert x.uses == [] and one.output.uses == [] and len(g) == 1


def test_erase_nodes_refuses_outside_use_and_changes_nothing():
    g = Graph()
    x = g.add_input(F32, "x")
    a = g.create_node("aten::relu", [x], [F32])
    b = g.create_node("aten::relu", [a.output], [F32])
    g.set_outputs([b.output])
    with pytest.raises(DexportError, match="still used by aten::relu"):
        g.erase_nodes([a])
    assert x.uses == [(a, 0)] and len(g) == 2
    g.set_outputs([x])
    g.erase_nodes([b, a])
    assert x.uses == [(g.block.return_node, 0)] and len(g) == 0


def test_remove_output_renumbers():
    g, x, one, cond = _graph_with_if()
    g.set_outputs([cond.outputs[0]])
    with pytest.raises(DexportError, match="still used"):
        cond.remove_output(0)
    g.set_outputs([cond.outputs[1]])
    cond.remove_output(0)
    assert len(cond.outputs) == 1 and cond.outputs[0].index == 0
