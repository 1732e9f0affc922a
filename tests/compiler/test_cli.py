"""The command line: `dexport zoo`, `dexport dump`, and clear errors with exit code 2."""
from dexport.cli import main
from dexport.ir import parse


def test_zoo_lists_every_model(capsys):
    assert main(["zoo"]) == 0
    names = capsys.readouterr().out.split()
    assert "mask_rcnn_tiny" in names and "panoptic_fpn_R50_FPN" in names and names == sorted(names)


def test_dump_captures_checks_and_writes(tmp_path, capsys):
    out = tmp_path / "dump"
    assert main(["dump", "--model", "zoo:faster_rcnn_tiny", "--output", str(out), "--size", "64"]) == 0
    captured = capsys.readouterr()
    assert "[5/5] writing dumps" in captured.err
    assert "held-out 96x96 image: 1/1 images match eager" in captured.out
    graph = parse((out / "graph.ir").read_text())
    assert any(n.op == "dexport::batched_nms" for n in graph.nodes())
    names = sorted(p.name for p in (out / "passes").iterdir())
    assert names[0] == "000_functionalize.after.ir" and names[-1] == "006_dce.before.ir"


def test_unknown_model_is_a_clear_error(tmp_path, capsys):
    assert main(["dump", "--model", "zoo:nope", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown zoo model 'nope'" in err and "dexport zoo" in err
    assert main(["dump", "--model", "no_colon_here", "--output", str(tmp_path)]) == 2
    assert "neither zoo:NAME nor package.module:factory" in capsys.readouterr().err


def test_export_overwrites_its_own_artifact_and_dumps_beside_it(tmp_path, capsys):
    out, dumps = tmp_path / "art", tmp_path / "ir"
    argv = ["export", "--model", "tests.reliability.factories:structured", "--output", str(out)]
    assert main(argv) == 0
    assert main(argv) == 2 and "already exists" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--dump-ir", str(dumps)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx"]
    assert (dumps / "graph.ir").is_file() and any((dumps / "passes").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "ir"]  # no staging or .old leftovers
