"""Traced models calling scripted code: prim::If / prim::Loop with loop-carried values,
Optional and list values and prim::Uninitialized are captured and interpreted like eager;
TorchScript leftovers fold; remaining If/Loop lower to ONNX If/Loop that onnxruntime runs."""
from typing import List, Optional

import numpy as np
import pytest
import torch

import dexport
from dexport.backends.onnx import emit_onnx, run_onnx
from dexport.ir import verify
from dexport.ir.interpreter import run
from dexport.ir.parser import parse
from dexport.passes import PassManager


@torch.jit.script
def accumulate(scores: torch.Tensor, limit: Optional[torch.Tensor]) -> torch.Tensor:
    picked: List[torch.Tensor] = []
    best: Optional[torch.Tensor] = None
    total = torch.zeros_like(scores[0])
    for i in range(scores.size(0)):
        row = scores[i]
        if best is None:
            best = row
        else:
            best = torch.maximum(best, row)
        if limit is not None:
            row = torch.minimum(row, limit)
        total = total + row
        picked.append(row * 2.0)
    out = torch.stack(picked).sum(0) + total
    if best is not None:
        out = out + best
    return out


@torch.jit.script
def first_above(x: torch.Tensor, threshold: float) -> torch.Tensor:
    for i in range(x.size(0)):  # an early return: TorchScript carries prim::Uninitialized
        if bool(x[i].sum() > threshold):
            return x[i] * 2.0
    return x.sum(0)


class Scripted(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x):
        y = self.lin(x).sigmoid()
        return accumulate(y, None), first_above(y * 3.0, 4.0)


def test_scripted_loops_and_ifs_capture_and_interpret_like_eager():
    torch.manual_seed(0)
    model = Scripted().eval()
    graph = dexport.capture(model, (torch.randn(3, 4),))
    verify(graph)
    ops = {n.op for n in graph.nodes()}
    assert {"prim::Loop", "prim::If", "prim::Uninitialized", "aten::append.t", "aten::__is__"} <= ops
    # other sizes (the trip count follows) and values (the early return flips)
    for x in (torch.randn(5, 4), torch.randn(1, 4) - 3.0, torch.randn(7, 4) + 3.0):
        for got, want in zip(graph(x), model(x)):
            torch.testing.assert_close(got, want)


def test_canonicalize_and_fold_keep_scripted_behaviour():
    torch.manual_seed(0)
    model = Scripted().eval()
    graph = dexport.capture(model, (torch.randn(3, 4),))
    PassManager("canonicalize,cse,fold-constants,dce", verify_each=True).run(graph)
    for x in (torch.randn(4, 4), torch.randn(2, 4) + 3.0):
        for got, want in zip(graph(x), model(x)):
            torch.testing.assert_close(got, want)


def test_dtype_and_list_rules():
    graph = parse("""
graph(%x: f32[N,4]) {
  %zero: int = prim::Constant() {value=0}
  %one: int = prim::Constant() {value=1}
  %nn: None = prim::Constant() {value=None}
  %n: int = aten::size.int(%x, %zero)
  %l: list[int] = prim::ListConstruct(%n, %one)
  %first: int = aten::__getitem__.t(%l, %zero)
  %len: int = aten::len.t(%l)
  %dt: int = prim::dtype(%x)
  %isnone: bool = aten::__is__(%x, %nn)
  %sizes: list[int] = prim::ListConstruct(%first, %len)
  %z: Tensor = aten::zeros(%sizes, %dt, %nn, %nn, %nn)
  return (%z, %isnone)
}""")
    PassManager("canonicalize,fold-constants,dce").run(graph)
    ops = {n.op for n in graph.nodes()}
    assert not ops & {"aten::__getitem__.t", "aten::len.t", "prim::dtype", "aten::__is__"}, ops
    assert graph.outputs[0].type.dtype == torch.float32  # the factory learnt its dtype
    z, isnone = run(graph, [torch.randn(5, 4)])
    assert z.shape == (5, 2) and isnone is False


LOOP_WITH_IF = """
graph(%x: f32[N,4], %t: f32[]) {
  %zero: int = prim::Constant() {value=0}
  %one: int = prim::Constant() {value=1}
  %half: float = prim::Constant() {value=0.5}
  %nn: None = prim::Constant() {value=None}
  %true: bool = prim::Constant() {value=True}
  %n: int = aten::size.int(%x, %zero)
  %init: f32[N,4] = aten::mul.Scalar(%x, %half)
  %out: f32[N,4], %count: int = prim::Loop(%n, %true, %init, %zero) {
    block0(%i: int, %acc: f32[N,4], %c: int) {
      %row: f32[4] = aten::select.int(%x, %zero, %i)
      %s: f32[] = aten::sum(%row, %nn)
      %gt: b8[] = aten::gt.Tensor(%s, %t)
      %b: bool = aten::Bool.Tensor(%gt)
      %next: f32[N,4], %c2: int = prim::If(%b) {
        block0() {
          %d: f32[N,4] = aten::sub.Scalar(%acc, %half, %one)
          %c1: int = aten::add.int(%c, %one)
          return (%d, %c1)
        }
        block1() {
          %e: f32[N,4] = aten::add.Tensor(%acc, %x, %one)
          return (%e, %c)
        }
      }
      return (%true, %next, %c2)
    }
  }
  return (%out, %count)
}
"""


@pytest.mark.parametrize("rows,threshold", [(2, 0.0), (5, 0.0), (6, -1.0), (3, 9.0)])
def test_if_and_loop_lower_to_onnx_and_run(rows, threshold):
    graph = parse(LOOP_WITH_IF)
    verify(graph)
    model = emit_onnx(graph)
    assert {n.op_type for n in model.graph.node} >= {"Loop"}
    torch.manual_seed(rows)
    x, t = torch.randn(rows, 4), torch.tensor(threshold)
    want = run(graph, [x, t])
    got = run_onnx(model, [x.numpy(), t.numpy()])
    torch.testing.assert_close(torch.from_numpy(np.asarray(got[0])), want[0])
    assert int(np.asarray(got[1])) == want[1]


def test_if_lowering_is_deterministic():
    first = emit_onnx(parse(LOOP_WITH_IF)).SerializeToString()
    assert emit_onnx(parse(LOOP_WITH_IF)).SerializeToString() == first
