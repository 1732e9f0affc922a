"""The backend interface is not ONNX-shaped: a backend defined and registered in this
file alone (the IR text plus a safetensors file of parameters, run by the IR
interpreter) exports, loads, verifies, checks and benches a zoo detector through the
same CLI and API paths as ONNX."""
import json

import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

import dexport
from dexport.backends import Backend, Emission, TensorIO, backend_names, get_backend, register_backend
from dexport.backends.base import unregister_backend
from dexport.cli import main, sample_images
from dexport.ir import parse
from dexport.ir.errors import DexportError
from dexport.ir.interpreter import run
from dexport.ir.ops import has_op
from dexport.ir.types import TensorType
from dexport.models import zoo

NAME = "ir-interp"


class InterpreterRunner:
    def __init__(self, graph):
        self.graph = graph

    def run_flat(self, flat_inputs):
        with torch.no_grad():
            return [torch.as_tensor(x) for x in run(self.graph, list(flat_inputs))]


class InterpreterBackend(Backend):
    """``graph.ir`` (the printed IR) + ``params.safetensors``, run by dexport's interpreter."""
    name = NAME
    label = "IR"
    runtime = "dexport interpreter"
    decompose_target = NAME  # the interpreter runs every op with a kernel: decompose is a no-op

    def supports(self, op):
        return has_op(op)

    def emit(self, graph, *, input_names=None, output_names=None, options):
        params = {k: v.detach().contiguous().clone() for k, v in sorted(graph.params.items())}
        files = {"graph.ir": str(graph).encode(), "params.safetensors": save_safetensors(params)}

        def described(values, names, kind):
            names = names or [f"{kind}{k}" for k in range(len(values))]
            return [TensorIO(n, list(v.type.shape) if isinstance(v.type, TensorType) else [])
                    for n, v in zip(names, values)]
        return Emission(files, "graph.ir", described(graph.inputs, input_names, "input"),
                        described(graph.outputs, output_names, "output"))

    def load(self, read, manifest, *, threads=None):
        params = load_safetensors(read("params.safetensors"))
        return InterpreterRunner(parse(read(manifest["model_file"]).decode(), params=params))

    def describe(self, read, manifest):
        return {"nodes": len(self.load(read, manifest).graph)}


@pytest.fixture(scope="module", autouse=True)
def interpreter_backend():
    register_backend(InterpreterBackend())
    yield get_backend(NAME)
    unregister_backend(NAME)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    out = tmp_path_factory.mktemp("interp") / "mask_rcnn"
    assert main(["export", "--model", "zoo:mask_rcnn_tiny", "--format", NAME, "--output", str(out),
                 "--size", "64"]) == 0
    return out


def test_the_registry_lists_it_and_the_cli_offers_it(capsys):
    assert {"onnx", NAME} <= set(backend_names())
    with pytest.raises(SystemExit) as info:
        main(["export", "--model", "zoo:mask_rcnn_tiny", "--check", "--format", "no-such-format"])
    assert info.value.code == 2 and f"'{NAME}'" in capsys.readouterr().err  # the choices come from the registry
    with pytest.raises(DexportError, match=f"use one of: .*{NAME}"):
        get_backend("no-such-format")


def test_cli_export_writes_its_files_and_manifest(artifact):
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert sorted(p.name for p in artifact.iterdir()) == ["graph.ir", "manifest.json", "params.safetensors"]
    assert manifest["format"] == NAME and manifest["model_file"] == "graph.ir"
    assert manifest["pipeline"].endswith(f"decompose{{target={NAME}}},dce") and "opset" not in manifest
    assert [i["name"] for i in manifest["inputs"]] == ["images", "image_sizes", "output_sizes"]
    assert manifest["inputs"][0]["shape"][0] == "N" and manifest["verification"]["ok"]
    assert set(manifest["versions"]) == {"dexport", "torch"}


def test_api_load_returns_the_models_own_structures(artifact):
    model = zoo.get("mask_rcnn_tiny")
    images = sample_images(2, 80, seed=7)
    loaded = dexport.load(artifact)
    assert isinstance(loaded.runner, InterpreterRunner)
    with torch.no_grad():
        expected, actual = model(images), loaded(images)
    assert len(actual) == 2
    for e, a in zip(expected, actual):
        torch.testing.assert_close(a["instances"].pred_boxes.tensor, e["instances"].pred_boxes.tensor,
                                   rtol=1e-4, atol=1e-3)


def test_api_export_in_this_format_and_verify(tmp_path):
    from dexport.verification import verify
    model = zoo.get("faster_rcnn_tiny", weights=None)
    result = dexport.export(model, (sample_images(1, 64, seed=0),), tmp_path / "a", format=NAME)
    assert (tmp_path / "a" / "params.safetensors").exists() and result.manifest["format"] == NAME
    assert verify(model, dexport.load(tmp_path / "a"), [(sample_images(2, 96, seed=3),)]).ok


def test_an_onnx_option_is_refused_for_this_format(tmp_path, capsys):
    assert main(["export", "--model", "zoo:mask_rcnn_tiny", "--format", NAME, "--opset", "18",
                 "--output", str(tmp_path / "x")]) == 2
    assert "--opset is an option of format onnx" in capsys.readouterr().err
    with pytest.raises(DexportError, match=f"format '{NAME}' has no option 'opset'"):
        dexport.export(zoo.get("mask_rcnn_tiny"), (sample_images(1, 64, seed=0),), tmp_path / "y",
                       format=NAME, opset=18)


def test_cli_verify(artifact, capsys):
    assert main(["verify", str(artifact), "--images", "2", "--sizes", "72", "--batch", "2"]) == 0
    assert "match" in capsys.readouterr().out


def test_cli_verify_bisect_says_this_format_cannot_be_bisected(artifact, capsys):
    assert main(["verify", str(artifact), "--images", "1", "--sizes", "72", "--batch", "1", "--bisect"]) == 2
    err = capsys.readouterr().err
    assert f"format '{NAME}' cannot expose intermediate values" in err and "onnx" in err


def test_cli_check_reads_this_backends_table(capsys):
    assert main(["export", "--model", "zoo:mask_rcnn_tiny", "--check", "--format", NAME, "--size", "64"]) == 0
    assert "has an IR lowering" in capsys.readouterr().out


def test_cli_bench_times_the_artifact_with_this_runtime(artifact, tmp_path):
    out = tmp_path / "r.json"
    assert main(["bench", "--model", "zoo:mask_rcnn_tiny", "--artifact", str(artifact), "--size", "64",
                 "--runs", "1", "--warmup", "0", "--threads", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    names = [e["name"] for e in result["entries"]]
    assert names[4:] == ["dexport interpreter mask_rcnn", "floor: backbone+FPN (dexport interpreter)"]
    timed = result["entries"][4]
    assert timed["format"] == NAME and timed["parity_ok"] and timed["nodes"] > result["entries"][5]["nodes"] > 0
