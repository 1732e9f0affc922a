"""The verifier: every check on its own, the stages, and what an error message says."""
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from dexport.ir import (ANY, INT, DexportError, ListType, Meta, RecordType, TensorType,
                        TupleType, VerificationError, parse, verify)
from dexport.ir.graph import Node
from tests.ir.strategies import graphs, runnable_graphs

F = TensorType(torch.float32, (2,))
I64 = TensorType(torch.int64, (2,))

TEXT = """graph(%x: f32[2], %c: bool) {
  %one: int = prim::Constant() {value=1}
  %a: f32[2] = aten::add.Tensor(%x, %x, %one)  # backbone.stem @ models/backbone.py:7
  %r: f32[2] = prim::If(%c) {  # roi_heads @ models/roi_heads.py:80
    block0() {
      %b: f32[2] = aten::relu(%a)  # roi_heads.relu @ models/roi_heads.py:81
      return (%b)
    }
    block1() {
      return (%a)
    }
  }
  %n: int = prim::Constant() {value=3}
  %l: f32[2] = prim::Loop(%n, %c, %r) {
    block0(%i: int, %acc: f32[2]) {
      %s: f32[2] = aten::mul.Tensor(%acc, %x)
      return (%c, %s)
    }
  }
  return (%l)
}
"""


def _graph():
    return parse(TEXT)


def _node(g, op):
    return next(n for n in g.nodes() if n.op == op)


def _fails(g, match, stage="captured"):
    with pytest.raises(VerificationError, match=match) as info:
        verify(g, stage)
    return info.value


def test_a_good_graph_passes_every_stage():
    g = _graph()
    for stage in ("captured", "typed", "tensors-only", "backend-ready"):
        verify(g, stage)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_generated_graphs_verify(g):
    verify(g, "typed")


@settings(max_examples=30, deadline=None)
@given(runnable_graphs())
def test_runnable_graphs_are_backend_ready(case):
    verify(case[0], "backend-ready")


def test_unknown_stage():
    with pytest.raises(DexportError, match="unknown IR stage 'final'"):
        verify(_graph(), "final")


# --------------------------------------------------------------------------- use before def / scope

def test_use_before_def():
    g = _graph()
    add, mul = _node(g, "aten::add.Tensor"), _node(g, "aten::mul.Tensor")
    add.replace_input(1, mul.output)
    err = _fails(g, r"%s is used before its definition \(by aten::mul.Tensor, later in the graph\)")
    assert err.op == "aten::add.Tensor" and err.scope == "backbone.stem"
    assert err.source == "models/backbone.py:7"
    assert ">>   %a: f32[2] = aten::add.Tensor(%x, %s, %one)" in err.context


def test_use_outside_the_defining_block():
    g = _graph()
    relu = _node(g, "aten::relu")
    mul = _node(g, "aten::mul.Tensor")
    mul.replace_input(1, relu.output)
    _fails(g, "%b is used outside the block that defines it")


def test_use_of_a_value_whose_producer_is_not_in_the_graph():
    g = _graph()
    orphan = Node("aten::neg", [g.inputs[0]], [F])
    _node(g, "aten::mul.Tensor").replace_input(1, orphan.output)
    _fails(g, "producer is not in the graph")


def test_a_nodes_block_cannot_see_the_nodes_own_outputs():
    g = _graph()
    _node(g, "aten::relu").replace_input(0, _node(g, "prim::If").output)
    _fails(g, "%r is used before its definition")


# --------------------------------------------------------------------------- use lists

def test_an_input_missing_from_the_use_list():
    g = _graph()
    relu = _node(g, "aten::relu")
    relu._inputs = (g.inputs[0],)  # bypasses the graph methods: %x's uses are not told
    err = _fails(g, "this node reads %x as input 0, but the value's use list does not say so")
    assert err.op == "aten::relu" and "use list is out of sync" in err.what


def test_a_use_that_points_at_another_input():
    g = _graph()
    relu = _node(g, "aten::relu")
    g.inputs[1].uses._d[(relu, 0)] = None  # %c claims relu's input 0, which is %a
    _fails(g, "%c lists a use as input 0 of this node, but that input is something else")


def test_a_use_by_a_node_that_is_not_in_the_graph():
    g = _graph()
    relu = _node(g, "aten::relu")
    relu.block._unlink(relu)  # unlinked without dropping its inputs
    then = _node(g, "prim::If").blocks[0]
    then.set_returns([g.inputs[0]])
    _fails(g, "%a lists a use by aten::relu, which is not in the graph")


def test_node_inputs_and_use_lists_are_read_only():
    g = _graph()
    relu = _node(g, "aten::relu")
    with pytest.raises(TypeError):
        relu.inputs[0] = g.inputs[0]
    with pytest.raises(AttributeError):
        relu.inputs = (g.inputs[0],)
    with pytest.raises(AttributeError):
        relu.inputs[0].uses.append((relu, 0))
    with pytest.raises(AttributeError):
        g.inputs[0].uses = []
    verify(g)  # nothing got through


# --------------------------------------------------------------------------- ops and arity

def test_wrong_number_of_inputs_for_the_schema():
    g = _graph()
    _node(g, "aten::add.Tensor").remove_input(2)
    err = _fails(g, r"aten::add.Tensor takes 3 inputs \(schema: aten::add.Tensor\(Tensor self, "
                    r"Tensor other, \*, Scalar alpha=1\) -> Tensor\), this node has 2")
    assert "every schema argument" in err.hint


def test_wrong_number_of_outputs():
    g = _graph()
    _node(g, "aten::relu").add_output(F)
    _fails(g, "aten::relu returns 1 outputs")


def test_wrong_arity_of_a_dexport_op():
    g = _graph()
    _node(g, "prim::Constant").add_input(g.inputs[0])
    _fails(g, "prim::Constant takes 0 inputs, this node has 1")


def test_unknown_op():
    g = _graph()
    g.create_node("aten::no_such_op", [], [F], before=_node(g, "prim::If"))
    err = _fails(g, "unknown op 'aten::no_such_op'")
    assert "torch.library" in err.hint


# --------------------------------------------------------------------------- blocks

def test_if_branch_returns_the_wrong_type():
    g = _graph()
    then = _node(g, "prim::If").blocks[1]
    then.set_returns([g.inputs[1]])
    err = _fails(g, "block1 of prim::If returns %c: bool as output 0, declared f32\\[2\\]")
    assert err.op == "prim::If" and err.scope == "roi_heads"
    assert ">>       return (%c)" in err.context


def test_if_branch_returns_the_wrong_number_of_values():
    g = _graph()
    _node(g, "prim::If").blocks[0].set_returns([])
    _fails(g, "block0 of prim::If returns 0 values for 1 outputs")


def test_if_output_may_know_less_than_its_branches():
    text = TEXT.replace("%r: f32[2] = prim::If", "%r: Tensor = prim::If").replace(
        "%l: f32[2] = prim::Loop(%n, %c, %r)", "%l: f32[*] = prim::Loop(%n, %c, %a)")
    verify(parse(text))


def test_if_needs_two_blocks():
    g = _graph()
    iff = _node(g, "prim::If")
    iff.blocks.pop()
    _fails(g, "prim::If needs exactly two blocks")


def test_loop_carried_type_mismatch():
    g = _graph()
    loop = _node(g, "prim::Loop")
    body = loop.blocks[0]
    one = g.create_node("prim::Constant", [], [INT], {"value": 1}, block=body)
    body.set_returns([body.returns[0], one.output])
    err = _fails(g, r"prim::Loop carried value 0: the body result %\d+ has type int, "
                    r"which does not fit %acc: f32\[2\]")
    assert err.op == "prim::Loop"


def test_loop_initial_value_type_mismatch():
    g = _graph()
    _node(g, "prim::Loop").replace_input(2, g.inputs[1])
    _fails(g, "carried value 0: the initial value %c has type bool")


def test_loop_body_parameters_must_match_carried_values():
    g = _graph()
    _node(g, "prim::Loop").blocks[0].add_param(F)
    _fails(g, r"needs 1 outputs and a body with 2 parameters \(iter, carried...\); it has 1 and 3")


def test_block_parameter_used_outside_its_block():
    g = _graph()
    acc = _node(g, "prim::Loop").blocks[0].params[1]
    g.set_outputs([acc])
    err = _fails(g, "block parameter %acc is used outside its block")
    assert ">>   return (%acc)" in err.context


def test_dangling_block_parameter():
    g = _graph()
    loop = _node(g, "prim::Loop")
    acc = loop.blocks[0].params[1]
    loop.replace_all_uses_with([g.inputs[0]])
    loop.erase()  # the body goes with the loop, but a use of its parameter is left behind
    g.create_node("aten::neg", [acc], [F], before=g.block.return_node)
    _fails(g, "%acc is a parameter of a block that is not attached to the graph")


# --------------------------------------------------------------------------- definitions

def test_the_same_value_defined_twice():
    g = _graph()
    relu = _node(g, "aten::relu")
    copy = g.create_node("prim::Constant", [], [F], {"value": 1}, before=g.block.return_node)
    copy.outputs = [relu.output]
    _fails(g, "value %b is defined twice: it is also an output or parameter of aten::relu")


def test_a_value_that_claims_another_producer():
    g = _graph()
    relu = _node(g, "aten::relu")
    relu.outputs[0].index = 3
    _fails(g, "is listed as definition #0 here, but says it is #3 of aten::relu")


def test_param_missing_from_graph_params():
    g = _graph()
    g.add_param("w", torch.ones(2))
    g.create_node("prim::Param", [], [F], {"name": "missing"}, before=g.block.return_node)
    err = _fails(g, "prim::Param reads 'missing', which is not in graph.params")
    assert "graph.add_param" in err.hint


def test_param_names_are_not_checked_without_params():
    g = _graph()
    g.create_node("prim::Param", [], [F], {"name": "later"}, before=g.block.return_node)
    verify(g)


def test_return_only_as_terminator():
    g = _graph()
    g.create_node("prim::Return", [], [], before=_node(g, "prim::If"))
    _fails(g, "prim::Return in the middle of a block")


# --------------------------------------------------------------------------- typed

def test_a_wrongly_typed_node_fails_the_typed_stage():
    g = parse("""graph(%x: f32[2]) {
  %n: int = prim::Constant() {value=2}
  %l: list[int] = prim::ListConstruct(%n, %n)
  %s: f32[2] = aten::size.int(%x, %n)  # backbone.stem @ models/backbone.py:7
  return (%s)
}
""")
    verify(g, "captured")  # the structure is fine
    err = _fails(g, r"typed IR: output 0 %s: f32\[2\] contradicts int, which aten::size.int's type rule "
                    r"gives \(TensorType vs ScalarType\)", "typed")
    assert err.op == "aten::size.int" and err.scope == "backbone.stem"
    assert err.source == "models/backbone.py:7" and ">>   %s: f32[2] = aten::size.int" in err.context
    _fails(g, "contradicts", "backend-ready")  # the later stages include it


@pytest.mark.parametrize("declared, rule_text, reason", [
    ("i64[2]", "f32[2]", "dtype i64 vs f32"),
    ("f32[2,1]", "f32[2]", "rank 2 vs 1"),
    ("f32[3]", "f32[2]", "dim 0: 3 vs 2"),
])
def test_dtype_rank_and_int_dims_must_agree_with_the_rule(declared, rule_text, reason):
    g = parse(f"""graph(%x: f32[2]) {{
  %t: {declared} = prim::Constant() {{value=tensor({rule_text}, [1.0, 2.0])}}
  return (%t)
}}
""".replace("[1.0, 2.0]", "[1.0, 2.0]"))
    _fails(g, re.escape(f"({reason})"), "typed")


def test_unknown_and_symbolic_dims_agree_with_anything_consistent():
    from dexport.ir.verifier import type_conflict
    from dexport.ir import parse_type as t
    for a, b in [("f32[N,3]", "f32[2,3]"), ("f32[?,3]", "f32[2,?]"), ("Tensor", "f32[2]"),
                 ("Scalar", "float"), ("Any", "list[int]"), ("optional[int]", "None"),
                 ("optional[int]", "int"), ("list[Tensor]", "list[f32[2]]"),
                 ("tuple[f32[N], int]", "tuple[Tensor, int]")]:
        assert type_conflict(t(a), t(b)) is None and type_conflict(t(b), t(a)) is None, (a, b)
    assert type_conflict(t("f32[N,3]"), t("f32[N,4]")) == "dim 1: 3 vs 4"
    assert type_conflict(t("tuple[int, int]"), t("tuple[int]")) == "2 vs 1 tuple elements"
    assert type_conflict(t("list[int]"), t("list[float]")) == "element: int vs float"


def test_a_traced_wrapped_number_is_a_typed_constant():
    g = parse("""graph(%x: f32[2]) {
  %h: f64[] = prim::Constant() {value=0.5}
  %one: int = prim::Constant() {value=1}
  %y: f32[2] = aten::add.Tensor(%x, %h, %one)
  return (%y)
}
""")
    verify(g, "typed")
    _fails(parse(str(g).replace("f64[] = prim::Constant() {value=0.5}", "i64[] = prim::Constant() {value=0.5}")),
           r"contradicts float", "typed")


def test_a_wrong_number_of_outputs_for_the_rule():
    from dexport.ir.ops import has_op, register_op
    if not has_op("test::two_ints"):
        register_op("test::two_ints", num_inputs=0, num_outputs=None, kernel=lambda node: (1, 2),
                    type_rule=lambda node: [INT, INT])
    g = parse("""graph() {
  %a: int, %b: int = test::two_ints()
  %c: int = test::two_ints()
  return (%a, %c)
}
""")
    _fails(g, "test::two_ints's type rule gives 2 outputs, this node has 1", "typed")


# --------------------------------------------------------------------------- stages

def _untyped_op() -> str:
    """An op without a type rule: any output type passes the typed stage."""
    from dexport.ir.ops import has_op, register_op
    if not has_op("test::untyped"):
        register_op("test::untyped", num_inputs=None, num_outputs=None, kernel=lambda node: ())
    return "test::untyped"


def _with(typ=None, op=None, attrs=None, inputs=()):
    g = _graph()
    node = g.create_node(op or _untyped_op(), list(inputs), [typ] if typ is not None else [], attrs or {},
                         Meta("heads.mask", "models/heads.py:3"), before=g.block.return_node)
    return g, node


RECORD = RecordType("Instances", (("scores", F),))


def test_records_are_captured_but_not_tensors_only():
    g, _ = _with(RECORD)
    verify(g, "captured")
    err = _fails(g, "has type record Instances{scores: f32\\[2\\]}: records are not allowed", "tensors-only")
    assert "dexport.register_record" in err.hint and err.scope == "heads.mask"


def test_records_nested_in_lists_are_not_tensors_only():
    g, _ = _with(ListType(TupleType((RECORD,))))
    _fails(g, "records are not allowed", "tensors-only")


def test_struct_ops_are_not_tensors_only():
    g, node = _with(RECORD, "struct::construct", {"kind": "Instances", "fields": ["scores"]})
    node.add_input(g.inputs[0])
    verify(g, "captured")
    _fails(g, "struct::construct is left in the graph", "tensors-only")


def test_record_graph_inputs_are_reported_at_the_header():
    g = parse(TEXT.replace("%c: bool) {", "%c: bool, %inst: record Instances{scores: f32[2]}) {"))
    err = _fails(g, "%inst has type record", "tensors-only")
    assert err.context.startswith(">> graph(")


@pytest.mark.parametrize("typ, ok", [
    (F, True), (INT, True), (ListType(I64), True), (ListType(INT), True),
    (TupleType((F, F)), False), (ANY, False), (ListType(ANY), False), (ListType(ListType(INT)), False),
])
def test_backend_ready_values(typ, ok):
    g, _ = _with(typ)
    verify(g, "tensors-only")
    if ok:
        verify(g, "backend-ready")
    else:
        _fails(g, "backend-ready", "backend-ready")


# --------------------------------------------------------------------------- robustness

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runnable_graphs())
def test_any_corrupted_use_list_is_caught(case):
    g, _ = case
    node = list(g.nodes())[-1]
    node.outputs[0].uses._d[(node, 0)] = None  # a use that the node does not have
    _fails(g, "use list is out of sync|lists a use")
