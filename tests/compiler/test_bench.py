"""`dexport bench` and benchmarks/export_compare.py write their results with the
expected structure (times are never asserted: the machine is shared)."""
import json

import pytest

from dexport.bench import BASELINE, latency
from dexport.cli import main

def test_latency_reports_ordered_quantiles():
    calls = []
    stats = latency(lambda: calls.append(1), runs=5, warmup=2)
    assert len(calls) == 7
    assert stats["p10_ms"] <= stats["median_ms"] <= stats["p90_ms"] and stats["runs"] == 5


def test_bench_writes_json_and_markdown(tmp_path, capsys):
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    assert main(["bench", "--model", "zoo:mask_rcnn_tiny", "--size", "64", "--runs", "2", "--warmup", "1",
                 "--threads", "1", "--json", str(out_json), "--md", str(out_md)]) == 0
    captured = capsys.readouterr()
    assert "[7/7] timing floor" in captured.err
    result = json.loads(out_json.read_text())
    assert result["baseline"] == BASELINE and result["threads"] == 1 and result["size"] == 64
    names = [e["name"] for e in result["entries"]]
    assert names == [BASELINE, "eager forward_batched", "onnxruntime artifact",
                     "floor: backbone+FPN (onnxruntime)"]
    for e in result["entries"]:
        assert {"median_ms", "p10_ms", "p90_ms", "vs_baseline", "vs_floor"} <= set(e)
        assert e["runs"] == 2 and e["warmup"] == 1
    artifact = result["entries"][2]
    assert artifact["parity_ok"] and artifact["onnx_nodes"] > result["entries"][3]["onnx_nodes"] > 0
    assert len(result["machine"]["loadavg_before"]) == 3
    md = out_md.read_text()
    assert md in captured.out
    assert md.count("\n| ") == 1 + len(names) and "vs baseline" in md


def test_bench_times_given_artifacts(tmp_path):
    from dexport.cli import sample_images
    from dexport.driver import export
    from dexport.models import zoo
    model = zoo.get("faster_rcnn_tiny", weights=None)
    export(model, (sample_images(1, 64, seed=0),), tmp_path / "plain")
    from dexport.bench import bench
    result = bench(model, name="faster_rcnn_tiny", artifacts=[tmp_path / "plain"], size=64, runs=1,
                   warmup=0, threads=1, floor=False)
    assert [e["name"] for e in result["entries"]][2:] == ["onnxruntime plain"]
    assert "vs_floor" not in result["entries"][0] and result["entries"][2]["artifact"].endswith("plain")

