"""Use lists are kept by the graph's own methods."""
import pytest
import torch

from dexport.ir import DexportError, Graph, TensorType

F32 = TensorType(torch.float32, (2, 3))


def _chain():
    g = Graph()
    x = g.add_input(F32, "x")
    a = g.create_node("aten::relu", [x], [F32])
    b = g.create_node("aten::mul.Tensor", [a.output, a.output], [F32])
    g.set_outputs([b.output])
    return g, x, a, b


def test_uses_follow_inputs():
    g, x, a, b = _chain()
    assert x.uses == [(a, 0)]
    assert a.output.uses == [(b, 0), (b, 1)]
    assert b.output.uses == [(g.block.return_node, 0)]


def test_replace_all_uses_and_erase():
    g, x, a, b = _chain()
    a.output.replace_all_uses_with(x)
    assert a.output.uses == [] and x.uses == [(a, 0), (b, 0), (b, 1)]
    a.erase()
    assert x.uses == [(b, 0), (b, 1)]
    assert [n.op for n in g.nodes()] == ["aten::mul.Tensor"]


def test_erase_refuses_a_used_node():
    g, x, a, b = _chain()
    with pytest.raises(DexportError, match="still used by aten::mul.Tensor"):
        a.erase()


def test_remove_input_renumbers_later_uses():
    g, x, a, b = _chain()
    b.remove_input(0)
    assert a.output.uses == [(b, 0)]


def test_clone_is_independent():
    g, x, a, b = _chain()
    h = g.clone()
    assert [n.op for n in h.nodes()] == [n.op for n in g.nodes()]
    next(h.nodes()).outputs[0].name_hint = "changed"
    assert a.output.name_hint is None
    assert h.inputs[0] is not x and h.inputs[0].uses[0][0] is not a
