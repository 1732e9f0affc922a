"""`dexport export` to ONNX end to end: one artifact serves any batch size and
resolution, matches eager on images not used for capture, re-exports to the same
bytes, runs in a bare onnxruntime session, and failures leave nothing on disk."""
import json

import onnxruntime
import pytest
import torch

import dexport
from dexport.artifacts import MANIFEST
from dexport.cli import main
from dexport.driver import PROBE_SIDE, batched_inputs, probe_batches
from dexport.verification import verify
from dexport.ir import UnsupportedOpsError
from dexport.models import zoo
from dexport.models.data import ShapesDataset

TINY = sorted(n for n in zoo.names() if n.endswith("_tiny"))
R50 = sorted(n for n in zoo.names() if n.endswith("_R50_FPN"))


def images(count: int, size, seed: int) -> list[dict]:
    h, w = (size, size) if isinstance(size, int) else size
    data = ShapesDataset("val", num_images=count, seed=seed, image_size=max(h, w))
    return [{"image": data[i]["image"][:, :h, :w].contiguous()} for i in range(count)]


def min_mask_iou(report) -> float:
    return report.extremes().get("mask_iou", {"value": 1.0})["value"]


def assert_matches_eager(model, loaded, inputs):
    """Detections matched by IoU (dexport.verification) within the default tolerances:
    same counts, boxes 1e-3 of the image size, scores 1e-4, mask IoU 0.99 — or, for
    masks that fragile, no worse than eager's own noise floor: eager against eager on
    images changed by 1e-3 (of 255). Untrained mask heads predict probabilities at the
    0.5 threshold, where rounding flips pixels (pointrend_tiny drops to 0.973 so)."""
    with torch.no_grad():
        report = verify(model, loaded, [(inputs,)])
        if report.ok:
            return
        assert verify(model, loaded, [(inputs,)], mask_iou=0.0).ok, report.format_table()
        nudged = [{**x, "image": x["image"] + 1e-3} for x in inputs]
        floor = min_mask_iou(verify(model, lambda _: model(nudged), [(inputs,)], mask_iou=0.0))
    assert floor < 0.99 and min_mask_iou(report) >= floor - 0.01, (report.format_table(), floor)


def test_artifact_contents(mask_rcnn_artifact):
    manifest = json.loads((mask_rcnn_artifact / MANIFEST).read_text())
    assert sorted(p.name for p in mask_rcnn_artifact.iterdir()) == [MANIFEST, "model.onnx"]
    assert manifest["format"] == "onnx" and manifest["io"] == "detection" and manifest["opset"] == 17
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["verification"]["ok"] and manifest["model"] == "zoo:mask_rcnn_tiny"
    images_dims = manifest["inputs"][0]["shape"]
    assert len(images_dims) == 4 and all(isinstance(d, str) for d in images_dims[:1] + images_dims[2:])


@pytest.mark.parametrize("batch", [1, 2, 3])
@pytest.mark.parametrize("size", [64, 96, (80, 112)])
def test_mask_rcnn_matches_eager_at_any_batch_and_resolution(mask_rcnn_artifact, batch, size):
    model = zoo.get("mask_rcnn_tiny")
    assert_matches_eager(model, dexport.load(mask_rcnn_artifact), images(batch, size, seed=100 + batch))


def test_bare_onnxruntime_session_runs_it(mask_rcnn_artifact):
    session = onnxruntime.InferenceSession(str(mask_rcnn_artifact / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    feeds = dict(zip([i.name for i in session.get_inputs()],
                     [torch.zeros(2, 3, 64, 96).numpy(), torch.tensor([[64, 96], [50, 70]]).numpy(),
                      torch.tensor([[64, 96], [50, 70]]).numpy()]))
    outputs = {o.name: v for o, v in zip(session.get_outputs(), session.run(None, feeds))}
    assert outputs["counts"].shape == (2,)


def test_reexport_gives_the_same_bytes(mask_rcnn_artifact, tmp_path):
    again = tmp_path / "again"
    assert main(["export", "--model", "zoo:mask_rcnn_tiny", "--output", str(again), "--size", "64"]) == 0
    assert (again / "model.onnx").read_bytes() == (mask_rcnn_artifact / "model.onnx").read_bytes()


@pytest.mark.parametrize("name", [n for n in TINY if n != "mask_rcnn_tiny"])
def test_every_tiny_zoo_model_exports_and_matches(name, tmp_path):
    model = zoo.get(name)
    dexport.export(model, (images(1, 64, seed=0),), tmp_path / name)
    loaded = dexport.load(tmp_path / name)
    assert_matches_eager(model, loaded, images(2, 96, seed=7))
    assert_matches_eager(model, loaded, images(3, (80, 64), seed=8))


@pytest.mark.parametrize("batch", ["dynamic", 1])
def test_probes_are_scaled_down_and_differ_from_the_example(batch):
    example = images(1, (320, 256), seed=0)
    probes = probe_batches(example, batch)
    sizes = [tuple(batched_inputs((example,))[0].shape)] + [tuple(batched_inputs(p)[0].shape) for p in probes]
    assert [s[0] for s in sizes] == ([1, 2, 3] if batch == "dynamic" else [1, 1, 1])
    assert all(max(s[2:]) <= PROBE_SIDE + 64 for s in sizes[1:])
    assert len({s[2] for s in sizes}) == 3 and len({s[3] for s in sizes}) == 3
    # An example whose scaled-down probes would repeat its own height: probes grow from it instead.
    example = images(1, (160, 96), seed=0)
    heights = [batched_inputs(p)[0].shape[2] for p in probe_batches(example, batch)]
    assert heights == [192, 224]


def test_large_example_exports_through_small_probes(tmp_path):
    """Captured at 320x256 with probes at about 128 px: the artifact is right at other sizes."""
    model = zoo.get("mask_rcnn_tiny")
    dexport.export(model, (images(1, (320, 256), seed=0),), tmp_path / "a")
    loaded = dexport.load(tmp_path / "a")
    assert_matches_eager(model, loaded, images(2, (200, 240), seed=9))
    assert_matches_eager(model, loaded, images(1, 96, seed=10))


@pytest.mark.slow
@pytest.mark.parametrize("name", R50)
def test_r50_zoo_models_export_and_match(name, tmp_path):
    model = zoo.get(name)
    dexport.export(model, (images(1, 128, seed=0),), tmp_path / name)
    loaded = dexport.load(tmp_path / name)
    for batch, size in ((1, 160), (2, 128), (3, (96, 160))):
        assert_matches_eager(model, loaded, images(batch, size, seed=batch))


class Cummax(torch.nn.Module):
    """cummax has neither an ONNX lowering nor a decomposition."""

    def forward(self, x):
        return torch.cummax(x, dim=0).values + torch.cummin(x, dim=0).values


def test_unsupported_ops_are_listed_and_nothing_is_written(tmp_path):
    with pytest.raises(UnsupportedOpsError) as err:
        dexport.export(Cummax(), (torch.randn(4, 3),), tmp_path / "out")
    message = str(err.value)
    assert "aten::cummax" in message and "aten::cummin" in message
    assert "test_export_onnx.py" in message  # the source line of each op
    assert list(tmp_path.iterdir()) == []


def test_export_interrupted_mid_write_leaves_nothing(tmp_path, monkeypatch):
    import dexport.driver

    def broken(stage, manifest):
        raise KeyboardInterrupt

    monkeypatch.setattr(dexport.driver, "finish_manifest", broken)
    with pytest.raises(KeyboardInterrupt):
        dexport.export(torch.nn.Conv2d(3, 4, 3), (torch.randn(1, 3, 8, 8),), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_structured_model_round_trips_through_load(tmp_path):
    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, batch):
            y = self.conv(batch["x"]).relu()
            return {"mean": y.mean((2, 3)), "maps": [y, y * 2], "total": y.sum()}

    model = TwoHeads().eval()
    dexport.export(model, ({"x": torch.randn(1, 3, 16, 16)},), tmp_path / "m")
    loaded = dexport.load(tmp_path / "m")
    other = {"x": torch.randn(1, 3, 24, 20)}
    got, want = loaded(other), model(other)
    torch.testing.assert_close(got["maps"][1], want["maps"][1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["mean"], want["mean"], rtol=1e-5, atol=1e-5)
    assert got["total"].shape == ()  # 0-d outputs stay 0-d
    torch.testing.assert_close(got["total"], want["total"], rtol=1e-4, atol=1e-3)


def test_cli_check_mode_and_errors(tmp_path, capsys):
    assert main(["export", "--model", "zoo:retinanet_tiny", "--check", "--size", "64"]) == 0
    assert "has an ONNX lowering" in capsys.readouterr().out
    assert main(["export", "--model", "zoo:faster_rcnn_tiny", "--output", str(tmp_path / "a"), "--size", "64"]) == 0
    assert main(["export", "--model", "zoo:faster_rcnn_tiny", "--output", str(tmp_path / "a"), "--size", "64"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_requested_output_sizes_and_named_dims(mask_rcnn_artifact):
    manifest = json.loads((mask_rcnn_artifact / MANIFEST).read_text())
    dims = {io["name"]: io["shape"] for io in manifest["inputs"] + manifest["outputs"]}
    assert dims["images"][0] == "N" and dims["images"][2:] == ["H", "W"] and dims["counts"] == ["N"]
    assert dims["masks"][1:] != ["H", "W"]  # the canvas follows the requested output size
    inputs = images(2, 96, seed=21)
    inputs[0].update(height=150, width=120)
    inputs[1].update(height=60, width=48)
    assert_matches_eager(zoo.get("mask_rcnn_tiny"), dexport.load(mask_rcnn_artifact), inputs)


def test_export_decomposes_ops_without_a_lowering(tmp_path):
    from dexport.backends.onnx import has_lowering
    assert not has_lowering("aten::hardswish")  # else this test proves nothing

    class Act(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.hardswish(x) * 2

    result = dexport.export(Act(), (torch.randn(2, 8),), tmp_path / "act")
    assert "decompose{target=onnx}" in result.manifest["pipeline"]
    other = torch.randn(3, 5)
    torch.testing.assert_close(dexport.load(tmp_path / "act")(other), Act()(other), rtol=1e-5, atol=1e-6)
