"""The TorchScript backend: every tiny zoo detector and ordinary models export to a
``model.pt`` that plain torch runs (a fresh process importing only torch), matching
eager on inputs not used for capture; the generated source is deterministic, safe
against hostile module names, and its aten calls resolve to the IR's overloads."""
from __future__ import annotations

import ast
import re
import json
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import dexport
from dexport.backends.base import get_backend
from dexport.backends.torchscript import LOWERINGS, TorchScriptRunner, build_module, compile_source, supports
from dexport.backends.torchscript_emit import comment_text, identifier
from dexport.cli import main, sample_images
from dexport.driver import default_pipeline
from dexport.ir.dialects.detection_io import stack_inputs
from dexport.ir.errors import DexportError
from dexport.loader import LoadedModel
from dexport.models import zoo
from dexport.passes import PassManager
from dexport.verification import verify
from tests.backends import ts_models

TINY = [n for n in zoo.names() if n.endswith("_tiny")]
DETECTION_INPUTS = ["images", "image_sizes", "output_sizes"]
# Held-out inputs: batch 1, 2 and 3 at three resolutions none of which was captured.
HELD_OUT = [(1, 96, 11), (2, 80, 12), (3, 112, 13)]


def scripted_detector(name: str):
    """A tiny zoo detector captured once through ``forward_batched`` at batch 2 (64 px),
    run through the TorchScript pipeline and scripted; loaded back as ``dexport.load``
    would (so ``verify`` compares it with eager image by image)."""
    model = zoo.get(name).eval()
    with torch.no_grad():
        graph = dexport.capture(model, tuple(stack_inputs(sample_images(2, 64, seed=0), "cpu")[:3]),
                                inference_func=lambda m, *args: m.forward_batched(*args))
    PassManager(default_pipeline("torchscript")).run(graph)
    outputs = list(graph.output_schema.keys)
    _, model_bytes = build_module(graph, DETECTION_INPUTS, outputs)
    manifest = {"inputs": [{"name": n} for n in DETECTION_INPUTS], "io": "detection",
                "input_schema": graph.input_schema.to_json(), "output_schema": graph.output_schema.to_json()}
    return model, LoadedModel(TorchScriptRunner(model_bytes, outputs), manifest)


# The three heaviest (20-50 s each on 2 cores, mostly RoIAlign and mask pasting) run with -m slow.
SLOW = {"cascade_mask_rcnn_tiny", "panoptic_fpn_tiny", "pointrend_tiny"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in TINY])
def test_tiny_zoo_detector_matches_eager_at_batches_1_2_3_and_other_resolutions(name):
    model, loaded = scripted_detector(name)
    report = verify(model, loaded, [(sample_images(n, size, seed=seed),) for n, size, seed in HELD_OUT])
    assert report.ok, report.to_dict()


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in zoo.names() if "R50" in n])
def test_r50_zoo_detector_matches_eager(name):
    model, loaded = scripted_detector(name)
    report = verify(model, loaded, [(sample_images(n, size, seed=seed),) for n, size, seed in HELD_OUT[:2]])
    assert report.ok, report.to_dict()


# --------------------------------------------------------------------------- a full export

@pytest.fixture(scope="module")
def mask_artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("ts") / "mask_rcnn"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch.jit.script's deprecation warning must not reach users
        assert main(["export", "--model", "zoo:faster_rcnn_tiny", "--format", "torchscript", "--output", str(out),
                     "--size", "64"]) == 0
    return out


def test_artifact_holds_model_pt_its_source_and_the_manifest(mask_artifact):
    manifest = json.loads((mask_artifact / "manifest.json").read_text())
    assert sorted(p.name for p in mask_artifact.iterdir()) == ["manifest.json", "model.pt", "model.py"]
    assert manifest["format"] == "torchscript" and manifest["model_file"] == "model.pt"
    assert set(manifest["files"]) == {"model.pt", "model.py"}
    assert manifest["pipeline"].endswith("decompose{target=torchscript},dce")
    assert [i["name"] for i in manifest["inputs"]] == DETECTION_INPUTS
    assert [o["name"] for o in manifest["outputs"]] == ["boxes", "scores", "classes", "counts"]
    assert manifest["inputs"][0]["shape"][0] == "N" and manifest["verification"]["ok"]
    source = (mask_artifact / "model.py").read_text()
    assert "def forward(self, images: Tensor, image_sizes: Tensor, output_sizes: Tensor) -> Dict[str, Tensor]:" \
        in source
    assert "import dexport" not in source and "# roi_heads.box_pooler @ " in source
    assert "torch.ops.aten.add.Tensor" not in source  # overload packets only
    ast.parse(source)


def test_dexport_load_verify_and_bench_take_the_artifact(mask_artifact, tmp_path):
    model = zoo.get("faster_rcnn_tiny")
    loaded = dexport.load(mask_artifact)
    assert isinstance(loaded.runner, TorchScriptRunner)
    assert verify(model, loaded, [(sample_images(3, 72, seed=21),)]).ok
    assert main(["verify", str(mask_artifact), "--images", "1", "--sizes", "88", "--batch", "2"]) == 0
    assert main(["bench", "--model", "zoo:faster_rcnn_tiny", "--artifact", str(mask_artifact), "--size", "64",
                 "--runs", "1", "--warmup", "0", "--json", str(tmp_path / "bench.json")]) == 0


def test_a_fresh_process_with_only_torch_runs_model_pt_like_eager(mask_artifact, tmp_path):
    model = zoo.get("faster_rcnn_tiny")
    inputs = stack_inputs(sample_images(2, 100, seed=5), "cpu")[:3]
    with torch.no_grad():
        expected = model.forward_batched(*inputs)
    torch.save({"inputs": list(inputs), "expected": dict(expected)}, tmp_path / "io.pt")
    script = """
import sys, torch
m = torch.jit.load(sys.argv[1])
io = torch.load(sys.argv[2])
out = m(*io["inputs"])
assert list(out) == list(io["expected"]), (list(out), list(io["expected"]))
for k, v in io["expected"].items():
    torch.testing.assert_close(out[k], v, rtol=1e-4, atol=1e-4)
for name in ("dexport", "torchvision", "detectron2"):
    assert not any(m == name or m.startswith(name + ".") for m in sys.modules), name
print("ok")
"""
    proc = subprocess.run([sys.executable, "-I", "-c", script, str(mask_artifact / "model.pt"),
                           str(tmp_path / "io.pt")], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.slow
def test_bisect_runs_on_a_torchscript_artifact(mask_artifact):
    assert get_backend("torchscript").can_bisect
    assert main(["verify", str(mask_artifact), "--bisect", "--images", "1"]) == 0


# --------------------------------------------------------------------------- ordinary models

@pytest.mark.parametrize("factory", ["small_cnn", "structured"])
def test_ordinary_models_export_and_match_eager(factory, tmp_path):
    model, example, checks = getattr(ts_models, factory)()
    result = dexport.export(model, example, tmp_path / factory, format="torchscript", check_inputs=checks)
    assert result.verification.ok
    loaded = dexport.load(tmp_path / factory)
    (other,) = getattr(ts_models, factory)()[2]
    with torch.no_grad():
        torch.testing.assert_close(loaded(*other), model(*other), rtol=1e-5, atol=1e-5)


def test_emission_is_byte_identical_across_processes(tmp_path):
    """Two exports of the same model, each in its own process, give the same bytes."""
    digests = []
    for k in range(2):
        out = tmp_path / f"a{k}"
        proc = subprocess.run([sys.executable, "-m", "dexport", "export", "--model", "tests.backends.ts_models:small_cnn",
                               "--format", "torchscript", "--output", str(out)], capture_output=True, text=True,
                              timeout=300, cwd=str(__import__("pathlib").Path(__file__).parents[2]))
        assert proc.returncode == 0, proc.stderr
        digests.append(((out / "model.pt").read_bytes(), (out / "model.py").read_bytes()))
    assert digests[0] == digests[1]


def test_emission_is_byte_identical_within_one_process(tmp_path):
    """A second export in the same process gives the same bytes (TorchScript would
    rename a class it compiles twice; scripting runs in a fresh process each time)."""
    files = []
    for k in range(2):
        model, example, _ = ts_models.small_cnn()
        dexport.export(model, example, tmp_path / f"b{k}", format="torchscript")
        files.append([(tmp_path / f"b{k}" / name).read_bytes() for name in ("model.pt", "model.py", "manifest.json")])
    assert files[0] == files[1]


# --------------------------------------------------------------------------- hostile names

# No '.': module names with one cannot be traced at all (torch.jit.trace looks them up by path).
HOSTILE = "x'\n__import__('os'); exec('open(\\'PWNED\\', \\'w\\')')\n#"


class Hostile(nn.Module):
    def __init__(self):
        super().__init__()
        self.add_module(HOSTILE, nn.Conv2d(3, 4, 3))
        self.register_buffer("shift\"\n'''import os", torch.full((4, 1, 1), 0.25))
        self._modules["class"] = nn.Conv2d(4, 4, 1)
        self._modules["0abc\"; import os"] = nn.BatchNorm2d(4)

    def forward(self, x):
        y = self._modules[HOSTILE](x)
        y = self._modules["class"](y) + self._buffers["shift\"\n'''import os"]
        return {"out'\nput": self._modules["0abc\"; import os"](y).relu()}


def test_hostile_module_names_export_safely(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = Hostile().eval()
    result = dexport.export(model, (torch.randn(1, 3, 12, 12),), tmp_path / "h", format="torchscript",
                            check_inputs=[(torch.randn(2, 3, 17, 15),)])
    assert result.verification.ok
    source = (tmp_path / "h" / "model.py").read_text()
    tree = ast.parse(source)
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert not names & {"__import__", "exec", "eval", "os", "open"}
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n) for n in names)
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                and ("PWNED" in n.value or "os" in n.value.split("'"))]
    assert {a.name for a in ast.walk(tree) if isinstance(a, ast.alias)} == {"math", "Dict", "List", "Optional",
                                                                             "Tuple", "torch", "Tensor"}
    other = torch.randn(1, 3, 20, 9)
    with torch.no_grad():
        torch.testing.assert_close(dexport.load(tmp_path / "h")(other), model(other))
    assert not (tmp_path / "PWNED").exists()


def test_identifiers_and_comments_are_sanitised():
    assert identifier("backbone.res2.0") == "backbone_res2_0"
    assert identifier("0conv") == "v_0conv" and identifier("class") == "class_" and identifier("list") == "list_"
    assert identifier("self") == "self_" and identifier("x'\n__import__('os')") == "x_import_os"
    assert identifier("") == "v" and identifier("äö") == "v"
    assert comment_text("a\nb\rc\x00d\u2028e") == "a b c d e"


# --------------------------------------------------------------------------- lowerings and checks

def test_supports_reads_the_table_and_torchs_functional_aten_ops():
    assert supports("aten::add.Tensor") and supports("aten::_convolution") and supports("aten::batch_norm")
    assert supports("prim::If") and supports("prim::Loop") and supports("dexport::roi_align")
    assert not supports("aten::add_.Tensor") and not supports("aten::add.out")
    assert not supports("aten::no_such_op") and not supports("mylib::thing")
    assert "prim::ListConstruct" in LOWERINGS


def test_an_overload_torchscript_resolves_differently_is_an_error(monkeypatch):
    """Without the keyword, ``torch.ops.aten.div(a, b)`` is div.Tensor, not the IR's div.Tensor_mode."""
    from dexport.ir import parse
    graph = parse('graph(%a: f32[2], %b: f32[2]) {\n'
                  '  %m: str = prim::Constant() {value="floor"}\n'
                  '  %y: f32[2] = aten::div.Tensor_mode(%a, %b, %m)\n'
                  '  return (%y)\n}')
    _, model_bytes = build_module(graph, ["a", "b"], ["y"])  # the keyword is passed: fine
    (y,) = TorchScriptRunner(model_bytes, ["y"]).run_flat([torch.tensor([7.0, -7.0]), torch.tensor([2.0, 2.0])])
    assert torch.equal(y, torch.tensor([3.0, -4.0]))

    def positional(ctx, node):
        return f"torch.ops.aten.div({ctx.expr(node.inputs[0])}, {ctx.expr(node.inputs[1])})"
    monkeypatch.setitem(LOWERINGS.entries, "aten::div.Tensor_mode", positional)
    with pytest.raises(DexportError, match="aten::div.Tensor_mode"):
        build_module(graph, ["a", "b"], ["y"])


def test_scripted_control_flow_becomes_if_for_and_while(tmp_path):
    """prim::If / prim::Loop (scripted code inside a trace: Optionals, an early return)
    are emitted as Python control flow and match eager at other sizes and values."""
    model, example, checks = ts_models.control_flow()
    result = dexport.export(model, example, tmp_path / "cf", format="torchscript", check_inputs=checks)
    assert result.verification.ok
    source = (tmp_path / "cf" / "model.py").read_text()
    assert "for loop_i in range(" in source and "while loop_cond" in source and "else:" in source
    loaded = dexport.load(tmp_path / "cf")
    for x in (torch.randn(9, 4), torch.randn(2, 4) + 3.0):
        with torch.no_grad():
            for got, want in zip(loaded(x), model(x)):
                torch.testing.assert_close(got, want)


def test_a_dexport_op_left_in_the_model_is_an_error():
    """Scripting runs in a process with torch alone, where a dexport:: op does not exist."""
    source = ("import torch\n"
              "class Model(torch.nn.Module):\n"
              "    def __init__(self, params):\n"
              "        super().__init__()\n"
              "    def forward(self, boxes: torch.Tensor, scores: torch.Tensor):\n"
              "        return torch.ops.dexport.nms(boxes, scores, 0.5)\n")
    with pytest.raises(DexportError, match="dexport::nms"):
        compile_source(source, {})
