"""The ONNX emitter itself: I/O declarations and dims, initializers, naming,
determinism, the checker, the all-at-once unsupported-op report, onnxsim."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F

from dexport.backends.onnx import (LOWERINGS, check_support, emit_onnx, has_lowering, lowering,
                                   run_onnx, runtime_ir_version, simplify)
from dexport.ir.errors import DexportError, UnsupportedOpsError
from dexport.ir.parser import parse
from dexport.ir.printer import print_graph
from tests.backends.onnx_util import capture_fn, compare


class SmallNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.unused = torch.nn.Parameter(torch.ones(2))

    def forward(self, x):
        y = F.relu(self.conv(x))
        return y.flatten(1).sum(1), y.mean((2, 3)) * 2.0


def small_graph():
    import dexport
    with torch.no_grad():
        return dexport.capture(SmallNet(), (torch.randn(1, 3, 8, 10),))


def dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_model_is_checked_loads_in_ort_and_matches():
    graph = small_graph()
    model = emit_onnx(graph)
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    assert model.producer_name == "dexport"
    assert model.ir_version == min(onnx.IR_VERSION, runtime_ir_version())
    assert [o.domain for o in model.opset_import] == [""] and model.opset_import[0].version == 17
    onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    compare(graph, model, (torch.randn(2, 3, 5, 7),))


def test_same_graph_gives_identical_bytes():
    graph = small_graph()
    first = emit_onnx(graph).SerializeToString()
    assert emit_onnx(graph).SerializeToString() == first
    assert emit_onnx(graph.clone()).SerializeToString() == first
    reparsed = parse(print_graph(graph), params=graph.params)
    assert emit_onnx(reparsed).SerializeToString() == first
    assert emit_onnx(small_graph()).SerializeToString() == first  # a second capture too


def test_params_become_initializers_named_by_param_name_only_when_used():
    model = emit_onnx(small_graph())
    names = [t.name for t in model.graph.initializer]
    assert "conv.weight" in names and "conv.bias" in names
    assert "unused" not in names
    weight = next(t for t in model.graph.initializer if t.name == "conv.weight")
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(weight), SmallNet().conv.weight.detach().numpy())


def test_traced_dims_are_never_declared():
    graph = small_graph()
    assert graph.example_shapes
    model = emit_onnx(graph)
    (inp,) = model.graph.input
    assert dims(inp) == ["input0_dim0", "input0_dim1", "input0_dim2", "input0_dim3"]
    assert [dims(o) for o in model.graph.output] == [["output0_dim0"], ["output1_dim0", "output1_dim1"]]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_symbolic_and_proven_dims():
    graph = parse("""graph(%x: f32[N,3,H,W], %k: int) {
  %y: f32[N,3,H,W] = aten::mul.Tensor(%x, %k)
  return (%y)
}""")
    assert not graph.example_shapes
    model = emit_onnx(graph)
    assert dims(model.graph.input[0]) == ["N", 3, "H", "W"]
    assert dims(model.graph.input[1]) == []  # an IR int is a 0-d int64
    assert model.graph.input[1].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert dims(model.graph.output[0]) == ["N", 3, "H", "W"]
    compare(graph, model, (torch.randn(2, 3, 4, 5), 3))


def test_dynamic_axes_static_and_by_name():
    graph = small_graph()
    static = emit_onnx(graph, dynamic_axes=None)
    assert dims(static.graph.input[0]) == [1, 3, 8, 10]
    named = emit_onnx(graph, input_names=["image"], output_names=["a", "b"],
                      dynamic_axes={"image": {0: "batch", 2: "height"}, "b": [0]})
    assert [i.name for i in named.graph.input] == ["image"]
    assert [o.name for o in named.graph.output] == ["a", "b"]
    assert dims(named.graph.input[0]) == ["batch", 3, "height", 10]
    assert dims(named.graph.output[1]) == ["b_dim0", 4]
    with pytest.raises(DexportError, match="dynamic_axes"):
        emit_onnx(graph, dynamic_axes="everything")


def test_io_names_are_checked():
    graph = small_graph()
    with pytest.raises(DexportError, match="1 output names for 2 graph outputs"):
        emit_onnx(graph, output_names=["only"])
    with pytest.raises(DexportError, match=r"names used twice.*\['x'\]"):
        emit_onnx(graph, input_names=["x"], output_names=["x", "y"])
    with pytest.raises(DexportError, match=r"names used twice.*\['conv.weight'\]"):
        emit_onnx(graph, input_names=["conv.weight"])


def test_outputs_that_are_inputs_constants_params_or_repeated():
    graph = parse("""graph(%x: f32[N,2]) {
  %c: i64[2] = prim::Constant() {value=tensor(i64[2], [4, 5])}
  %w: f32[3] = prim::Param() {name="w"}
  %y: f32[N,2] = aten::relu(%x)
  return (%x, %y, %y, %c, %w)
}""", params={"w": torch.arange(3.0)})
    model = emit_onnx(graph)
    assert len({o.name for o in model.graph.output}) == 5
    x = torch.randn(4, 2)
    outs = run_onnx(model, [x])
    np.testing.assert_array_equal(outs[0], x.numpy())
    np.testing.assert_array_equal(outs[1], outs[2])
    np.testing.assert_array_equal(outs[3], [4, 5])
    np.testing.assert_array_equal(outs[4], [0.0, 1.0, 2.0])


def test_equal_constants_share_one_initializer():
    graph = capture_fn(lambda x: x.reshape(-1, 2).sum(0) + x.reshape(-1, 2).mean(0), torch.randn(4, 2))
    model = emit_onnx(graph)
    contents = [(t.data_type, tuple(t.dims), t.raw_data) for t in model.graph.initializer]
    assert len(contents) == len(set(contents))
    assert (onnx.TensorProto.INT64, (2,), np.array([-1, 2], np.int64).tobytes()) in contents


def test_every_unsupported_op_is_reported_at_once_with_counts_and_places():
    graph = parse("""graph(%x: f32[N,4]) {
  %a: f32[N,4] = foo::bar(%x)  # backbone.res2 @ models/a.py:3
  %b: f32[N,4] = aten::relu(%a)  # backbone.res2 @ models/a.py:4
  %c: f32[N,4] = foo::bar(%b)  # roi_heads @ models/b.py:9
  %d: f32[N,4] = foo::baz(%c)  # roi_heads.mask @ models/c.py:1
  return (%d)
}""")
    assert check_support(graph) == [
        ("foo::bar", 2, [("backbone.res2", "models/a.py:3"), ("roi_heads", "models/b.py:9")]),
        ("foo::baz", 1, [("roi_heads.mask", "models/c.py:1")]),
    ]
    with pytest.raises(UnsupportedOpsError) as info:
        emit_onnx(graph)
    text = str(info.value)
    assert "2 op(s) have no ONNX lowering" in text
    assert "foo::bar  x2" in text and "foo::baz  x1" in text
    for place in ("backbone.res2 @ models/a.py:3", "roi_heads @ models/b.py:9", "roi_heads.mask @ models/c.py:1"):
        assert place in text
    assert "decompose" in text and "lowering(" in text
    assert "aten::relu" not in text


def test_report_shows_a_few_places_per_op():
    lines = "\n".join(f"  %a{k}: f32[N] = foo::bar(%x)  # m{k} @ f.py:{k}" for k in range(5))
    graph = parse(f"graph(%x: f32[N]) {{\n{lines}\n  return (%a4)\n}}")
    with pytest.raises(UnsupportedOpsError, match=r"foo::bar  x5[\s\S]*and 2 more places"):
        emit_onnx(graph)


def test_a_runtime_value_where_onnx_needs_a_constant_names_the_node():
    graph = parse("""graph(%x: f32[A,B]) {
  %0: int = prim::Constant() {value=0}
  %d: int = aten::size.int(%x, %0)  # head @ h.py:7
  %l: list[int] = prim::ListConstruct(%d, %0)
  %y: f32[B,A] = aten::permute(%x, %l)  # head @ h.py:8
  return (%y)
}""")
    with pytest.raises(UnsupportedOpsError) as info:
        emit_onnx(graph)
    err = info.value
    assert err.op == "aten::permute" and err.scope == "head" and err.source == "h.py:8"
    assert "compile-time constant" in str(err) and ">>" in err.context


def test_unsupported_opset():
    with pytest.raises(DexportError, match="opset 12"):
        emit_onnx(small_graph(), opset=12)


def test_registry():
    assert has_lowering("aten::relu") and has_lowering("prim::Constant")
    assert not has_lowering("foo::bar")
    with pytest.raises(DexportError, match="already has a lowering in the 'onnx' table"):
        lowering("aten::relu")(lambda ctx, node: [])
    assert LOWERINGS["aten::relu"].__module__ == "dexport.backends.onnx_aten"


def test_backend_is_the_onnx_decompose_target():
    from dexport.backends import get_backend, register_backend
    from dexport.passes.decompose import target_support
    backend = register_backend(get_backend("onnx"))  # as on import (other tests replace the target)
    assert target_support("onnx") == backend.supports
    assert target_support("onnx")("aten::relu") and not target_support("onnx")("foo::bar")


def test_custom_lowering_registered_by_a_user(monkeypatch):
    graph = parse("""graph(%x: f32[N]) {
  %y: f32[N] = foo::double(%x)
  return (%y)
}""")
    monkeypatch.setitem(LOWERINGS, "foo::double", lambda ctx, node: [ctx.op("Add", ctx.input(node, 0), ctx.input(node, 0))])
    model = emit_onnx(graph)
    np.testing.assert_array_equal(run_onnx(model, [np.arange(3, dtype=np.float32)])[0], [0, 2, 4])


def test_a_lowering_with_the_wrong_result_count_is_caught(monkeypatch):
    graph = parse("""graph(%x: f32[N]) {
  %y: f32[N] = foo::bad(%x)
  return (%y)
}""")
    monkeypatch.setitem(LOWERINGS, "foo::bad", lambda ctx, node: [])
    with pytest.raises(DexportError, match="gave 0 results for 1 outputs"):
        emit_onnx(graph)


def test_simplify_keeps_outputs_and_is_deterministic():
    graph = small_graph()
    model = emit_onnx(graph)
    x = torch.randn(1, 3, 6, 9)
    simplified = simplify(model, [x])
    assert simplified is not model
    assert len(simplified.graph.node) <= len(model.graph.node)
    assert simplify(model, [x]).SerializeToString() == simplified.SerializeToString()
    for a, b in zip(run_onnx(model, [x]), run_onnx(simplified, [x])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_simplify_keeps_the_original_when_onnxsim_fails_or_changes_outputs(monkeypatch):
    import onnxsim
    model = emit_onnx(small_graph())

    def broken(model, **kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr(onnxsim, "simplify", broken)
    with pytest.warns(UserWarning, match="onnxsim failed.*boom"):
        assert simplify(model) is model

    def wrong(model, **kwargs):
        changed = onnx.ModelProto()
        changed.CopyFrom(model)
        for node in changed.graph.node:
            if node.op_type == "Relu":
                node.op_type = "Sigmoid"
        return changed, True
    monkeypatch.setattr(onnxsim, "simplify", wrong)
    with pytest.warns(UserWarning, match="changed output 0"):
        assert simplify(model, [torch.randn(1, 3, 4, 4)]) is model
