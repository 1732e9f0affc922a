"""canonicalize: each rule fires where it is provably an identity, and not elsewhere."""
import pytest
import torch

from dexport.ir.parser import parse
from dexport.passes import get_pass

HEAD = "graph(%x: f32[2,3], %i: i64[2,3], %s: f32[N,3]) {\n" \
       "  %none: None = prim::Constant() {value=None}\n" \
       "  %false: bool = prim::Constant() {value=False}\n" \
       "  %true: bool = prim::Constant() {value=True}\n" \
       "  %one: int = prim::Constant() {value=1}\n"


def _run(body):
    """Canonicalize (and dce) a graph whose result %y is computed by ``body``, check
    the result did not change; returns (whether %y became an input, the rewriter)."""
    g = parse(HEAD + body + "  return (%y)\n}\n")
    p = get_pass("canonicalize", debug=True)
    inputs = (torch.randn(2, 3), torch.arange(6).reshape(2, 3), torch.randn(4, 3))
    before = g.clone()
    p.run(g)
    get_pass("dce").run(g)
    if "{value=0.5}" not in body or "%true" not in body:  # dropout in training mode is random
        ref, got = before(*inputs), g(*inputs)
        assert torch.allclose(ref, got, rtol=0, atol=0, equal_nan=True) and ref.dtype == got.dtype
    return g.outputs[0].node is None, p.rewriter


IDENTITIES = [
    "  %sz: list[int] = prim::Constant() {value=[2, 3]}\n  %y: f32[2,3] = aten::view(%x, %sz)\n",
    "  %sz: list[int] = prim::Constant() {value=[-1, 3]}\n  %y: f32[2,3] = aten::reshape(%x, %sz)\n",
    "  %sz: list[int] = prim::Constant() {value=[-1, 3]}\n  %y: f32[N,3] = aten::reshape(%s, %sz)\n",
    "  %sz: list[int] = prim::Constant() {value=[-1, -1]}\n  %y: f32[2,3] = aten::expand(%x, %sz, %false)\n",
    "  %sz: list[int] = prim::Constant() {value=[-1, 3]}\n  %y: f32[N,3] = aten::expand(%s, %sz, %false)\n",
    # size not constant, but the types prove the same static shape
    "  %a: int = prim::Constant() {value=0}\n  %d: int = aten::size.int(%x, %a)\n"
    "  %three: int = prim::Constant() {value=3}\n  %sz: list[int] = prim::ListConstruct(%d, %three)\n"
    "  %y: f32[2,3] = aten::view(%x, %sz)\n",
    "  %y: f32[2,3] = aten::detach(%x)\n",
    "  %y: f32[2,3] = aten::alias(%x)\n",
    "  %y: f32[2,3] = aten::clone(%x, %none)\n",
    "  %f: MemoryFormat = prim::Constant() {value=torch.contiguous_format}\n"
    "  %y: f32[2,3] = aten::contiguous(%x, %f)\n",
    "  %dt: Dtype = prim::Constant() {value=torch.float32}\n"
    "  %y: f32[2,3] = aten::to.dtype(%x, %dt, %false, %false, %none)\n",
    "  %dt: Dtype = prim::Constant() {value=torch.float32}\n"
    "  %y: f32[2,3] = aten::to.dtype_layout(%x, %dt, %none, %none, %none, %false, %false, %none)\n",
    "  %y: f32[2,3] = aten::type_as(%x, %x)\n",
    "  %p: float = prim::Constant() {value=0.5}\n  %y: f32[2,3] = aten::dropout(%x, %p, %false)\n",
    "  %p: float = prim::Constant() {value=0.0}\n  %y: f32[2,3] = aten::dropout(%x, %p, %true)\n",
    "  %c: f32[3] = prim::Constant() {value=tensor(f32[3], [1.0, 1.0, 1.0])}\n"
    "  %y: f32[2,3] = aten::mul.Tensor(%x, %c)\n",
    "  %c: f32[] = prim::Constant() {value=tensor(f32[], [1.0])}\n  %y: f32[2,3] = aten::mul.Tensor(%c, %x)\n",
    "  %y: f32[2,3] = aten::mul.Scalar(%x, %one)\n",
    "  %z: f32[1,3] = prim::Constant() {value=tensor(f32[1,3], [0.0, 0.0, 0.0])}\n"
    "  %y: f32[2,3] = aten::add.Tensor(%x, %z, %one)\n",
    "  %z: int = prim::Constant() {value=0}\n  %a: float = prim::Constant() {value=2.5}\n"
    "  %y: f32[2,3] = aten::sub.Scalar(%x, %z, %a)\n",
    "  %z: f32[] = prim::Constant() {value=tensor(f32[], [0.0])}\n  %y: f32[2,3] = aten::add.Tensor(%z, %x, %one)\n",
    "  %k: i64[] = prim::Constant() {value=tensor(i64[], [1])}\n  %y: f32[2,3] = aten::mul.Tensor(%x, %k)\n",
]


@pytest.mark.parametrize("body", IDENTITIES)
def test_identity_is_removed(body):
    removed, rw = _run(body)
    assert removed, rw.report()


NOT_IDENTITIES = [
    ("  %sz: list[int] = prim::Constant() {value=[3, 2]}\n  %y: f32[3,2] = aten::view(%x, %sz)\n",
     "differs from input shape"),
    ("  %sz: list[int] = prim::Constant() {value=[6]}\n  %y: f32[6] = aten::reshape(%x, %sz)\n",
     "rank changes from 2 to 1"),
    ("  %sz: list[int] = prim::Constant() {value=[4, 3]}\n  %y: f32[4,3] = aten::expand(%s, %sz, %false)\n",
     "differs from input shape"),
    ("  %a: int = prim::Constant() {value=0}\n  %d: int = aten::size.int(%s, %a)\n"
     "  %three: int = prim::Constant() {value=3}\n  %sz: list[int] = prim::ListConstruct(%d, %three)\n"
     "  %y: f32[N,3] = aten::view(%s, %sz)\n", "types do not prove the same static shape"),
    ("  %dt: Dtype = prim::Constant() {value=torch.float64}\n"
     "  %y: f64[2,3] = aten::to.dtype(%x, %dt, %false, %false, %none)\n", "casts torch.float32 to torch.float64"),
    ("  %y: f32[2,3] = aten::type_as(%i, %x)\n", "casts torch.int64 to torch.float32"),
    ("  %p: float = prim::Constant() {value=0.5}\n  %y: f32[2,3] = aten::dropout(%x, %p, %true)\n",
     "training mode with p > 0"),
    ("  %c: f32[3] = prim::Constant() {value=tensor(f32[3], [1.0, 2.0, 1.0])}\n"
     "  %y: f32[2,3] = aten::mul.Tensor(%x, %c)\n", "constant is not all 1"),
    ("  %c: f32[2,2,3] = prim::Constant() {value=tensor(f32[2,2,3], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])}\n"
     "  %y: f32[2,2,3] = aten::mul.Tensor(%x, %c)\n", "higher rank than the input"),
    ("  %c: f64[3] = prim::Constant() {value=tensor(f64[3], [1.0, 1.0, 1.0])}\n"
     "  %y: f64[2,3] = aten::mul.Tensor(%x, %c)\n", "type promotion changes torch.float32 to torch.float64"),
    ("  %h: float = prim::Constant() {value=1.0}\n  %y: f32[2,3] = aten::mul.Scalar(%i, %h)\n",
     "type promotion changes torch.int64 to torch.float32"),
    ("  %z: int = prim::Constant() {value=0}\n  %a: float = prim::Constant() {value=inf}\n"
     "  %y: f32[2,3] = aten::add.Scalar(%x, %z, %a)\n", "alpha inf is not a finite number"),
]


@pytest.mark.parametrize("body, reason", NOT_IDENTITIES)
def test_non_identity_is_kept_with_a_reason(body, reason):
    removed, rw = _run(body)
    assert not removed
    assert any(reason in str(r) for r in rw.rejections), rw.report()


def test_copies_are_kept_when_the_graph_mutates():
    g = parse(HEAD + "  %c: f32[2,3] = aten::clone(%x, %none)\n"
                     "  %d: f32[2,3] = aten::detach(%x)\n"
                     "  %m: f32[2,3] = aten::add_.Tensor(%c, %d, %one)\n"
                     "  return (%m, %x)\n}\n")
    x = torch.randn(2, 3)
    p = get_pass("canonicalize")
    assert p.run(g)  # detach (an alias) goes, the clone stays
    ops = [n.op for n in g.nodes()]
    assert "aten::clone" in ops and "aten::detach" not in ops
    m, x_after = g(x, torch.zeros(2, 3, dtype=torch.long), torch.zeros(1, 3))
    assert torch.equal(x_after, x) and torch.equal(m, 2 * x)
