"""Bad command lines, one row each: exit code 2, `error: ...` with what to do, nothing
written, and (where the arguments alone show it) refused before any work is done."""
import json
import shutil

import pytest

from dexport.cli import EXIT_INTERNAL, EXIT_MISMATCH, EXIT_USER_ERROR, main

F = "tests.reliability.factories"
TINY = ["--model", "zoo:mask_rcnn_tiny"]


@pytest.fixture
def places(tmp_path, mask_rcnn_artifact):
    """Paths a row may name: a copy of the shared artifact (rows try to write into it),
    a plain file, a folder that is not an artifact."""
    art = tmp_path / "art"
    shutil.copytree(mask_rcnn_artifact, art)
    (tmp_path / "file").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "manifest.json").write_text("{}")
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    return {"art": str(art), "tmp": str(tmp_path)}


# (name, argv with {art} / {tmp} / {structured}, stderr pattern, refused before any work)
ROWS = [
    ("export --size 0", ["export", *TINY, "--output", "{tmp}/o", "--size", "0"], r"--size 0: expected a positive", 1),
    ("export --size -3", ["export", *TINY, "--output", "{tmp}/o", "--size", "-3"], r"--size -3", 1),
    ("export --batch 0", ["export", *TINY, "--output", "{tmp}/o", "--batch", "0"], r"--batch '0'", 1),
    ("export --batch two", ["export", *TINY, "--output", "{tmp}/o", "--batch", "two"], r"'dynamic' or a positive", 1),
    ("export --opset 16", ["export", *TINY, "--output", "{tmp}/o", "--opset", "16"], r"opset 16 is not supported(.|\n)*17..21", 1),
    ("export --opset 22", ["export", *TINY, "--output", "{tmp}/o", "--opset", "22"], r"opset 22 is not supported", 1),
    ("export no --output", ["export", *TINY], r"--output is required", 1),
    ("export --output under a file", ["export", *TINY, "--output", "{tmp}/file/o"], r"is a file, not a folder", 1),
    ("export --output exists", ["export", *TINY, "--output", "{art}"], r"already exists", 1),
    ("export --overwrite a non-artifact", ["export", *TINY, "--output", "{tmp}/mine", "--overwrite"],
     r"not a dexport artifact(.|\n)*refusing to replace it", 1),
    ("export --dump-ir inside --output", ["export", *TINY, "--output", "{tmp}/o", "--dump-ir", "{tmp}/o/ir"],
     r"inside --output", 1),
    ("export --dump-ir inside an artifact", ["export", *TINY, "--output", "{tmp}/o", "--dump-ir", "{art}/ir"],
     r"inside the artifact", 1),
    ("export --mask-iou 1.5", ["export", *TINY, "--output", "{tmp}/o", "--mask-iou", "1.5"], r"between 0 and 1", 1),
    ("export --box-tol -1", ["export", *TINY, "--output", "{tmp}/o", "--box-tol", "-1"], r"tolerance is a number >= 0", 1),
    ("export --score-tol nan", ["export", *TINY, "--output", "{tmp}/o", "--score-tol", "nan"], r"--score-tol nan", 1),
    ("export --atol nan", ["export", *TINY, "--output", "{tmp}/o", "--atol", "nan"], r"--atol nan", 1),
    ("export --eval-size 0", ["export", *TINY, "--output", "{tmp}/o", "--run-eval", "--eval-size", "0"], r"--eval-size 0", 1),
    ("export --eval-images 0", ["export", *TINY, "--output", "{tmp}/o", "--eval-images", "0"], r"--eval-images 0", 1),
    ("export --ap-tol -1", ["export", *TINY, "--output", "{tmp}/o", "--ap-tol", "-1"], r"--ap-tol -1", 1),
    ("export --coco-json alone", ["export", *TINY, "--output", "{tmp}/o", "--coco-json", "{tmp}/c.json"],
     r"go together", 1),
    ("export unknown zoo model", ["export", "--model", "zoo:nope", "--output", "{tmp}/o"], r"unknown zoo model", 0),
    ("factory raises", ["export", "--model", f"{F}:raises", "--output", "{tmp}/o"],
     r"factory tests.reliability.factories:raises raised ValueError: weights file not found(.|\n)*factories.py", 0),
    ("factory not callable", ["export", "--model", f"{F}:not_callable", "--output", "{tmp}/o"], r"not a callable", 0),
    ("factory returns int", ["export", "--model", f"{F}:returns_int", "--output", "{tmp}/o"],
     r"returned a int, not a torch.nn.Module or a tuple(.|\n)*\(model, example_inputs\)", 0),
    ("factory 1-tuple", ["export", "--model", f"{F}:returns_one_tuple", "--output", "{tmp}/o"], r"a tuple of 1 items", 0),
    ("factory 4-tuple", ["export", "--model", f"{F}:returns_four_tuple", "--output", "{tmp}/o"], r"a tuple of 4 items", 0),
    ("factory non-module", ["export", "--model", f"{F}:returns_non_module_first", "--output", "{tmp}/o"],
     r"first item is a str", 0),
    ("factory bare example", ["export", "--model", f"{F}:returns_bare_example", "--output", "{tmp}/o"],
     r"example_inputs of type Tensor(.|\n)*\(x,\)", 0),
    ("factory bad checks", ["export", "--model", f"{F}:returns_bad_checks", "--output", "{tmp}/o"],
     r"check_inputs that are not a list of tuples", 0),
    ("verify --json over the manifest", ["verify", "{art}", "--json", "{art}/manifest.json"], r"inside the artifact", 1),
    ("verify --json in a missing folder", ["verify", "{art}", "--json", "{tmp}/nonexistent/x.json"], r"does not exist", 1),
    ("verify --box-tol -1", ["verify", "{art}", "--box-tol", "-1"], r"--box-tol -1", 1),
    ("verify --score-tol nan", ["verify", "{art}", "--score-tol", "nan"], r"--score-tol nan", 1),
    ("verify --keypoint-tol -2", ["verify", "{art}", "--keypoint-tol", "-2"], r"--keypoint-tol -2", 1),
    ("verify --sem-seg-agreement nan", ["verify", "{art}", "--sem-seg-agreement", "nan"], r"between 0 and 1", 1),
    ("verify --eval-size 0", ["verify", "{art}", "--run-eval", "--eval-size", "0"], r"--eval-size 0", 1),
    ("verify --capture-size 0", ["verify", "{art}", "--bisect", "--capture-size", "0"], r"--capture-size 0", 1),
    ("verify --images 0", ["verify", "{art}", "--images", "0"], r"--images 0", 1),
    ("verify --sizes 0", ["verify", "{art}", "--sizes", "0"], r"--sizes '0'", 1),
    ("verify --batch 1,x", ["verify", "{art}", "--batch", "1,x"], r"--batch '1,x'", 1),
    ("verify a missing artifact", ["verify", "{tmp}/nothing"], r"manifest.json is missing", 1),
    ("verify a non-artifact", ["verify", "{tmp}/mine"], r"the key 'format' is missing", 1),
    ("bench --threads 0", ["bench", *TINY, "--threads", "0"], r"--threads 0", 1),
    ("bench --batch 0", ["bench", *TINY, "--batch", "0"], r"--batch 0", 1),
    ("bench --size 0", ["bench", *TINY, "--size", "0"], r"--size 0", 1),
    ("bench --warmup -1", ["bench", *TINY, "--warmup", "-1"], r"--warmup -1", 1),
    ("bench --runs 0", ["bench", *TINY, "--runs", "0"], r"--runs 0", 1),
    ("bench --md over the model", ["bench", *TINY, "--artifact", "{art}", "--md", "{art}/model.onnx"],
     r"inside the artifact", 1),
    ("bench --json inside an artifact", ["bench", *TINY, "--json", "{art}/r.json"], r"inside the artifact", 1),
    ("bench --json in a missing folder", ["bench", *TINY, "--json", "{tmp}/nonexistent/x.json"], r"does not exist", 1),
    ("bench a structured artifact", ["bench", *TINY, "--artifact", "{structured}"], r"not a detector artifact", 1),
    ("bench a structured model", ["bench", "--model", f"{F}:structured"], r"has no forward_batched", 0),
    ("dump --size 0", ["dump", *TINY, "--output", "{tmp}/d", "--size", "0"], r"--size 0", 1),
    ("dump into an artifact", ["dump", *TINY, "--output", "{art}/dumps"], r"inside the artifact", 1),
]


def _tree(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_size if p.is_file() else None,
                   p.read_bytes() if p.is_file() and p.stat().st_size < 100 else None)
                  for p in folder.rglob("*"))


@pytest.mark.parametrize("name, argv, pattern, before_work", ROWS, ids=[r[0] for r in ROWS])
def test_bad_command_line_table(places, structured_artifact, tmp_path, capsys, name, argv, pattern, before_work):
    import re
    argv = [a.format(**places, structured=structured_artifact) for a in argv]
    before = _tree(tmp_path)
    digest = json.loads((tmp_path / "art" / "manifest.json").read_text())["files"]["model.onnx"]["sha256"]
    assert main(argv) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "what to do:" in err, err
    assert re.search(pattern, err), err
    assert "Traceback" not in err
    if before_work:
        assert "[1/" not in err, err  # refused before loading the model
    assert _tree(tmp_path) == before  # nothing written, nothing deleted
    assert json.loads((tmp_path / "art" / "manifest.json").read_text())["files"]["model.onnx"]["sha256"] == digest


def test_an_unexpected_exception_is_an_internal_error_not_a_mismatch(monkeypatch, capsys):
    import dexport.cli

    def broken(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(dexport.cli, "cmd_zoo", broken)
    assert main(["zoo"]) == EXIT_INTERNAL == 3
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError: division by zero" in err and "bug in dexport" in err
    assert "test_cli_table.py" in err and "Traceback" not in err
    monkeypatch.setenv("DEXPORT_TRACEBACK", "1")
    assert main(["zoo"]) == EXIT_INTERNAL
    assert "Traceback" in capsys.readouterr().err


def test_bench_that_shows_a_mismatch_exits_1(mask_rcnn_artifact, capsys):
    # faster_rcnn_tiny (untrained) timed against mask_rcnn_tiny's artifact: different detections
    assert main(["bench", "--model", "zoo:faster_rcnn_tiny", "--artifact", str(mask_rcnn_artifact), "--size", "64",
                 "--runs", "1", "--warmup", "0", "--threads", "1"]) == EXIT_MISMATCH
    captured = capsys.readouterr()
    assert "MISMATCH" in captured.out and "differ from eager (MISMATCH)" in captured.err


def test_verify_writes_its_report_outside_and_leaves_the_artifact_alone(mask_rcnn_artifact, tmp_path):
    before = _tree(mask_rcnn_artifact)
    assert main(["verify", str(mask_rcnn_artifact), "--images", "1", "--sizes", "64", "--json",
                 str(tmp_path / "report.json")]) == 0
    assert json.loads((tmp_path / "report.json").read_text())["ok"] is True
    assert _tree(mask_rcnn_artifact) == before
