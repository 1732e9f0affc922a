"""decompose: ops a target lacks become torch's decompositions, traced with symbolic
shapes, so the graph still computes the same on other input sizes; what cannot be
decomposed that way is left alone, with the reason."""
import pytest
import torch
import torch.nn.functional as F

import dexport
from dexport.ir.errors import PassError, UnsupportedOpsError
from dexport.ir.parser import parse
from dexport.ir.verifier import verify
from dexport.passes import PassManager, get_pass
from dexport.passes.decompose import decompose_graph, register_target

# A target lacking a few composite ops (the rest of ATen is "supported").
LACKING = {"aten::hardswish", "aten::lerp.Scalar", "aten::baddbmm", "aten::glu", "aten::split.Tensor",
           "aten::cummax", "aten::gelu"}
register_target("test-lacking", lambda op: op not in LACKING)


class _Composite(torch.nn.Module):
    def forward(self, x, y, b):
        h = F.hardswish(x) * torch.lerp(x, y, 0.25)
        return torch.baddbmm(b, b, b, beta=0.5), F.gelu(h, approximate="tanh")


def _inputs(n, m):
    g = torch.Generator().manual_seed(n * 100 + m)
    return (torch.randn(n, m, generator=g), torch.randn(n, m, generator=g), torch.randn(2, m, m, generator=g))


def test_decomposed_graph_computes_the_same_on_other_shapes():
    model = _Composite()
    graph = dexport.capture(model, _inputs(3, 5))
    scopes = {n.meta.source for n in graph.nodes() if n.op in LACKING}
    manager = PassManager("decompose{target=test-lacking}", verify_each=True)
    manager.run(graph)
    ops = [n.op for n in graph.nodes()]
    assert not LACKING & set(ops)
    assert "aten::clamp" in ops and "aten::tanh" in ops  # hardswish's and gelu's pieces
    assert {n.meta.source for n in graph.nodes() if n.op != "prim::Constant"} <= scopes | {""}
    for n, m in [(3, 5), (7, 2), (1, 9)]:
        inputs = _inputs(n, m)
        for got, expected in zip(graph(*inputs), model(*inputs)):
            assert got.shape == expected.shape
            torch.testing.assert_close(got, expected)


def test_only_restricts_the_ops_and_refused_says_why():
    graph = dexport.capture(_Composite(), _inputs(3, 5))
    p = get_pass("decompose", target="test-lacking", only="aten::hardswish, aten::cummax")
    assert p.run(graph)
    ops = {n.op for n in graph.nodes()}
    assert "aten::hardswish" not in ops and {"aten::lerp.Scalar", "aten::baddbmm"} <= ops
    assert p.refused == []
    assert "only=" in p.spec()


def test_an_op_without_decomposition_is_left_alone_and_the_emitter_lists_it():
    from dexport.backends.onnx import emit_onnx, has_lowering
    if has_lowering("aten::cummax"):
        pytest.skip("aten::cummax now has an ONNX lowering")
    register_target("onnx", has_lowering)
    graph = dexport.capture(_CumMax(), (torch.randn(3, 4),))
    before = str(graph)
    p = get_pass("decompose", target="onnx")
    assert not p.run(graph)
    assert str(graph) == before
    assert [(op, reason) for op, _, reason in p.refused] == [
        ("aten::cummax", "torch has no decomposition of this op (or none without it)")]
    with pytest.raises(UnsupportedOpsError, match="aten::cummax"):
        emit_onnx(graph)


class _CumMax(torch.nn.Module):
    def forward(self, x):
        return torch.cummax(x, 1)[0] + 1


class _Glu(torch.nn.Module):
    def forward(self, x):
        return F.glu(x, 1), torch.split(x, 3, 1)[1]


def test_guards_the_op_itself_makes_are_not_refused():
    # glu and split guard on the size of dim 1 (even, a multiple of 3), but so do the
    # ops themselves traced without decompositions (glu's check, split's output count
    # that the capture fixed): those are no baked assumption, so they decompose.
    graph = dexport.capture(_Glu(), (torch.randn(2, 6),))
    assert graph.example_shapes
    changed, refused = decompose_graph(graph, lambda op: op not in LACKING)
    assert changed and refused == []
    assert not LACKING & {n.op for n in graph.nodes()}


def test_with_proven_static_shapes_the_same_ops_decompose():
    model = _Glu()
    x = torch.randn(2, 6)
    graph = dexport.capture(model, (x,))
    graph.example_shapes = False  # the caller vouches for these sizes
    changed, refused = decompose_graph(graph, lambda op: op not in LACKING)
    assert changed and refused == []
    verify(graph)
    assert not LACKING & {n.op for n in graph.nodes()}
    assert "prim::ListUnpack" in {n.op for n in graph.nodes()}  # split's list result
    for got, expected in zip(graph(x), model(x)):
        torch.testing.assert_close(got, expected)


NAMED = """\
graph(%x: f32[N,4], %y: f32[N,4], %c: bool) {
  %w: float = prim::Constant() {value=0.75}
  %r: f32[N,4] = prim::If(%c) {  # roi_heads
    block0() {
      %l: f32[N,4] = aten::lerp.Scalar(%x, %y, %w)  # roi_heads.mix @ model.py:7
      return (%l)
    }
    block1() {
      %h: f32[N,4] = aten::hardswish(%x)  # roi_heads.act @ model.py:9
      return (%h)
    }
  }
  return (%r)
}
"""

def test_named_dims_and_nested_blocks():
    graph = parse(NAMED)
    reference = graph.clone()
    changed, refused = decompose_graph(graph, lambda op: op not in LACKING)
    assert changed and refused == []
    verify(graph)
    inner = [n for n in graph.nodes() if n.block is not graph.block]
    assert inner and not LACKING & {n.op for n in inner}
    # x and y share the symbol N: no guard, and the new values keep the name.
    shapes = {n.outputs[0].type.shape for n in inner if n.op.startswith("aten::")}
    assert shapes == {("N", 4), ()}  # () for lerp's 0-d weight
    assert {n.meta.scope for n in inner} == {"roi_heads.mix", "roi_heads.act"}
    x, y = torch.randn(6, 4), torch.randn(6, 4)
    for cond in (True, False):
        flag = torch.tensor(cond)
        torch.testing.assert_close(graph(x, y, flag), reference(x, y, flag))


def test_unknown_target_names_the_registered_ones():
    graph = parse(NAMED)
    with pytest.raises(PassError, match="test-lacking"):
        get_pass("decompose", target="no-such-backend").run(graph)


class _Flatten(torch.nn.Module):
    def forward(self, x):
        return torch.flatten(x, 1) * 2


def test_sizes_a_decomposition_reads_are_read_at_run_time():
    # flatten decomposes to view(x, [size(x, 0), size(x, 1) * size(x, 2)]): sizes
    # from the trace's symbols, never the example's numbers.
    from dexport.backends.onnx import emit_onnx, has_lowering, run_onnx
    graph = dexport.capture(_Flatten(), (torch.randn(2, 3, 4),))
    register_target("onnx-without-flatten", lambda op: op != "aten::flatten.using_ints" and has_lowering(op))
    p = get_pass("decompose", target="onnx-without-flatten")
    assert p.run(graph) and p.refused == []
    ops = [n.op for n in graph.nodes()]
    assert "aten::flatten.using_ints" not in ops and {"aten::size.int", "aten::mul.int"} <= set(ops)
    onnx_model = emit_onnx(graph)
    for shape in [(5, 2, 7), (1, 6, 1)]:
        x = torch.randn(shape)
        expected = _Flatten()(x)
        assert torch.equal(graph(x), expected)
        assert torch.equal(torch.from_numpy(run_onnx(onnx_model, [x])[0]), expected)


def test_decompose_then_emit_onnx_runs_at_another_shape():
    from dexport.backends.onnx import emit_onnx, has_lowering, run_onnx
    register_target("onnx", has_lowering)
    model = _Composite()
    graph = dexport.capture(model, _inputs(3, 5))
    lacking = {n.op for n in graph.nodes() if not has_lowering(n.op)}
    p = get_pass("decompose", target="onnx")
    assert p.run(graph) == bool(lacking)
    assert p.refused == []
    onnx_model = emit_onnx(graph)
    inputs = _inputs(6, 3)
    for got, expected in zip(run_onnx(onnx_model, inputs), model(*inputs)):
        torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-5, atol=1e-5)
