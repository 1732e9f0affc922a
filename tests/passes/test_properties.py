"""Property tests: every cleanup pass keeps the verifier green and the
interpreter's outputs unchanged, and a second run finds nothing more to do."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dexport.ir import INT, NONE, ListType, TensorType
from dexport.ir.verifier import verify
from dexport.passes import PassManager, get_pass
from tests.ir.strategies import graphs, runnable_graphs

CLEANUPS = ["dce", "cse", "fold-constants", "canonicalize"]
PIPELINE = "canonicalize,fold-constants,cse,dce"
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def graphs_with_identities(draw):
    """A runnable graph with identities spliced in after some values: clones,
    detaches, same-shape views, multiplications by ones, additions of zeros."""
    g, inputs = draw(runnable_graphs())
    values = [v for n in g.nodes() for v in n.outputs if isinstance(v.type, TensorType)] + list(g.inputs)
    for v in draw(st.lists(st.sampled_from(values), max_size=4)):
        users = list(v.uses)
        if not users:
            continue
        t = v.type
        kind = draw(st.sampled_from(["clone", "detach", "view", "mul1", "add0"]))
        # the new node goes right before the earliest user
        anchor = min((u for u, _ in users), key=_position(g))
        if kind == "clone":
            none = g.create_node("prim::Constant", [], [NONE], {"value": None}, before=anchor).output
            new = g.create_node("aten::clone", [v, none], [t], before=anchor)
        elif kind == "detach":
            new = g.create_node("aten::detach", [v], [t], before=anchor)
        elif kind == "view":
            size = [-1] + list(t.shape[1:])
            s = g.create_node("prim::Constant", [], [ListType(INT)], {"value": size}, before=anchor).output
            new = g.create_node("aten::view", [v, s], [t], before=anchor)
        elif kind == "mul1":
            one = g.create_node("prim::Constant", [], [TensorType(torch.float32, t.shape[-1:])],
                                {"value": torch.ones(t.shape[-1:])}, before=anchor).output
            new = g.create_node("aten::mul.Tensor", [v, one], [t], before=anchor)
        else:
            zero = g.create_node("prim::Constant", [], [INT], {"value": 0}, before=anchor).output
            alpha = g.create_node("prim::Constant", [], [INT], {"value": 1}, before=anchor).output
            new = g.create_node("aten::add.Scalar", [v, zero, alpha], [t], before=anchor)
        for user, i in users:
            user.replace_input(i, new.output)
    return g, inputs


def _position(g):
    order = {id(n): i for i, n in enumerate(g.nodes())}
    order[id(g.block.return_node)] = len(order)
    return lambda n: order[id(n)]


def _check(spec, g, inputs):
    before = g(*inputs)
    PassManager(spec, verify_each=True, validate_with=inputs, atol=0.0).run(g)
    verify(g)
    after = g(*inputs)
    before = before if isinstance(before, tuple) else (before,)
    after = after if isinstance(after, tuple) else (after,)
    assert all(torch.allclose(a, b, rtol=0, atol=0, equal_nan=True) for a, b in zip(before, after))


@pytest.mark.parametrize("name", CLEANUPS)
@SETTINGS
@given(case=graphs_with_identities())
def test_cleanup_keeps_behaviour_and_is_idempotent(name, case):
    g, inputs = case
    _check(name, g, inputs)
    assert not get_pass(name).run(g), f"a second {name} still changed the graph"


@SETTINGS
@given(case=graphs_with_identities())
def test_cleanup_pipeline_leaves_no_identities_or_duplicates(case):
    g, inputs = case
    _check(PIPELINE, g, inputs)
    ops = [n.op for n in g.nodes()]
    assert not {"aten::clone", "aten::detach", "aten::view", "aten::add.Scalar"} & set(ops)
    assert not get_pass("cse").run(g) and not get_pass("dce").run(g)


# graphs() is slow to draw (its passes take a few ms), so each drawn graph serves every pass.
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(g=graphs())
def test_cleanup_keeps_structural_graphs_verified(g):
    for spec in CLEANUPS + [PIPELINE]:
        h = g.clone()
        PassManager(spec, verify_each=True).run(h)
        verify(h)
        if spec in CLEANUPS:
            assert not get_pass(spec).run(h), f"a second {spec} still changed the graph"
