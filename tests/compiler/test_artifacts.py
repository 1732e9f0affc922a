"""Artifact directories are written whole or not at all."""
import json

import pytest

from dexport.artifacts import (check_files, finish_manifest, manifest_text, read_manifest,
                               staging_directory)
from dexport.ir import DexportError


def _write(target, payload=b"model", **kw):
    with staging_directory(target, **kw) as stage:
        (stage / "model.onnx").write_bytes(payload)
        finish_manifest(stage, {"format": "onnx", "b": 1, "a": [1, 2]})


def test_complete_artifact_has_manifest_with_digests(tmp_path):
    _write(tmp_path / "art")
    manifest = read_manifest(tmp_path / "art")
    assert manifest["files"]["model.onnx"]["bytes"] == 5
    check_files(tmp_path / "art", manifest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no staging leftovers


def test_failure_mid_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with staging_directory(tmp_path / "art") as stage:
            (stage / "model.onnx").write_bytes(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_the_previous_artifact(tmp_path):
    _write(tmp_path / "art", b"old")
    with pytest.raises(KeyboardInterrupt):
        with staging_directory(tmp_path / "art", overwrite=True) as stage:
            (stage / "model.onnx").write_bytes(b"new")
            raise KeyboardInterrupt
    assert (tmp_path / "art" / "model.onnx").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_overwrite_rules(tmp_path):
    _write(tmp_path / "art")
    with pytest.raises(DexportError, match="already exists"):
        _write(tmp_path / "art")
    _write(tmp_path / "art", b"newer", overwrite=True)
    assert (tmp_path / "art" / "model.onnx").read_bytes() == b"newer"
    (tmp_path / "mine").mkdir()
    with pytest.raises(DexportError, match="not a dexport artifact"):
        _write(tmp_path / "mine", overwrite=True)


def test_manifest_is_canonical_and_tampering_is_caught(tmp_path):
    assert manifest_text({"b": 1, "a": 2}) == manifest_text({"a": 2, "b": 1})
    _write(tmp_path / "one")
    _write(tmp_path / "two")
    assert (tmp_path / "one" / "manifest.json").read_bytes() == (tmp_path / "two" / "manifest.json").read_bytes()
    (tmp_path / "one" / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(DexportError, match="does not match its manifest"):
        check_files(tmp_path / "one", read_manifest(tmp_path / "one"))
    with pytest.raises(DexportError, match="manifest.json is missing"):
        read_manifest(tmp_path)
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["format"] == "onnx"
