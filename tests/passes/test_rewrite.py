"""The pattern rewriter: matching, checks, fixpoint, debug reasons."""
import pytest
import torch

from dexport.ir import PassError
from dexport.ir.parser import parse
from dexport.ir.printer import print_graph
from dexport.passes import Const, Match, Op, Rewriter, Rule, Var, get_pass

TEXT = """graph(%x: f32[2], %y: f32[2]) {
  %one: int = prim::Constant() {value=1}
  %two: int = prim::Constant() {value=2}
  %a: f32[2] = aten::add.Tensor(%x, %x, %one)
  %b: f32[2] = aten::add.Tensor(%x, %y, %one)
  %c: f32[2] = aten::add.Tensor(%a, %a, %two)
  %d: f32[2] = aten::neg(%c)
  %e: f32[2] = aten::neg(%d)
  return (%b, %e)
}
"""


class DoubleToMul(Rule):
    """x + x (alpha 1) -> x * 2."""
    pattern = Op("aten::add.Tensor", Var("x"), Var("x"), Const("alpha"))

    def check(self, match):
        return None if match["alpha"] == 1 else f"alpha is {match['alpha']}"

    def rewrite(self, match, graph):
        root = match.root
        two = graph.create_node("prim::Constant", [], [root.output.type], {"value": torch.tensor(2.0)}, before=root)
        return graph.create_node("aten::mul.Tensor", [match["x"], two.output], [root.output.type],
                                 meta=root.meta.copy(), before=root).output


class NegNeg(Rule):
    pattern = Op("aten::neg", Op("aten::neg", Var("x"), name="inner"))

    def rewrite(self, match, graph):
        assert match["inner"].op == "aten::neg"
        return match["x"]


def test_rules_fire_once_per_match_and_keep_behaviour():
    g = parse(TEXT)
    x, y = torch.randn(2), torch.randn(2)
    before = g(x, y)
    rw = Rewriter([DoubleToMul(), NegNeg()])
    assert rw.apply(g) == 2
    assert rw.applied == {"DoubleToMul": 1, "NegNeg": 1}
    # the root is erased; matched producers left unused are dce's business
    assert [n.op for n in g.nodes()].count("aten::neg") == 1
    get_pass("dce").run(g)
    ops = [n.op for n in g.nodes()]
    assert ops.count("aten::neg") == 0 and ops.count("aten::mul.Tensor") == 1
    # %c = add(%a, %a, 2) was rejected (alpha 2) and %b has two different inputs
    assert ops.count("aten::add.Tensor") == 2
    after = g(x, y)
    assert all(torch.equal(p, q) for p, q in zip(before, after))


def test_debug_mode_records_why_candidates_were_rejected():
    g = parse(TEXT)
    rw = Rewriter([DoubleToMul(), NegNeg()], debug=True)
    rw.apply(g)
    # the last sweep's rejections: why the remaining candidates stay. The first
    # neg (rejected in sweep 1: its input is an add) is dead by then and not listed.
    assert [str(r) for r in rw.rejections] == [
        "DoubleToMul on aten::add.Tensor: aten::add.Tensor input 1: 'x' is bound to a different value",
        "DoubleToMul on aten::add.Tensor: alpha is 2"]
    assert rw.report().splitlines()[:2] == ["DoubleToMul: 1", "NegNeg: 1"]
    assert Rewriter([NegNeg()]).apply(parse(TEXT)) == 1  # no debug: nothing recorded
    assert not Rewriter([NegNeg()]).rejections


def test_chains_collapse_to_a_fixpoint():
    text = "graph(%x: f32[2]) {\n" + "".join(
        f"  %n{i}: f32[2] = aten::neg(%{'x' if i == 0 else f'n{i-1}'})\n" for i in range(7)) + "  return (%n6)\n}\n"
    g = parse(text)
    assert Rewriter([NegNeg()]).apply(g) == 3
    get_pass("dce").run(g)
    assert [n.op for n in g.nodes()] == ["aten::neg"]


def test_matchers_on_constants_attrs_and_block_params():
    g = parse("""graph(%x: f32[2]) {
  %k: int = prim::Constant() {value=3}
  %a: f32[2] = aten::add.Tensor(%x, %x, %k)
  return (%a)
}
""")
    add = next(n for n in g.nodes() if n.op == "aten::add.Tensor")
    m = Match(add)
    assert Op("aten::add.Tensor", Var("p"), Var(), Const("k", lambda v: v > 2)).match_node(add, m) is None
    assert m["k"] == 3 and m["p"] is g.inputs[0] and "k" in m
    assert Op("aten::add.Tensor", Var(), Var(), Const(None, lambda v: v > 5)).match_node(add, Match(add)) \
        == "aten::add.Tensor input 2: constant 3 fails <lambda>"
    assert Op("aten::add.Tensor", Const(), Var(), Var()).match_node(add, Match(add)) \
        == "aten::add.Tensor input 0: expected a constant, got a block parameter"
    assert Op("aten::add.Tensor", Var()).match_node(add, Match(add)) == "aten::add.Tensor has 3 inputs, the pattern 1"
    k = add.inputs[2].node
    assert Op("prim::Constant", attrs={"value": 3}).match_node(k, Match(k)) is None
    assert Op("prim::Constant", attrs={"value": 3.0}).match_node(k, Match(k)) == "attribute value=3 does not match"
    assert Op("prim::Constant", attrs={"value": lambda v: v == 3}).match_node(k, Match(k)) is None
    assert Op("prim::Constant", attrs={"name": 1}).match_node(k, Match(k)) == "prim::Constant has no attribute 'name'"


def test_rules_that_undo_each_other_are_reported():
    class Flip(Rule):
        pattern = Op(("aten::relu", "aten::sigmoid"), Var("x"))

        def rewrite(self, match, graph):
            other = "aten::sigmoid" if match.root.op == "aten::relu" else "aten::relu"
            return graph.create_node(other, [match["x"]], [match.root.output.type], before=match.root).output

    g = parse("graph(%x: f32[2]) {\n  %r: f32[2] = aten::relu(%x)\n  return (%r)\n}\n")
    with pytest.raises(PassError, match="rewrite rules still fire after 3 sweeps: Flip"):
        Rewriter([Flip()], max_sweeps=3).apply(g)


def test_rewrites_inside_blocks():
    g = parse("""graph(%x: f32[2], %c: bool) {
  %r: f32[2] = prim::If(%c) {
    block0() {
      %n: f32[2] = aten::neg(%x)
      %m: f32[2] = aten::neg(%n)
      return (%m)
    }
    block1() {
      return (%x)
    }
  }
  return (%r)
}
""")
    assert Rewriter([NegNeg()]).apply(g) == 1
    get_pass("dce").run(g)
    assert "aten::neg" not in print_graph(g)
