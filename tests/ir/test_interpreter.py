"""The interpreter on hand-built graphs: straight-line code, prim::If, prim::Loop,
freeing dead values, observers, structured I/O and error messages."""
import gc
import weakref

import pytest
import torch

from dexport.ir import BOOL, INT, Graph, InterpreterError, Meta, TensorType
from dexport.ir.interpreter import evaluate_node, run, run_structured
from dexport.ir.schema import flatten

T = TensorType(torch.float32, (2,))


def const(g, value, typ=INT, **where):
    return g.create_node("prim::Constant", [], [typ], {"value": value}, **where).output


def add(g, a, b, alpha=1, **where):
    return g.create_node("aten::add.Tensor", [a, b, const(g, alpha, **where)], [T], **where).output


def test_straight_line_with_params_and_kwarg_only_args():
    g = Graph()
    x = g.add_input(T, "x")
    w = g.add_param("w", torch.tensor([1.0, 2.0]))
    g.set_outputs([add(g, x, w, alpha=3)])
    (out,) = run(g, [torch.tensor([10.0, 20.0])])
    assert out.tolist() == [13.0, 26.0]


def _if_graph():
    """out = x + 1 if c else x * x, with both blocks reading the outer x."""
    g = Graph()
    c = g.add_input(BOOL, "c")
    x = g.add_input(T, "x")
    node = g.create_node("prim::If", [c], [T])
    then, other = node.add_block(), node.add_block()
    one = const(g, 1.0, block=then)
    then.set_returns([g.create_node("aten::add.Scalar", [x, one, const(g, 1, block=then)], [T],
                                    block=then).output])
    other.set_returns([g.create_node("aten::mul.Tensor", [x, x], [T], block=other).output])
    g.set_outputs([node.output])
    return g


def test_if_runs_the_taken_block():
    g = _if_graph()
    x = torch.tensor([2.0, 3.0])
    assert run(g, [True, x])[0].tolist() == [3.0, 4.0]
    assert run(g, [torch.tensor(False), x])[0].tolist() == [4.0, 9.0]


def _loop_graph(with_break: bool):
    """acc = 0; for i in range(n): acc = acc + x * i  (optionally: while sum(acc) < 10)."""
    g = Graph()
    n = g.add_input(INT, "n")
    x = g.add_input(T, "x")
    zero = g.create_node("aten::zeros_like", [x] + [const(g, None)] * 5, [T]).output
    loop = g.create_node("prim::Loop", [n, const(g, True, BOOL), zero], [T])
    body = loop.add_block()
    i, acc = body.add_param(INT, "i"), body.add_param(T, "acc")
    scaled = g.create_node("aten::mul.Scalar", [x, i], [T], block=body).output
    new_acc = add(g, acc, scaled, block=body)
    if with_break:
        total = g.create_node("aten::sum", [new_acc, const(g, None, block=body)], [T], block=body).output
        cond = g.create_node("aten::lt.Scalar", [total, const(g, 10, block=body)], [T], block=body).output
    else:
        cond = const(g, True, BOOL, block=body)
    body.set_returns([cond, new_acc])
    g.set_outputs([loop.output])
    return g


def test_loop_carries_values_and_reads_outer_ones():
    g = _loop_graph(with_break=False)
    x = torch.tensor([1.0, 2.0])
    assert run(g, [4, x])[0].tolist() == [6.0, 12.0]   # x * (0+1+2+3)
    assert run(g, [0, x])[0].tolist() == [0.0, 0.0]    # no trip: the initial value


def test_loop_stops_when_the_body_condition_fails():
    g = _loop_graph(with_break=True)
    # acc after trips: 0, 3, 9, 18 -> stops once sum(acc) >= 10
    assert run(g, [100, torch.tensor([1.0, 2.0])])[0].tolist() == [6.0, 12.0]


def test_nested_if_inside_loop_and_observer_sees_every_execution():
    g = Graph()
    n = g.add_input(INT, "n")
    x = g.add_input(T, "x")
    loop = g.create_node("prim::Loop", [n, const(g, True, BOOL), x], [T])
    body = loop.add_block()
    i, acc = body.add_param(INT, "i"), body.add_param(T, "acc")
    is_even = g.create_node("aten::eq.int", [g.create_node("aten::remainder.int", [i, const(g, 2, block=body)],
                                                           [INT], block=body).output,
                                             const(g, 0, block=body)], [BOOL], block=body).output
    branch = g.create_node("prim::If", [is_even], [T], block=body)
    even, odd = branch.add_block(), branch.add_block()
    even.set_returns([g.create_node("aten::neg", [acc], [T], block=even).output])
    odd.set_returns([acc])  # a block returning an outer value unchanged
    body.set_returns([const(g, True, BOOL, block=body), branch.output])
    g.set_outputs([loop.output])
    seen = []
    (out,) = run(g, [3, torch.tensor([1.0, -1.0])], observe=lambda node, outs: seen.append(node.op))
    assert out.tolist() == [1.0, -1.0]  # negated at i=0 and i=2
    assert seen.count("aten::neg") == 2 and seen.count("prim::If") == 3
    assert seen[-1] == "prim::Loop"


def test_dead_values_are_freed_after_their_last_use():
    g = Graph()
    x = g.add_input(T, "x")
    a = g.create_node("aten::relu", [x], [T]).output
    b = g.create_node("aten::neg", [a], [T]).output
    unused = g.create_node("aten::neg", [b], [T]).output  # never read: dropped at once
    c = g.create_node("aten::neg", [b], [T]).output
    d = g.create_node("aten::neg", [c], [T]).output
    g.set_outputs([d])
    refs, alive_at_end = {}, {}

    def observe(node, outs):
        refs[node.outputs[0]] = weakref.ref(outs[0])
        if node.outputs[0] is d:
            gc.collect()
            alive_at_end.update({v: r() is not None for v, r in refs.items()})

    run(g, [torch.ones(2)], observe=observe)
    # c is d's input, so it is dropped right after d (and its observer) ran.
    assert alive_at_end == {a: False, b: False, unused: False, c: True, d: True}


def test_kernel_failure_names_op_scope_source_and_shapes():
    g = Graph()
    x = g.add_input(TensorType(torch.float32, (2, 3)), "x")
    y = g.add_input(TensorType(torch.float32, (4, 5)), "y")
    where = Meta(scope="backbone.res2.0", source="dexport/models/backbone.py:42")
    g.set_outputs([g.create_node("aten::mm", [x, y], [T], meta=where).output])
    with pytest.raises(InterpreterError) as info:
        run(g, [torch.zeros(2, 3), torch.zeros(4, 5)])
    err = info.value
    assert err.op == "aten::mm" and err.scope == "backbone.res2.0"
    assert err.source == "dexport/models/backbone.py:42"
    assert "f32[2,3], f32[4,5]" in err.what and "aten::mm" in err.context
    assert "what to do" in str(err)


def test_failure_inside_a_block_names_the_inner_node():
    g = _if_graph()
    with pytest.raises(InterpreterError) as info:
        run(g, [False, "not a tensor"])
    assert info.value.op == "aten::mul.Tensor"


def test_wrong_number_of_inputs():
    with pytest.raises(InterpreterError, match="takes 2 inputs, got 1"):
        run(_if_graph(), [True])


def test_unknown_op_at_run_time():
    g = Graph()
    x = g.add_input(T, "x")
    g.set_outputs([g.create_node("aten::frobnicate", [x], [T], meta=Meta(scope="head")).output])
    with pytest.raises(InterpreterError, match="unknown op 'aten::frobnicate'") as info:
        run(g, [torch.ones(2)])
    assert info.value.scope == "head"


def test_evaluate_node_runs_single_nodes_and_self_contained_blocks():
    g = _if_graph()
    node = next(n for n in g.nodes() if n.op == "aten::add.Scalar")
    assert evaluate_node(node, [torch.ones(2), 1.0, 1])[0].tolist() == [2.0, 2.0]
    # An If whose blocks read only constants from outside can be evaluated on its own.
    h = Graph()
    c = h.add_input(BOOL, "c")
    five = const(h, 5)
    branch = h.create_node("prim::If", [c], [INT])
    for block in (branch.add_block(), branch.add_block()):
        block.set_returns([five])
    assert evaluate_node(branch, [True]) == (5,)
    # ... but not one that reads a graph input.
    if_node = next(n for n in g.nodes() if n.op == "prim::If")
    with pytest.raises(InterpreterError, match="used before it has been computed"):
        evaluate_node(if_node, [True])


def test_run_structured_with_and_without_schemas():
    g = Graph()
    a, b = g.add_input(T, "a"), g.add_input(T, "b")
    s = add(g, a, b)
    g.set_outputs([s, a])
    x, y = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])
    out = run_structured(g, (x, y))
    assert isinstance(out, tuple) and out[0].tolist() == [4.0, 6.0]
    _, g.input_schema = flatten(({"a": x, "b": y},))
    _, g.output_schema = flatten([{"sum": x}, x])
    out = g({"a": x, "b": y})
    assert list(out[0]) == ["sum"] and out[0]["sum"].tolist() == [4.0, 6.0] and out[1] is x
    g.set_outputs([s])
    g.output_schema = None
    assert isinstance(g({"a": x, "b": y}), torch.Tensor)
