"""First-divergence bisection: correct lowerings report nothing, a deliberately broken
lowering (monkeypatched into ``LOWERINGS`` for one test) is named exactly, and
amplified float noise is told apart from a wrong lowering."""
from __future__ import annotations

import pytest
import torch

import dexport
from dexport.backends import onnx as onnx_backend
from dexport.backends.onnx import emit_onnx, run_onnx
from dexport.bisect import bisect, bisect_model
from dexport.ir.interpreter import run


@pytest.fixture
def lowerings(monkeypatch):
    """Replace one lowering for the duration of a test: ``patch(op, wrap)`` where
    ``wrap(ctx, node, outputs) -> outputs`` edits the correct lowering's results."""
    def patch(op: str, wrap):
        correct = onnx_backend.LOWERINGS[op]
        monkeypatch.setitem(onnx_backend.LOWERINGS, op,
                            lambda ctx, node: wrap(ctx, node, correct(ctx, node)))
    return patch


def plus_half(ctx, node, outputs):
    return [ctx.op("Add", outputs[0], ctx.constant(0.5, ctx.out_dtype(node)))] + outputs[1:]


class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        y = torch.sigmoid(self.conv(x)).mean((2, 3))
        return self.head(y).relu() + x.shape[0]


def small_graph():
    torch.manual_seed(0)
    return dexport.capture(Small().eval(), (torch.randn(2, 3, 8, 8),))


def held_out():
    return [torch.randn(3, 3, 9, 9, generator=torch.Generator().manual_seed(1))]


def test_emit_onnx_value_names_maps_node_outputs_to_onnx_values():
    graph = small_graph()
    names = {}
    model = emit_onnx(graph, value_names=names)
    onnx_values = ({o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.initializer}
                   | {i.name for i in model.graph.input})
    assert names and set(names.values()) <= onnx_values
    assert names[graph.outputs[0]] == model.graph.output[0].name  # renamed to the graph output
    assert all(v.node.block is graph.block for v in names)
    kinds = {v.node.op for v in names}
    assert "prim::ListConstruct" not in kinds and {"aten::sigmoid", "aten::size.int", "prim::Param"} <= kinds


def test_correct_lowerings_report_no_divergence():
    report = bisect(small_graph(), held_out())
    assert report.ok and report.divergence is None and report.wrong_lowering is None
    # every tensor and the int from x.shape[0] (a 0-d ONNX tensor) were compared
    assert report.total == report.compared == 12
    assert str(report).startswith("no divergence: all 12 node outputs")


def test_a_broken_lowering_is_named_with_its_place_and_figures(lowerings):
    lowerings("aten::sigmoid", plus_half)
    graph = small_graph()
    report = bisect(graph, held_out())
    d = report.divergence
    assert not report.ok and report.wrong_lowering is d
    assert d.op == "aten::sigmoid" and d.node in list(graph.nodes())
    assert d.source.endswith(f"test_bisect.py:{Small.forward.__code__.co_firstlineno + 1}")
    assert d.reason == "values" and d.expected_shape == d.actual_shape == (3, 4, 7, 7)
    assert d.max_abs == pytest.approx(0.5, abs=1e-5) and d.mismatched == d.numel == 3 * 4 * 7 * 7
    assert d.expected_dtype == "float32"
    assert d.input_max_abs < 1e-5 and d.local_ok is False
    assert 0 < report.compared < report.total == 12  # the conv and its inputs matched
    text = str(report)
    assert "output 0 of aten::sigmoid" in text and "lowering of aten::sigmoid is wrong" in text
    assert ">>" in text and "= aten::sigmoid(" in text.split(">>")[1].splitlines()[0]


def test_an_ir_int_is_compared_as_a_0d_tensor(lowerings):
    lowerings("aten::size.int", lambda ctx, node, out: [ctx.op("Add", out[0], ctx.int64(1))])
    d = bisect(small_graph(), held_out()).divergence
    assert d.op == "aten::size.int" and d.reason == "values"
    assert d.expected_shape == d.actual_shape == () and d.max_abs == 1.0


def test_a_shape_mismatch_is_a_divergence(lowerings):
    class Relu(torch.nn.Module):
        def forward(self, x):
            return x.relu()
    lowerings("aten::relu", lambda ctx, node, out: [ctx.op("Concat", out[0], out[0], axis=0)])
    graph = dexport.capture(Relu(), (torch.randn(2, 3),))
    d = bisect(graph, [torch.randn(4, 3)]).divergence
    assert d.op == "aten::relu" and d.reason == "shape"
    assert (d.expected_shape, d.actual_shape) == ((4, 3), (8, 3))
    assert "shape differs: IR [4, 3] vs ONNX [8, 3]" in str(bisect(graph, [torch.randn(4, 3)]))


def test_empty_tensors_agree():
    class Select(torch.nn.Module):
        def forward(self, x):
            return x[x > 100.0] * 2
    graph = dexport.capture(Select(), (torch.tensor([[1.0, 200.0], [300.0, 4.0]]),))
    report = bisect(graph, [torch.zeros(3, 2)])
    assert report.ok and report.total > 0


def test_amplified_noise_is_not_blamed_on_the_lowering(lowerings):
    """A multiplication off by 2e-5 (within tolerance) makes ``> 0`` flip on exact zeros:
    the comparison diverges, but gt run on the ONNX model's own inputs agrees with it."""
    class Gate(torch.nn.Module):
        def forward(self, x):
            return (x * 3.0 > 0).float().sum(1)
    lowerings("aten::mul.Tensor", lambda ctx, node, out: [ctx.op("Add", out[0], ctx.constant(2e-5, torch.float32))])
    graph = dexport.capture(Gate(), (torch.randn(2, 3),))
    report = bisect(graph, [torch.tensor([[0.0, 1.0, -1.0], [0.0, 0.0, 2.0]])])
    d = report.divergence
    assert d.op == "aten::gt.Scalar" and d.local_ok is True
    assert d.input_max_abs == pytest.approx(2e-5, rel=1e-2)
    assert report.wrong_lowering is None  # sum after it is right on its own inputs too
    assert "float noise" in str(report) and "every lowering checked is right" in str(report)


def test_noise_first_then_the_wrong_lowering_further_on(lowerings):
    class Gate(torch.nn.Module):
        def forward(self, x):
            return torch.sigmoid((x * 3.0 > 0).float() + x)
    lowerings("aten::mul.Tensor", lambda ctx, node, out: [ctx.op("Add", out[0], ctx.constant(2e-5, torch.float32))])
    lowerings("aten::sigmoid", plus_half)
    graph = dexport.capture(Gate(), (torch.randn(2, 3),))
    report = bisect(graph, [torch.tensor([[0.0, 1.0, -1.0], [0.0, 0.0, 2.0]])])
    assert report.divergence.op == "aten::gt.Scalar" and report.divergence.local_ok is True
    assert report.wrong_lowering.op == "aten::sigmoid"
    assert "first wrong lowering further on: output 0 of aten::sigmoid" in str(report)


# --------------------------------------------------------------------------- a zoo detector

def images(count, size, seed):
    from dexport.models.data import ShapesDataset
    data = ShapesDataset("val", num_images=count, seed=seed, image_size=size)
    return [{"image": data[i]["image"]} for i in range(count)]


@pytest.fixture(scope="module")
def mask_rcnn():
    """The trained tiny Mask R-CNN captured as export captures it, and held-out inputs."""
    from dexport.bisect import capture_like_export, flat_inputs
    from dexport.models import zoo
    model = zoo.get("mask_rcnn_tiny").eval()
    graph = capture_like_export(model, (images(1, 64, 0),))
    return graph, flat_inputs(graph, model, (images(2, 80, 11),))


def test_bisect_model_captures_like_export():
    torch.manual_seed(0)
    report = bisect_model(Small().eval(), (torch.randn(2, 3, 8, 8),), tuple(held_out()))
    assert report.ok and report.total == 12


def test_mask_rcnn_with_correct_lowerings_has_no_divergence(mask_rcnn):
    report = bisect(*mask_rcnn)
    assert report.ok and report.total > 500


def test_mask_rcnn_broken_roi_align_fails_and_bisection_names_it(mask_rcnn, lowerings):
    """Acceptance: a lowering made to add 0.5 to pooled RoI features changes the
    detections, and bisection names exactly the first roi_align node: the box pooler's."""
    graph, flat = mask_rcnn
    lowerings("dexport::roi_align", plus_half)
    with torch.no_grad():
        expected = run(graph, flat)
    actual = run_onnx(emit_onnx(graph), flat)
    assert any(e.shape != a.shape or not torch.allclose(e.double(), torch.from_numpy(a).double(), atol=1e-3)
               for e, a in zip(expected, actual))

    report = bisect(graph, flat)
    first = next(n for n in graph.block.nodes if n.op == "dexport::roi_align")
    d = report.divergence
    assert d.node is first and report.wrong_lowering is d
    assert d.op == "dexport::roi_align" and d.scope == "roi_heads.box_pooler"
    assert d.max_abs == pytest.approx(0.5, abs=1e-4) and d.local_ok is False
    text = str(report)
    assert "output 0 of dexport::roi_align" in text and "scope:  roi_heads.box_pooler" in text


def test_bisect_artifact_recaptures_with_the_manifest_settings(tmp_path, lowerings):
    from dexport.bisect import bisect_artifact
    from dexport.ir.errors import DexportError
    torch.manual_seed(0)
    model, example = Small().eval(), (torch.randn(2, 3, 8, 8),)
    dexport.export(model, example, tmp_path / "art", opset=18)
    assert bisect_artifact(tmp_path / "art", model, tuple(held_out()), example_inputs=example).ok
    lowerings("aten::linear", plus_half)
    report = bisect_artifact(tmp_path / "art", model, tuple(held_out()), example_inputs=example)
    assert report.divergence.op == "aten::linear" and report.divergence.scope == "head"
    with pytest.raises(DexportError, match="captured with"):
        bisect_artifact(tmp_path / "art", model, tuple(held_out()))


def small_factory():
    """A `package.module:factory` for the CLI: (model, example_inputs, [check_inputs])."""
    torch.manual_seed(0)
    return Small().eval(), (torch.randn(2, 3, 8, 8),), [tuple(held_out())]


def test_cli_verify_bisect(tmp_path, lowerings, capsys):
    """`dexport verify ART --bisect`: nothing to report on a good artifact; on one
    exported with a broken lowering, verification fails and bisection names the node."""
    from dexport.cli import main
    spec = "tests.compiler.test_bisect:small_factory"
    assert main(["export", "--model", spec, "--output", str(tmp_path / "good")]) == 0
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "good"), "--bisect"]) == 0
    assert "no divergence: all 12 node outputs" in capsys.readouterr().out

    lowerings("aten::linear", plus_half)
    assert main(["export", "--model", spec, "--output", str(tmp_path / "bad")]) == 1
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "bad"), "--bisect"]) == 1
    out = capsys.readouterr().out
    assert "output 0 of aten::linear" in out and "scope:  head" in out
    assert "the ONNX lowering of aten::linear is wrong" in out


@pytest.mark.slow
def test_cli_verify_bisect_on_a_broken_detector_artifact(tmp_path, lowerings, capsys):
    from dexport.cli import main
    lowerings("dexport::roi_align", plus_half)
    art = str(tmp_path / "mask_rcnn")
    assert main(["export", "--model", "zoo:mask_rcnn_tiny", "--output", art, "--size", "64"]) == 1
    capsys.readouterr()
    assert main(["verify", art, "--bisect", "--capture-size", "64", "--images", "2", "--sizes", "96"]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH" in out and "output 0 of dexport::roi_align" in out
    assert "scope:  roi_heads.box_pooler" in out and "lowering of dexport::roi_align is wrong" in out


def test_an_onnx_model_that_fails_to_run_is_a_dexport_error(lowerings):
    from dexport.ir.errors import DexportError

    class Relu(torch.nn.Module):
        def forward(self, x):
            return x.relu()
    lowerings("aten::relu", lambda ctx, node, out: [ctx.op("Reshape", out[0], ctx.int64([7, -1]))])
    graph = dexport.capture(Relu(), (torch.randn(2, 3),))
    with pytest.raises(DexportError, match="onnxruntime cannot run the emitted model") as err:
        bisect(graph, [torch.randn(4, 3)])
    assert "Reshape" in str(err.value)
