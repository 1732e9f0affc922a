"""The text form: exact round trips, the format itself, context lines, parse errors."""
import math
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from dexport.ir import (BOOL, INT, Graph, IRParseError, ListType, Meta, TensorType, format_context,
                        parse, print_graph, verify)
from dexport.ir.interpreter import run
from dexport.ir.schema import flatten
from tests.ir.strategies import graphs, runnable_graphs

F = TensorType(torch.float32, (2, "N"))
_SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(graphs())
def test_print_parse_print_is_identity(g):
    text = print_graph(g)
    again = parse(text, g.params)
    assert print_graph(again) == text
    verify(again)


@settings(max_examples=40, deadline=None)
@given(runnable_graphs())
def test_a_reparsed_graph_computes_the_same(case):
    g, inputs = case
    again = parse(print_graph(g), g.params)
    for a, b in zip(run(g, inputs), run(again, inputs)):
        assert torch.equal(a, b)


def _sample_graph():
    g = Graph()
    x = g.add_input(F, "x")
    c = g.add_input(BOOL, "1bad")  # not usable as a name: numbered
    w = g.add_param("conv.weight", torch.ones(2))
    one = g.create_node("prim::Constant", [], [INT], {"value": 1}).output
    add = g.create_node("aten::add.Tensor", [x, w, one], [F], {"z": "s", "a": [1.5, (2,)]},
                        Meta("backbone.conv1", "models/backbone.py:42", ("postprocess", "two words")))
    add.output.name_hint = "x"  # clashes with the input: uniquified
    cond = g.create_node("prim::If", [c], [F], meta=Meta(scope="roi_heads"))
    then = cond.add_block()
    relu = g.create_node("aten::relu", [add.output], [F], block=then)
    relu.output.name_hint = "x"
    then.set_returns([relu.output])
    cond.add_block().set_returns([x])
    g.set_outputs([cond.output, add.output])
    return g, relu


EXPECTED = """\
graph(%x: f32[2,N], %0: bool) {
  %conv.weight: f32[2] = prim::Param() {name="conv.weight"}
  %1: int = prim::Constant() {value=1}
  %x.1: f32[2,N] = aten::add.Tensor(%x, %conv.weight, %1) {a=[1.5, (2,)], z="s"}  # backbone.conv1 @ models/backbone.py:42 [postprocess,"two words"]
  %2: f32[2,N] = prim::If(%0) {  # roi_heads
    block0() {
      %x.2: f32[2,N] = aten::relu(%x.1)
      return (%x.2)
    }
    block1() {
      return (%x)
    }
  }
  return (%2, %x.1)
}
"""


def test_the_text_form():
    g, _ = _sample_graph()
    assert print_graph(g) == EXPECTED
    assert str(g) == EXPECTED


def test_parse_builds_the_graph_and_fills_params():
    weight = torch.ones(2)
    g = parse(EXPECTED, {"conv.weight": weight})
    assert g.params["conv.weight"] is weight
    assert [v.name_hint for v in g.inputs] == ["x", None]
    ops = [n.op for n in g.nodes()]
    assert ops == ["prim::Param", "prim::Constant", "aten::add.Tensor", "prim::If", "aten::relu"]
    add = g.find_nodes("aten::add.Tensor")[0]
    assert add.attrs == {"a": [1.5, (2,)], "z": "s"}
    assert add.meta == Meta("backbone.conv1", "models/backbone.py:42", ("postprocess", "two words"))
    assert add.inputs[0] is g.inputs[0] and add.output.uses[0][0].op == "aten::relu"
    assert g.outputs[1] is add.output
    verify(g)


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


@pytest.mark.parametrize("value", [0.0, -0.0, math.inf, -math.inf, math.nan, -math.nan, 5e-324,
                                   1.7976931348623157e308, 0.1, 1e16, -2.5e-07])
def test_floats_round_trip_bit_exactly(value):
    g = Graph()
    node = g.create_node("prim::Constant", [], [INT], {"value": value, "in_list": [value, (value,)]})
    g.set_outputs([node.output])
    back = next(parse(print_graph(g)).nodes()).attrs
    assert _bits(back["value"]) == _bits(value)
    assert _bits(back["in_list"][1][0]) == _bits(value) and isinstance(back["in_list"][1], tuple)


@pytest.mark.parametrize("tensor", [
    torch.tensor([[1.5, -0.0], [float("nan"), float("inf")]]),
    torch.tensor([0.1, 3.0], dtype=torch.float16),
    torch.tensor([0.1, -3.0], dtype=torch.bfloat16),
    torch.tensor([-float("nan")]).to(torch.float16),
    torch.tensor([0xFFC0], dtype=torch.int32).to(torch.int16).view(torch.bfloat16),  # -nan
    torch.tensor([1e-310], dtype=torch.float64),
    torch.tensor([-(2 ** 63), 2 ** 63 - 1]),
    torch.tensor([True, False]),
    torch.tensor(7, dtype=torch.uint8),
    torch.zeros(0, 3),
])
def test_tensor_attributes_round_trip_exactly(tensor):
    g = Graph()
    g.set_outputs([g.create_node("prim::Constant", [], [TensorType()], {"value": tensor}).output])
    text = print_graph(g)
    back = next(parse(text).nodes()).attrs["value"]
    assert back.dtype == tensor.dtype and back.shape == tensor.shape
    assert torch.equal(back.view(-1).view(torch.uint8), tensor.view(-1).view(torch.uint8))


def test_other_attribute_kinds():
    attrs = {"d": torch.int8, "dev": torch.device("cuda:1"), "lay": torch.sparse_coo,
             "mf": torch.channels_last, "s": 'q"\\\n\u2028é', "n": None, "b": False,
             "big": -(2 ** 80), "e": [], "t": (), "key with space": 1}
    g = Graph()
    g.set_outputs([g.create_node("prim::Constant", [], [INT], attrs).output])
    text = print_graph(g)
    assert text.count("\n") == 4  # strings are escaped: a node stays on one line
    assert next(parse(text).nodes()).attrs == attrs


def test_meta_that_needs_quoting_round_trips():
    meta = Meta('a @ b [c]', '"C:\\x y.py":3', ("", "a,b", "]", "x"))
    g = Graph()
    g.set_outputs([g.create_node("prim::Constant", [], [INT], {"value": 1}, meta).output])
    assert next(parse(print_graph(g)).nodes()).meta == meta


def test_schemas_are_header_lines():
    g = Graph()
    x = g.add_input(F, "x")
    _, g.input_schema = flatten(({"image": torch.zeros(1)}, 3))
    _, g.output_schema = flatten([torch.zeros(1)])
    g.set_outputs([x])
    text = print_graph(g)
    assert text.startswith("#! input_schema {") and "\n#! output_schema " in text
    back = parse(text)
    assert back.input_schema.to_json() == g.input_schema.to_json()
    assert back.output_schema.to_json() == g.output_schema.to_json()
    assert print_graph(back) == text


def test_format_context_marks_the_node():
    g, relu = _sample_graph()
    ctx = format_context(g, relu, radius=1)
    assert ctx.splitlines() == [
        "       block0() {",
        ">>       %x.2: f32[2,N] = aten::relu(%x.1)",
        "         return (%x.2)",
    ]
    assert format_context(g, relu.block, radius=0) == ">>     block0() {"
    assert format_context(g, relu.block.return_node, radius=0) == ">>       return (%x.2)"
    assert format_context(g, g.block, radius=0) == ">> graph(%x: f32[2,N], %0: bool) {"
    first = next(g.nodes())
    assert format_context(g, first, radius=5).splitlines()[0] == "   graph(%x: f32[2,N], %0: bool) {"


def test_format_context_of_a_node_outside_the_graph():
    g, relu = _sample_graph()
    loose = g.create_node("aten::neg", [relu.output], [F])
    loose.block._unlink(loose)
    assert format_context(g, loose) == ">> %3: f32[2,N] = aten::neg(%x.2)    (this node is not in the graph)"


def test_a_broken_graph_still_prints():
    g, relu = _sample_graph()
    stray = Graph().add_input(F, "stray")
    relu.replace_input(0, stray)
    assert "aten::relu(%stray)" in print_graph(g)


def test_list_types_and_empty_lists_of_values():
    g = Graph()
    lst = g.create_node("prim::ListConstruct", [], [ListType(F)])
    g.create_node("prim::TupleConstruct", [], [])
    g.set_outputs([lst.output])
    text = print_graph(g)
    assert "prim::TupleConstruct()\n" in text
    assert print_graph(parse(text)) == text


# --------------------------------------------------------------------------- parse errors

GOOD = """graph(%x: f32[2]) {
  %y: f32[2] = aten::relu(%x)
  return (%y)
}
"""


@pytest.mark.parametrize("text, message, line, column", [
    ("", "expected 'graph(...) {'", 1, 1),
    ("gaph(%x: f32[2]) {\n}", "expected 'graph(%input: type, ...) {'", 1, 1),
    (GOOD.replace("}\n", ""), "the '{' opened on line 1 is never closed", 4, 1),
    (GOOD.replace("relu(%x)", "relu(%z)"), "use of undefined value %z", 2, 27),
    (GOOD.replace("relu(%x)", "relu(x)"), "expected a value reference '%name', got 'x'", 2, 27),
    (GOOD.replace("%y: f32[2] =", "%x: f32[2] ="), "value %x is defined twice", 2, 3),
    (GOOD.replace("%y: f32[2] =", "%y: f32[2 ="), "bad type", 2, 7),
    (GOOD.replace("%y: f32[2] =", "%y f32[2] ="), "expected a value declaration '%name: type'", 2, 3),
    (GOOD.replace("aten::relu", "relu"), "expected an op name such as aten::relu", 2, 16),
    (GOOD.replace("relu(%x)", "relu(%x"), "expected ')' closing the inputs", 2, 29),
    (GOOD.replace("relu(%x)", "relu(%x) {a=@}"), "expected an attribute value", 2, 34),
    (GOOD.replace("relu(%x)", "relu(%x) {a=bogus}"), "unknown attribute value 'bogus'", 2, 34),
    (GOOD.replace("relu(%x)", 'relu(%x) {a="open}'), "bad string literal: Unterminated string", 2, 34),
    (GOOD.replace("relu(%x)", "relu(%x) {a=1 b=2}"), "expected ', ' or '}' after an attribute value", 2, 35),
    (GOOD.replace("relu(%x)", "relu(%x) {a=1, a=2}"), "attribute 'a' given twice", 2, 38),
    (GOOD.replace("relu(%x)", "relu(%x) {t=tensor(f32[2], [1.0])}"), "tensor has 1 values", 2, 49),
    (GOOD.replace("relu(%x)", "relu(%x) junk"), "expected attributes", 2, 30),
    (GOOD.replace("relu(%x)", "relu(%x)  # a @ b [t"), "expected ',' or ']' in the tag list", 2, 42),
    (GOOD + "%z: f32[2] = aten::relu(%x)\n", "unexpected text after the graph's closing '}'", 5, 1),
    (GOOD.replace("  return (%y)\n", ""), "expected 'return (...)' before the block's closing '}'", 3, 1),
    (GOOD.replace("  return (%y)\n", "  return (%y)\n  return (%y)\n"), "expected '}' after the block's 'return (...)'", 4, 3),
    ("#! flavour x\n" + GOOD, "unknown directive 'flavour'", 1, 1),
    ("#! input_schema {bad\n" + GOOD, "bad input_schema", 1, 17),
    (GOOD.replace("  return (%y)", "  %c: bool = prim::If(%x) {\n    block1() {\n      return ()\n    }\n  }\n  return (%y)"),
     "expected block number 0", 4, 10),
    (GOOD.replace("  return (%y)", "  prim::If(%x) {\n  }\n  return (%y)"),
     "expected a block header 'block0(...) {' inside the node's '{'", 4, 3),
])
def test_parse_errors_say_where_and_what(text, message, line, column):
    with pytest.raises(IRParseError) as info:
        parse(text)
    err = info.value
    assert message in err.what
    assert f"line {line}, column {column}:" in err.what
    source_line, caret = err.context.splitlines()
    assert caret == " " * (column - 1) + "^"
    assert source_line == (text.split("\n")[line - 1].rstrip() if text else "")
    assert err.hint


def test_an_inner_value_is_undefined_for_the_node_that_owns_the_block():
    text = """graph(%c: bool) {
  %r: int = prim::If(%c) {
    block0() {
      %k: int = prim::Constant() {value=1}
      return (%r)
    }
    block1() {
      return (%c)
    }
  }
  return (%r)
}"""
    with pytest.raises(IRParseError, match="line 5, column 15: use of undefined value %r"):
        parse(text)


def test_scope_errors_are_left_to_the_verifier():
    text = """graph(%c: bool) {
  %r: int = prim::If(%c) {
    block0() {
      %k: int = prim::Constant() {value=1}
      return (%k)
    }
    block1() {
      return (%k)
    }
  }
  return (%r)
}"""
    g = parse(text)  # a dump of a broken graph still parses, and the verifier explains it
    with pytest.raises(Exception, match="used outside the block that defines it"):
        verify(g)


def test_blank_lines_comments_and_windows_line_ends_are_fine():
    text = "# a dump\n\n" + GOOD.replace("\n", "\r\n")
    assert print_graph(parse(text)) == GOOD
