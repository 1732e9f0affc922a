"""dce and cse on hand-built graphs."""
import torch

from dexport.ir.parser import parse
from dexport.ir.printer import print_graph
from dexport.passes import get_pass


def _ops(g):
    return [n.op for n in g.nodes()]


def _same(a, b):
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


# --------------------------------------------------------------------------- dce

def test_dce_removes_dead_chains_and_keeps_effects():
    g = parse("""graph(%x: f32[2]) {
  %one: int = prim::Constant() {value=1}
  %msg: str = prim::Constant() {value="bad"}
  %unused: int = prim::Constant() {value=7}
  %a: f32[2] = aten::relu(%x)
  %b: f32[2] = aten::neg(%a)
  %c: f32[2] = aten::add.Tensor(%b, %b, %one)
  %d: f32[2] = aten::add_.Tensor(%x, %x, %one)
  %ok: b8[] = aten::any(%x)
  aten::_assert_async.msg(%ok, %msg)
  %e: f32[2] = custom::unknown(%x)
  %f: f32[2] = aten::sigmoid(%x)
  return (%f)
}
""")
    assert get_pass("dce").run(g)
    assert _ops(g) == ["prim::Constant", "prim::Constant", "aten::add_.Tensor", "aten::any",
                       "aten::_assert_async.msg", "custom::unknown", "aten::sigmoid"]
    assert not get_pass("dce").run(g)


def test_dce_prunes_if_results_and_dead_ifs():
    text = """graph(%x: f32[2], %c: bool) {
  %one: int = prim::Constant() {value=1}
  %r: f32[2], %s: f32[2] = prim::If(%c) {
    block0() {
      %a: f32[2] = aten::relu(%x)
      %b: f32[2] = aten::neg(%x)
      return (%a, %b)
    }
    block1() {
      %d: f32[2] = aten::sigmoid(%x)
      return (%x, %d)
    }
  }
  %gone: f32[2] = prim::If(%c) {
    block0() {
      %e: f32[2] = aten::exp(%x)
      return (%e)
    }
    block1() {
      return (%x)
    }
  }
  %y: f32[2] = aten::add.Tensor(%r, %r, %one)
  return (%y)
}
"""
    g = parse(text)
    x = torch.randn(2)
    ref = [g(x, torch.tensor(c)) for c in (True, False)]
    assert get_pass("dce").run(g)
    printed = print_graph(g)
    for gone in ("aten::neg", "aten::sigmoid", "aten::exp", "%gone", "%s"):
        assert gone not in printed
    assert _ops(g).count("prim::If") == 1 and "aten::relu" in printed
    assert all(_same(r, g(x, torch.tensor(c))) for r, c in zip(ref, (True, False)))


def test_dce_keeps_an_if_with_side_effects():
    g = parse("""graph(%x: f32[2], %c: bool) {
  %msg: str = prim::Constant() {value="no"}
  prim::If(%c) {
    block0() {
      %ok: b8[] = aten::all(%x)
      aten::_assert_async.msg(%ok, %msg)
      return ()
    }
    block1() {
      return ()
    }
  }
  return (%x)
}
""")
    assert not get_pass("dce").run(g)
    assert "aten::_assert_async.msg" in _ops(g)


def test_dce_drops_self_feeding_loop_values():
    g = parse("""graph(%x: f32[2], %n: int) {
  %t: bool = prim::Constant() {value=True}
  %one: int = prim::Constant() {value=1}
  %r: f32[2], %s: f32[2], %u: f32[2] = prim::Loop(%n, %t, %x, %x, %x) {
    block0(%i: int, %a: f32[2], %b: f32[2], %k: f32[2]) {
      %a2: f32[2] = aten::add.Tensor(%a, %k, %one)
      %b2: f32[2] = aten::mul.Tensor(%b, %a2)
      return (%t, %a2, %b2, %k)
    }
  }
  return (%r)
}
""")
    x = torch.randn(2)
    ref = g(x, 3)
    assert get_pass("dce").run(g)
    loop = next(n for n in g.nodes() if n.op == "prim::Loop")
    # %b only feeds itself: gone; %k is read by the live %a2: kept
    assert len(loop.outputs) == 2 and len(loop.inputs) == 4 and len(loop.blocks[0].params) == 3
    assert "aten::mul.Tensor" not in _ops(g)
    assert _same(ref, g(x, 3))


def test_dce_drops_unread_parameters():
    g = parse("""graph(%x: f32[2]) {
  %w: f32[2] = prim::Param() {name="w"}
  %v: f32[2] = prim::Param() {name="v"}
  %one: int = prim::Constant() {value=1}
  %y: f32[2] = aten::add.Tensor(%x, %v, %one)
  return (%y)
}
""", params={"w": torch.ones(2), "v": torch.zeros(2), "spare": torch.ones(1)})
    assert get_pass("dce").run(g)
    assert list(g.params) == ["v"]


# --------------------------------------------------------------------------- cse

def test_cse_merges_equal_expressions_transitively():
    g = parse("""graph(%x: f32[2]) {
  %one: int = prim::Constant() {value=1}
  %one2: int = prim::Constant() {value=1}
  %t: bool = prim::Constant() {value=True}
  %f: float = prim::Constant() {value=1.0}
  %a: f32[2] = aten::add.Tensor(%x, %x, %one)
  %b: f32[2] = aten::add.Tensor(%x, %x, %one2)
  %c: f32[2] = aten::relu(%a)
  %d: f32[2] = aten::relu(%b)
  %e: f32[2] = aten::mul.Tensor(%c, %d)
  %w: f32[2] = prim::Param() {name="w"}
  %w2: f32[2] = prim::Param() {name="w"}
  %g: f32[2] = aten::add.Tensor(%e, %w2, %one)
  %h: f32[2] = aten::add.Tensor(%w, %t, %f)
  return (%e, %c, %g, %h)
}
""", params={"w": torch.ones(2)})
    x = torch.randn(2)
    ref = g(x)
    assert get_pass("cse").run(g)
    assert _ops(g).count("aten::relu") == 1 and _ops(g).count("prim::Param") == 1
    # 1, True and 1.0 are different constants although Python calls them equal
    assert _ops(g).count("prim::Constant") == 3
    assert _same(ref, g(x))
    assert not get_pass("cse").run(g)


def test_cse_respects_dominance_across_blocks():
    g = parse("""graph(%x: f32[2], %c: bool) {
  %a: f32[2] = aten::relu(%x)
  %r: f32[2] = prim::If(%c) {
    block0() {
      %b: f32[2] = aten::relu(%x)
      %e: f32[2] = aten::exp(%x)
      return (%e)
    }
    block1() {
      %e2: f32[2] = aten::exp(%x)
      return (%e2)
    }
  }
  %e3: f32[2] = aten::exp(%x)
  %s: f32[2] = aten::mul.Tensor(%r, %e3)
  %t: f32[2] = aten::mul.Tensor(%s, %a)
  return (%t)
}
""")
    assert get_pass("cse").run(g)
    # the relu inside the block reuses the one before the If; the three exps are
    # in sibling / later scopes and none dominates another
    assert _ops(g).count("aten::relu") == 1 and _ops(g).count("aten::exp") == 3


def test_cse_never_merges_random_or_effectful_ops():
    g = parse("""graph(%x: f32[2]) {
  %none: None = prim::Constant() {value=None}
  %a: f32[2] = aten::rand_like(%x, %none, %none, %none, %none, %none)
  %b: f32[2] = aten::rand_like(%x, %none, %none, %none, %none, %none)
  %u: f32[2] = custom::op(%x)
  %v: f32[2] = custom::op(%x)
  %s: f32[2] = aten::mul.Tensor(%a, %b)
  %t: f32[2] = aten::mul.Tensor(%u, %v)
  return (%s, %t)
}
""")
    assert not get_pass("cse").run(g)


def test_cse_with_in_place_ops_merges_only_immutable_constants():
    g = parse("""graph(%x: f32[2]) {
  %none: None = prim::Constant() {value=None}
  %one: int = prim::Constant() {value=1}
  %one2: int = prim::Constant() {value=1}
  %k: f32[2] = prim::Constant() {value=tensor(f32[2], [1.0, 1.0])}
  %k2: f32[2] = prim::Constant() {value=tensor(f32[2], [1.0, 1.0])}
  %a: f32[2] = aten::clone(%x, %none)
  %b: f32[2] = aten::clone(%x, %none)
  %m: f32[2] = aten::add_.Tensor(%a, %k, %one)
  %n: f32[2] = aten::add.Tensor(%b, %k2, %one2)
  %o: f32[2] = aten::mul.Tensor(%a, %n)
  return (%o)
}
""")
    x = torch.randn(2)
    ref = g(x)
    assert get_pass("cse").run(g)
    assert _ops(g).count("aten::clone") == 2 and _ops(g).count("prim::Constant") == 4
    assert _same(ref, g(x))


def test_cse_merges_equal_tensor_constants_only():
    g = parse("""graph(%x: f32[2]) {
  %one: int = prim::Constant() {value=1}
  %k: f32[2] = prim::Constant() {value=tensor(f32[2], [1.0, 2.0])}
  %k2: f32[2] = prim::Constant() {value=tensor(f32[2], [1.0, 2.0])}
  %k3: f32[2] = prim::Constant() {value=tensor(f32[2], [1.0, 3.0])}
  %z: f32[2] = prim::Constant() {value=tensor(f32[2], [0.0, 0.0])}
  %nz: f32[2] = prim::Constant() {value=tensor(f32[2], [-0.0, 0.0])}
  %a: f32[2] = aten::add.Tensor(%k, %k2, %one)
  %b: f32[2] = aten::add.Tensor(%k3, %z, %one)
  %c: f32[2] = aten::add.Tensor(%nz, %a, %one)
  %d: f32[2] = aten::add.Tensor(%b, %c, %one)
  return (%d)
}
""")
    assert get_pass("cse").run(g)
    assert _ops(g).count("prim::Constant") == 5
