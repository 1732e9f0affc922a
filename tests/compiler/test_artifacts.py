"""Artifact directories are written whole or not at all."""
import json
import os
import signal
import subprocess
import sys

import pytest

from dexport import artifacts
from dexport.artifacts import (artifact_file, check_files, check_output, check_report_path, finish_manifest,
                               manifest_text, read_manifest, staging_directory)
from dexport.ir import DexportError


def _write(target, payload=b"model", **kw):
    with staging_directory(target, **kw) as stage:
        (stage / "model.onnx").write_bytes(payload)
        finish_manifest(stage, {**VALID, "b": 1, "a": [1, 2]})


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


# --------------------------------------------------------------------------- overwrite

def _tree(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_overwrite_refuses_a_folder_that_only_has_a_manifest_json(tmp_path):
    # issue 16: `echo '{}' > w/manifest.json` made --overwrite delete w/src.
    w = tmp_path / "w"
    (w / "src").mkdir(parents=True)
    (w / "manifest.json").write_text("{}")
    (w / "src" / "a.js").write_text("x")
    with pytest.raises(DexportError, match="not a dexport artifact.*refusing to replace it"):
        _write(w, overwrite=True)
    assert _tree(w) == ["manifest.json", "src", "src/a.js"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


@pytest.mark.parametrize("extra", ["notes.txt", "sub/", "sub/deep.bin", "link"])
def test_overwrite_refuses_an_artifact_holding_unlisted_things(tmp_path, extra):
    art = tmp_path / "art"
    _write(art, b"old")
    if extra == "link":
        (art / "link").symlink_to(tmp_path)
    elif extra.endswith("/"):
        (art / extra).mkdir()
    else:
        (art / extra).parent.mkdir(exist_ok=True)
        (art / extra).write_text("mine")
    before = _tree(art)
    with pytest.raises(DexportError, match="does not list.*refusing to replace it"):
        _write(art, b"new", overwrite=True)
    assert _tree(art) == before and (art / "model.onnx").read_bytes() == b"old"


def test_overwrite_replaces_an_artifact_with_listed_subfolders(tmp_path):
    art = tmp_path / "art"
    with staging_directory(art) as stage:
        (stage / "weights").mkdir()
        (stage / "weights" / "w.bin").write_bytes(b"w")
        (stage / "model.onnx").write_bytes(b"old")
        finish_manifest(stage, {**VALID, "b": 1})
    _write(art, b"new", overwrite=True)
    assert _tree(art) == ["manifest.json", "model.onnx"]


def test_overwrite_refuses_a_file_and_a_link(tmp_path):
    (tmp_path / "file").write_text("mine")
    with pytest.raises(DexportError, match="a file, not a folder"):
        _write(tmp_path / "file", overwrite=True)
    _write(tmp_path / "real")
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    with pytest.raises(DexportError, match="a link, not a folder"):
        _write(tmp_path / "alias", overwrite=True)
    assert (tmp_path / "file").read_text() == "mine" and (tmp_path / "alias").is_symlink()


def test_bad_output_paths_are_refused_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DexportError, match="is a file, not a folder"):
        check_output(tmp_path / "file" / "art")
    with pytest.raises(DexportError, match="not a directory name"):
        check_output("/")
    with pytest.raises(DexportError, match="longer than"):
        check_output(tmp_path / ("x" * 250))
    with pytest.raises(DexportError, match="inside --output"):
        check_output(tmp_path / "art", dump_dir=tmp_path / "art" / "ir")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if not os.access(locked, os.W_OK):  # root can write anywhere
        with pytest.raises(DexportError, match="not writable"):
            check_output(locked / "art")
    assert check_output(tmp_path / "new" / "deeper" / "art") == tmp_path / "new" / "deeper" / "art"
    assert not (tmp_path / "new").exists()  # checking creates nothing


# --------------------------------------------------------------------------- crashes

def test_failed_second_rename_keeps_the_old_artifact(tmp_path, monkeypatch):
    _write(tmp_path / "art", b"old")
    monkeypatch.setattr(artifacts, "_renameat2", lambda *a: False)  # the two-rename fallback
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError("disk gone")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk gone"):
        _write(tmp_path / "art", b"new", overwrite=True)
    assert (tmp_path / "art" / "model.onnx").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_exchange_and_fallback_both_replace(tmp_path, monkeypatch):
    _write(tmp_path / "art", b"one")
    _write(tmp_path / "art", b"two", overwrite=True)  # renameat2 where the filesystem has it
    monkeypatch.setattr(artifacts, "_renameat2", lambda *a: False)
    _write(tmp_path / "art", b"three", overwrite=True)
    _write(tmp_path / "new", b"four")
    assert (tmp_path / "art" / "model.onnx").read_bytes() == b"three"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "new"]


CRASH = """
import os, signal, sys
from dexport import artifacts
from dexport.artifacts import finish_manifest, staging_directory
target, where = sys.argv[1], sys.argv[2]
artifacts._renameat2 = lambda *a: False
real = os.replace
def replace(src, dst):
    if str(dst) == target:  # the second rename: the old artifact is already aside
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)
os.replace = replace
with staging_directory(target, overwrite=True) as stage:
    (stage / "model.onnx").write_bytes(b"new" * 1000)
    if where == "mid-write":
        os.kill(os.getpid(), signal.SIGKILL)
    finish_manifest(stage, {"format": "onnx", "model_file": "model.onnx", "io": "structured",
                            "input_schema": '{"t":"tensor"}', "output_schema": '{"t":"tensor"}',
                            "inputs": [{"name": "x", "shape": [2]}], "outputs": [{"name": "y", "shape": [2]}]})
"""


def _crash(tmp_path, where):
    result = subprocess.run([sys.executable, "-c", CRASH, str(tmp_path / "art"), where], capture_output=True)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()


def test_kill_9_mid_write_leftovers_are_removed_by_the_next_export(tmp_path):
    _write(tmp_path / "art", b"old")
    _crash(tmp_path, "mid-write")
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "art"]
    assert len(leftovers) == 1 and leftovers[0].endswith(".partial")
    assert (tmp_path / "art" / "model.onnx").read_bytes() == b"old"
    _write(tmp_path / "art", b"newer", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


@pytest.mark.parametrize("next_step", ["load", "export"])
def test_kill_9_between_the_renames_loses_nothing(tmp_path, next_step):
    _write(tmp_path / "art", b"old")
    _crash(tmp_path, "between-renames")
    assert not (tmp_path / "art").exists()
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".old", ".partial"]
    if next_step == "load":
        assert read_manifest(tmp_path / "art")["format"] == "onnx"  # put back
        assert (tmp_path / "art" / "model.onnx").read_bytes() == b"old"
    else:
        with pytest.raises(DexportError, match="already exists"):  # put back, then kept
            _write(tmp_path / "art", b"new")
        assert (tmp_path / "art" / "model.onnx").read_bytes() == b"old"
        _write(tmp_path / "art", b"new", overwrite=True)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_live_exports_staging_folders_are_kept(tmp_path):
    live = [tmp_path / f".art.{artifacts._owner().split('.')[0]}.{pid}.abcdefgh.partial"
            for pid in (os.getpid(), os.getppid())]
    foreign = tmp_path / ".art.some-other-host.1.abcdefgh.partial"
    for folder in (*live, foreign):
        folder.mkdir()
    _write(tmp_path / "art")
    assert all(folder.is_dir() for folder in (*live, foreign))


# --------------------------------------------------------------------------- integrity

VALID = {"format": "onnx", "model_file": "model.onnx", "io": "structured",
         "input_schema": '{"t":"tensor"}', "output_schema": '{"t":"tensor"}',
         "inputs": [{"name": "x", "shape": [2]}], "outputs": [{"name": "y", "shape": [2], "dtype": "float32"}]}


def _with_manifest(tmp_path, **changes):
    art = tmp_path / "art"
    if not art.exists():
        _write(art)
    manifest = {**json.loads((art / "manifest.json").read_text()), **changes}
    (art / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if v is not ...}))
    return art


@pytest.mark.parametrize("changes, message", [
    ({"model_file": "../outside.onnx"}, "points outside the artifact"),
    ({"model_file": "/etc/passwd"}, "points outside the artifact"),
    ({"model_file": "other.onnx"}, "not listed in 'files'"),
    ({"files": {}}, "lists no file"),
    ({"files": {"../x": {"bytes": 1, "sha256": "0" * 64}}}, "points outside"),
    ({"files": {"model.onnx": {"bytes": 5}}}, "must be"),
    ({"format": ...}, "'format' is missing"),
    ({"io": "video"}, "expected one of"),
    ({"model_file": 3}, "must be a json string, got number"),
    ({"input_schema": '{"t": "nope"}'}, "not a schema"),
    ({"output_schema": "[1"}, "not a schema"),
    ({"inputs": ...}, "'inputs' must be a json array"),
    ({"outputs": [{"name": "y", "shape": [None]}]}, "'outputs' entry"),
])
def test_manifests_cannot_point_outside_or_skip_digests(tmp_path, changes, message):
    (tmp_path / "outside.onnx").write_bytes(b"evil")
    art = _with_manifest(tmp_path, **changes)
    with pytest.raises(DexportError, match=message):
        check_files(art, read_manifest(art))


def test_a_link_escaping_the_artifact_is_refused(tmp_path):
    art = tmp_path / "art"
    _write(art)
    (tmp_path / "outside.onnx").write_bytes(b"model")  # same bytes, same digest
    (art / "model.onnx").unlink()
    (art / "model.onnx").symlink_to(tmp_path / "outside.onnx")
    with pytest.raises(DexportError, match="links outside the artifact"):
        check_files(art, read_manifest(art))
    with pytest.raises(DexportError, match="links outside the artifact"):
        artifact_file(art, read_manifest(art))


@pytest.mark.parametrize("raw, message", [
    (b"[]", "expected a json object, got array"),
    (b"null", "expected a json object, got null"),
    (b"\xff\xfe{}", "not valid json"),
    (b'{"format": NaN}', "not valid json"),
    (b"[" * 100000, "not valid json"),
    (b"", "not valid json"),
])
def test_malformed_manifests_are_dexport_errors(tmp_path, raw, message):
    art = tmp_path / "art"
    _write(art)
    (art / "manifest.json").write_bytes(raw)
    with pytest.raises(DexportError, match=message):
        read_manifest(art)


# --------------------------------------------------------------------------- reports

def test_report_paths_stay_out_of_artifacts_and_need_their_folder(tmp_path):
    _write(tmp_path / "art")
    for inside in ("art/manifest.json", "art/model.onnx", "art/new.json"):
        with pytest.raises(DexportError, match="inside the artifact"):
            check_report_path(tmp_path / inside, "--json", reading=[tmp_path / "art"])
    with pytest.raises(DexportError, match="inside the artifact"):  # any artifact, read or not
        check_report_path(tmp_path / "art" / "x.md", "--md")
    (tmp_path / "link.json").symlink_to(tmp_path / "art" / "manifest.json")
    with pytest.raises(DexportError, match="inside the artifact"):
        check_report_path(tmp_path / "link.json", "--json")
    with pytest.raises(DexportError, match="does not exist"):
        check_report_path(tmp_path / "nonexistent" / "x.json", "--json")
    assert not (tmp_path / "nonexistent").exists()
    with pytest.raises(DexportError, match="is a folder"):
        check_report_path(tmp_path, "--json")
    assert check_report_path(tmp_path / "r.json", "--json") == tmp_path / "r.json"
