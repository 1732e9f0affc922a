"""Use lists are kept by the graph's own methods."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dexport.ir import DexportError, Graph, TensorType, verify
from tests.ir.strategies import runnable_graphs

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


def test_remove_input_keeps_each_uses_place_in_its_list():
    g, x, a, b = _chain()
    c = g.create_node("aten::add.Tensor", [x, a.output, x], [F32])
    assert a.output.uses == [(b, 0), (b, 1), (c, 1)]
    c.remove_input(0)   # c's later inputs shift down, in place in their use lists
    assert x.uses == [(a, 0), (c, 1)] and a.output.uses == [(b, 0), (b, 1), (c, 0)]


def test_replace_input_and_set_inputs_move_uses():
    g, x, a, b = _chain()
    b.replace_input(-1, x)
    assert b.inputs == (a.output, x) and a.output.uses == [(b, 0)] and x.uses == [(a, 0), (b, 1)]
    b.set_inputs([x, x])
    assert a.output.uses == [] and x.uses == [(a, 0), (b, 0), (b, 1)]
    with pytest.raises(IndexError):
        b.replace_input(2, x)
    with pytest.raises(TypeError, match="must be a Value"):
        b.replace_input(0, "x")


def test_uses_view_reads_like_a_list():
    g, x, a, b = _chain()
    uses = a.output.uses
    assert len(uses) == 2 and uses[0] == (b, 0) and uses[-1] == (b, 1) and uses[1] == (b, 1)
    assert (b, 1) in uses and (b, 2) not in uses and list(uses) == [(b, 0), (b, 1)]
    with pytest.raises(IndexError):
        uses[2]
    assert a.output.users() == [b]


def test_replacing_uses_of_a_widely_shared_value_is_linear():
    # 20k readers of one value: replacing and erasing them one by one stays O(1) per
    # use, so this finishes at once (with list use lists it rescanned 20k entries each)
    g = Graph()
    x, y = g.add_input(F32, "x"), g.add_input(F32, "y")
    readers = [g.create_node("aten::relu", [x], [F32]) for _ in range(20000)]
    for r in readers[::2]:
        r.replace_input(0, y)
    assert len(x.uses) == len(y.uses) == 10000 and x.uses[0] == (readers[1], 0)
    for r in readers:
        r.erase()
    assert not x.uses and not y.uses


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runnable_graphs(), st.data())
def test_random_rewiring_keeps_use_lists_in_sync(case, data):
    """Any sequence of replace/remove/add input and replace-all-uses edits, each to a
    value visible at the node, leaves a graph whose use lists the verifier accepts."""
    g, _ = case
    top = list(g.block.nodes)
    for _ in range(data.draw(st.integers(0, 12))):
        pos = data.draw(st.integers(0, len(top)))
        node = top[pos] if pos < len(top) else g.block.return_node
        visible = list(g.inputs) + [o for n in top[:pos] for o in n.outputs]
        edit = data.draw(st.sampled_from(["replace", "remove", "add", "rauw"]))
        if edit == "rauw" and pos < len(top) and node.outputs and visible:
            # a value defined before the node is visible wherever the node's outputs are used
            out = data.draw(st.sampled_from(node.outputs))
            out.replace_all_uses_with(data.draw(st.sampled_from(visible)))
        elif node is not g.block.return_node:
            continue  # arity of real ops is fixed by their schema: rewire the return node only
        elif edit == "replace" and node.inputs and visible:
            node.replace_input(data.draw(st.integers(0, len(node.inputs) - 1)),
                               data.draw(st.sampled_from(visible)))
        elif edit == "remove" and node.inputs:
            node.remove_input(data.draw(st.integers(0, len(node.inputs) - 1)))
        elif edit == "add" and visible:
            node.add_input(data.draw(st.sampled_from(visible)))
    verify(g)
    for v in list(g.inputs) + [o for n in g.nodes() for o in n.outputs]:
        readers = [(n, i) for n in list(g.nodes()) + [g.block.return_node]
                   for i, x in enumerate(n.inputs) if x is v]
        assert sorted(map(_key, v.uses)) == sorted(map(_key, readers))


def _key(use):
    return (id(use[0]), use[1])
