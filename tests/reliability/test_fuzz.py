"""Random manifests to `dexport.load` and random input structures to the loaded model:
the only exception allowed is a DexportError. A few examples run in the default suite;
`-m slow` runs 2,000 of each."""
import json
import shutil

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import dexport
from dexport.artifacts import MANIFEST
from dexport.ir import DexportError

FEW = settings(max_examples=30, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
MANY = settings(max_examples=2000, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# --------------------------------------------------------------------------- manifests

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
paths = st.sampled_from(["model.onnx", "../model.onnx", "/etc/passwd", "a/../model.onnx", "./model.onnx",
                         "model.onnx/", "", "sub/model.onnx", "manifest.json", "c:model.onnx", "..", "\\model.onnx",
                         "model.onnx\0"]) | st.text(max_size=12)
schema_texts = st.sampled_from(['{"t":"tensor"}', '{"t":"list","items":[{"t":"tensor"}]}', '{"t":"dict"}',
                                '{"t":"record","kind":"nope","fields":[],"values":[]}', "[", "null", "1e999",
                                '{"t":"tuple","items":' + "[" * 3000 + "]" * 3000 + "}"]) | json_values.map(json.dumps)


@st.composite
def manifests(draw, real: dict):
    """The real manifest with a few keys dropped, replaced or mangled, or anything else."""
    kind = draw(st.sampled_from(["mutate", "mutate", "mutate", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    manifest = json.loads(json.dumps(real))
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from(sorted(real) + ["files.entry", "files.digest", "files.bytes", "extra"]))
        action = draw(st.sampled_from(["drop", "json", "path", "schema"]))
        if key.startswith("files."):
            entry = manifest.get("files")
            if not isinstance(entry, dict) or not entry:
                continue
            name = draw(st.sampled_from(sorted(entry)))
            if key == "files.entry":
                entry[draw(paths)] = entry.pop(name)
            elif isinstance(entry[name], dict):
                field = "sha256" if key == "files.digest" else "bytes"
                entry[name][field] = draw(json_values | st.just("0" * 64) | st.just(-1))
        elif action == "drop":
            manifest.pop(key, None)
        elif action == "path":
            manifest[key] = draw(paths)
        elif action == "schema":
            manifest[key] = draw(schema_texts)
        else:
            manifest[key] = draw(json_values)
    return json.dumps(manifest).encode()


@pytest.fixture(scope="module")
def scratch(mask_rcnn_artifact, tmp_path_factory):
    """A copy of the shared artifact whose manifest each example replaces."""
    art = tmp_path_factory.mktemp("fuzz") / "art"
    shutil.copytree(mask_rcnn_artifact, art)
    return art, json.loads((art / MANIFEST).read_text())


def _load_only_dexport_errors(scratch, raw: bytes):
    art, _ = scratch
    (art / MANIFEST).write_bytes(raw)
    try:
        dexport.load(art)
    except DexportError as e:
        event(f"DexportError: {e.what.split(':')[-1][:40]}")
        return
    event("loaded")


def _manifest_test(config):
    @config
    @given(data=st.data())
    def test(scratch, data):
        _load_only_dexport_errors(scratch, data.draw(manifests(scratch[1])))
    return test


test_random_manifests_load_or_raise_dexport_errors = _manifest_test(FEW)
test_random_manifests_load_or_raise_dexport_errors_many = pytest.mark.slow(_manifest_test(MANY))


def test_the_real_manifest_still_loads(scratch):
    art, real = scratch
    (art / MANIFEST).write_text(json.dumps(real))
    assert dexport.load(art).manifest["io"] == "detection"


# --------------------------------------------------------------------------- inputs

DTYPES = [torch.float32, torch.float64, torch.float16, torch.uint8, torch.int32, torch.int64, torch.bool]


@st.composite
def tensors(draw, image: str = ""):
    """Any small tensor; ``image="valid"``: one the loaded model must run, ``"near"``: a
    (C, H, W) tensor that may have a wrong channel count, an empty side or a bool dtype."""
    if image:
        channels = [3, 3, 1] if image == "valid" else [3, 1, 4, 0, 2]
        low = 1 if image == "valid" else 0
        shape = [draw(st.sampled_from(channels)), draw(st.integers(low, 48)), draw(st.integers(low, 48))]
    else:
        shape = draw(st.lists(st.integers(0, 5), max_size=4))
    dtype = draw(st.sampled_from(DTYPES[:-1] if image == "valid" else DTYPES))
    fill = draw(st.sampled_from(["rand", "rand", "zeros", "nan", "inf", "huge"]))
    x = torch.rand(shape) * 255
    if fill == "zeros":
        x = torch.zeros(shape)
    elif fill in ("nan", "inf", "huge") and x.numel():
        x.view(-1)[0] = {"nan": float("nan"), "inf": float("inf"), "huge": 1e30}[fill]
    if dtype == torch.bool:
        return x > 128
    return x.to(dtype) if dtype.is_floating_point else x.nan_to_num(0, 0, 0).clamp(0, 255).to(dtype)


good_sizes = st.integers(1, 160) | st.integers(1, 160).map(torch.tensor) | st.integers(1, 160).map(np.int64)
sizes = (good_sizes | st.integers(-3, 0) | st.floats(-1, 160) | st.booleans() | st.text(max_size=3) | st.none()
         | st.just(torch.tensor([5, 6])) | st.just(torch.tensor(7.0)))
leaves = (st.none() | st.integers() | st.floats() | st.text(max_size=5) | tensors()
          | tensors().map(lambda t: t.numpy()))


@st.composite
def image_dicts(draw):
    """Mostly inputs the model runs, each part wrong now and then."""
    item = {}
    if draw(st.integers(0, 19)):
        kind = draw(st.sampled_from(["valid"] * 6 + ["near", "other"]))
        item["image"] = draw(tensors(image=kind) if kind != "other" else leaves)
    for key in ("height", "width"):
        if draw(st.booleans()):
            item[key] = draw(good_sizes if draw(st.integers(0, 3)) else sizes)
    if draw(st.integers(0, 4)) == 0:
        item[draw(st.text(max_size=6))] = draw(leaves)
    return item


batches = st.lists(image_dicts(), min_size=1, max_size=3)
structures = st.one_of(
    batches, batches, batches, batches.map(tuple), st.just([]), image_dicts(),
    st.recursive(leaves, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                 max_leaves=6))


@pytest.fixture(scope="module")
def loaded(mask_rcnn_artifact):
    return dexport.load(mask_rcnn_artifact)


def _call_only_dexport_errors(loaded, inputs):
    try:
        outputs = loaded(inputs)
    except DexportError:
        event("DexportError")
        return
    event("ran")
    assert isinstance(outputs, list) and len(outputs) == len(inputs)
    assert all("instances" in o for o in outputs)


def _inputs_test(config):
    @config
    @given(inputs=structures)
    def test(loaded, inputs):
        _call_only_dexport_errors(loaded, inputs)
    return test


test_random_inputs_run_or_raise_dexport_errors = _inputs_test(FEW)
test_random_inputs_run_or_raise_dexport_errors_many = pytest.mark.slow(_inputs_test(MANY))
