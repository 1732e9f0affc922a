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
from dexport.ir.errors import CaptureError
from dexport.ir.interpreter import run
from dexport.ir.parser import parse
from dexport.passes import PassManager
from dexport.passes.scripted import MAX_UNROLL_TRIPS


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


@torch.jit.script
def smooth(x: torch.Tensor, bias: Optional[torch.Tensor], steps: int) -> torch.Tensor:
    if x.dtype == torch.float32:  # decided once prim::dtype folds (fold-constants)
        x = x * 2.0
    else:
        x = x.float()
    for i in range(steps):
        x = x - x.mean(0, keepdim=True) + float(i)
        if bias is not None:  # decided by the types (canonicalize)
            x = x + bias
    return x


class ConstantControlFlow(torch.nn.Module):
    def __init__(self, steps: int):
        super().__init__()
        self.lin, self.steps = torch.nn.Linear(4, 4), steps

    def forward(self, x):
        return smooth(self.lin(x), None, self.steps)


def _ops(graph):
    return {n.op for n in graph.nodes()}


def _onnx_ops(result):
    import onnx
    return {n.op_type for n in onnx.load(str(result.directory / "model.onnx")).graph.node}


def test_constant_conditions_inline_and_small_constant_loops_unroll(tmp_path):
    torch.manual_seed(0)
    model = ConstantControlFlow(steps=3).eval()
    graph = dexport.capture(model, (torch.randn(3, 4),))
    assert {"prim::Loop", "prim::If"} <= _ops(graph)
    PassManager("canonicalize,fold-constants,dce", verify_each=True).run(graph)
    assert not _ops(graph) & {"prim::Loop", "prim::If"}, _ops(graph)
    for x in (torch.randn(5, 4), torch.randn(1, 4)):
        torch.testing.assert_close(graph(x), model(x))
    result = dexport.export(model, (torch.randn(3, 4),), tmp_path / "m",
                            check_inputs=[(torch.randn(6, 4),), (torch.randn(2, 4),)])
    assert result.verification.ok, result.verification.format_table()
    assert not _onnx_ops(result) & {"Loop", "If"}


def test_a_longer_constant_loop_stays_an_onnx_loop_its_constant_if_still_inlines(tmp_path):
    torch.manual_seed(0)
    model = ConstantControlFlow(steps=MAX_UNROLL_TRIPS + 1).eval()
    result = dexport.export(model, (torch.randn(3, 4),), tmp_path / "m", check_inputs=[(torch.randn(5, 4),)])
    assert result.verification.ok, result.verification.format_table()
    assert "prim::Loop" in _ops(result.graph) and "prim::If" not in _ops(result.graph)
    assert "Loop" in _onnx_ops(result) and "If" not in _onnx_ops(result)


def test_a_loop_that_may_stop_early_is_not_unrolled():
    graph = parse(LOOP_WITH_IF.replace("%n: int = aten::size.int(%x, %zero)",
                                       "%n: int = prim::Constant() {value=3}")
                              .replace("return (%true, %next, %c2)", "return (%b, %next, %c2)"))
    x, t = torch.randn(3, 4), torch.tensor(0.0)
    want = run(graph, [x, t])
    PassManager("canonicalize,fold-constants,dce", verify_each=True).run(graph)
    assert "prim::Loop" in _ops(graph)
    got = run(graph, [x, t])
    torch.testing.assert_close(got[0], want[0])
    assert got[1] == want[1]


def test_fold_constants_unrolls_a_loop_whose_trip_count_it_computed():
    graph = parse(LOOP_WITH_IF.replace("%n: int = aten::size.int(%x, %zero)",
                                       "%n: int = aten::add.int(%one, %one)"))
    x, t = torch.randn(3, 4), torch.tensor(0.0)
    want = run(graph, [x, t])
    PassManager("fold-constants,dce", verify_each=True).run(graph)
    assert "prim::Loop" not in _ops(graph) and "prim::If" in _ops(graph)  # the If reads data
    got = run(graph, [x, t])
    torch.testing.assert_close(got[0], want[0])
    assert got[1] == want[1]


@torch.jit.script
def sum_first_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.zeros_like(x[0])
    for i in range(n):
        out = out + x[i]
    return out


@torch.jit.script
def sum_all_rows(x: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(x[0])
    for i in range(x.size(0)):  # the size read inside: TorchScript keeps it a computation
        out = out + x[i]
    return out


class ScaleRows(torch.nn.Module):
    def forward(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        return x * scale


class PassesSize(torch.nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.scale = torch.jit.script(ScaleRows())

    def forward(self, x):
        if self.how == "size":
            return sum_first_rows(x * 2.0, x.shape[0])  # a 3-row trace would loop 3 times on 5 rows
        if self.how == "module":
            return self.scale(x, x.shape[1] * 0.5)
        if self.how == "value":
            return self.scale(x, x.abs().max())
        return sum_all_rows(x * 2.0)


@pytest.mark.parametrize("how,op,reads", [("size", "prim::CallFunction", "sizes"),
                                          ("module", "prim::CallMethod", "sizes"),
                                          ("value", "prim::CallMethod", "values")])
def test_a_traced_number_passed_into_scripted_code_is_refused_not_baked(how, op, reads):
    with pytest.raises(CaptureError) as info:
        dexport.capture(PassesSize(how), (torch.randn(3, 4),))
    err = info.value
    assert err.op == op and err.source.endswith("test_control_flow.py:" + str(_line_of(how)))
    assert f"computed from the input {reads}" in err.what and "x.size(0)" in err.hint


def _line_of(how: str) -> int:
    import inspect
    lines, start = inspect.getsourcelines(PassesSize.forward)
    return start + next(i for i, line in enumerate(lines) if f'"{how}"' in line) + 1


def test_the_size_read_inside_the_scripted_function_follows_the_input():
    model = PassesSize("inside")
    graph = dexport.capture(model, (torch.randn(3, 4),))
    x = torch.randn(5, 4)
    torch.testing.assert_close(graph(x), model(x))  # 5 trips, not the example's 3


@torch.jit.script
def rows_of(sizes: torch.Tensor, n: int) -> torch.Tensor:
    return sizes.reshape(n, 2)


def _scripted_sized_forward_batched(self, images, image_sizes, output_sizes=None):
    image_sizes = rows_of(image_sizes, images.shape[0])  # the batch size into scripted code
    return type(self).__mro__[1].forward_batched(self, images, image_sizes, output_sizes)


def scripted_sized_detector():
    from tests.frontends.test_value_dependence import _with_forward_batched
    return _with_forward_batched("mask_rcnn_tiny", _scripted_sized_forward_batched)


@pytest.mark.slow  # a detector export with probes: about 15 s
def test_a_detector_passing_its_batch_size_into_scripted_code_keeps_it_symbolic(tmp_path):
    from dexport.cli import main
    # the probes see the constant follow the batch: fix-batch-dim makes it N, and the
    # artifact is verified on batches of 2 and 3
    assert main(["export", "--model", "tests.frontends.test_control_flow:scripted_sized_detector",
                 "--output", str(tmp_path / "art"), "--size", "64"]) == 0
