"""`dexport bench` and benchmarks/export_compare.py write their results with the
expected structure (times are never asserted: the machine is shared)."""
import importlib.util
import inspect
import json
from pathlib import Path

import pytest
import torch

from dexport.bench import BASELINE, JIT_SCRIPT, JIT_TRACE, failure_reason, interleaved_latency, latency
from dexport.cli import main
from dexport.ir.errors import DexportError


def test_latency_reports_ordered_quantiles():
    calls = []
    stats = latency(lambda: calls.append(1), runs=5, warmup=2)
    assert len(calls) == 7
    assert stats["p10_ms"] <= stats["median_ms"] <= stats["p90_ms"] and stats["runs"] == 5
    assert len(stats["times_ms"]) == 5 and stats["median_ms"] == sorted(stats["times_ms"])[2]


def test_interleaved_latency_calls_every_entry_once_per_round_alternating_the_order():
    calls = []
    stats = interleaved_latency([lambda: calls.append("a"), lambda: calls.append("b"), lambda: calls.append("c")],
                                runs=3, warmup=1)
    assert "".join(calls) == "abc" + "abc" + "cba" + "abc"
    assert [s["runs"] for s in stats] == [3, 3, 3] and all(s["p10_ms"] <= s["p90_ms"] for s in stats)
    with pytest.raises(DexportError):
        interleaved_latency([lambda: None], runs=0, warmup=0)


def test_bench_writes_json_and_markdown(tmp_path, capsys):
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    assert main(["bench", "--model", "zoo:mask_rcnn_tiny", "--size", "64", "--runs", "2", "--warmup", "1",
                 "--threads", "1", "--json", str(out_json), "--md", str(out_md)]) == 0
    captured = capsys.readouterr()
    timed_line = next(line for line in captured.err.splitlines() if line.startswith("[7/7] timing "))
    assert "entries interleaved (1 warm-up + 2 rounds)" in timed_line
    result = json.loads(out_json.read_text())
    assert result["baseline"] == BASELINE and result["threads"] == 1 and result["size"] == 64
    names = [e["name"] for e in result["entries"]]
    assert names == [BASELINE, "eager forward_batched", JIT_TRACE, JIT_SCRIPT, "onnxruntime artifact",
                     "floor: backbone+FPN (onnxruntime)"]
    md = out_md.read_text()
    timed = [e for e in result["entries"] if "error" not in e]
    for e in timed:
        assert {"median_ms", "p10_ms", "p90_ms", "vs_baseline", "vs_floor"} <= set(e)
        assert e["runs"] == 2 and e["warmup"] == 1
    # torch.jit.trace of forward_batched works on the zoo: timed in the same run, same detections
    trace = result["entries"][2]
    assert trace in timed and trace["median_ms"] > 0 and trace["parity_ok"]
    assert trace["vs_baseline"] == trace["median_ms"] / result["entries"][0]["median_ms"]
    assert f"| {JIT_TRACE} | {trace['median_ms']:.1f} |" in md
    script = result["entries"][3]  # the zoo's forward_batched scripts: timed, same detections
    assert script in timed and script["median_ms"] > 0 and script["parity_ok"]
    assert f"| {JIT_SCRIPT} | {script['median_ms']:.1f} |" in md
    artifact = result["entries"][4]
    assert artifact["parity_ok"] and artifact["nodes"] > result["entries"][5]["nodes"] > 0
    assert artifact["format"] == "onnx" and "onnxruntime" in result["machine"]["runtimes"]
    assert len(result["machine"]["loadavg_before"]) == 3
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
    assert [e["name"] for e in result["entries"]][4:] == ["onnxruntime plain"]
    assert "vs_floor" not in result["entries"][0] and result["entries"][4]["artifact"].endswith("plain")


class _Unscriptable(torch.nn.Module):
    def forward(self, x):
        return {**{"x": x}}


@pytest.mark.filterwarnings(r"ignore:`torch\.jit\.script:DeprecationWarning")
def test_failure_reason_is_one_short_line_with_the_source_place():
    with pytest.raises(Exception) as caught:
        torch.jit.script(_Unscriptable())
    reason = failure_reason(caught.value)
    line = inspect.getsourcelines(_Unscriptable.forward)[1] + 1
    assert reason.startswith("Dict expansion") and reason.endswith(f"(test_bench.py:{line})")
    assert "\n" not in reason and len(reason) <= 120
    assert failure_reason(ValueError("x" * 500), limit=40) == "x" * 37 + "..."
    assert failure_reason(RuntimeError()) == "RuntimeError"



def _export_compare():
    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("export_compare", root / "benchmarks" / "export_compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_compare_writes_results_and_reports_failures(tmp_path):
    ec = _export_compare()
    result = ec.compare_model("mask_rcnn_tiny", size=64, threads=1, runs=1, warmup=0, profile=False,
                              exporters=("dexport", "torch.onnx + onnxsim"), log=lambda s: None)
    json_path, md_path = ec.write_results([result], tmp_path)
    saved = json.loads(json_path.read_text())[0]
    assert saved["model"] == "mask_rcnn_tiny" and saved["baseline"] == "eager model(list)"
    for key in ("eager_list", "eager_forward_batched", "floor"):
        assert {"median_ms", "p10_ms", "p90_ms"} <= set(saved[key])
    ours, failed = saved["exporters"]
    assert ours["exporter"] == "dexport" and ours["parity_ok"] and ours["onnx_nodes"] > 0
    assert {"export_s", "file_mb", "median_ms"} <= set(ours)
    assert "median_ms" not in failed and "no model to simplify" in failed["error"]
    md = md_path.read_text()
    assert "## mask_rcnn_tiny at 64x64, 1 threads" in md and "| dexport | " in md
    assert "| torch.onnx + onnxsim |" in md and "failed" in md
    assert "| dexport ORT / eager model(list) |" in md and "not measured" in md
    ratio = ours["median_ms"] / saved["eager_list"]["median_ms"]
    assert f"| mask_rcnn_tiny | {ours['median_ms']:.0f} | {ratio:.2f}x |" in md  # the summary row


def _export_time():
    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("export_time", root / "benchmarks" / "export_time.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_time_reads_cli_steps_and_summarises_parity_per_side():
    et = _export_time()
    line = "[3/6] running passes 'fix-batch-dim{batch=dynamic},functionalize,dce' ... 0.4s"
    m = et.STEP.match(line)
    assert m and et.step_name(m.group(3)) == "passes" and float(m.group(4)) == 0.4
    ok = {"wall_s": 2.0, "rc": 0, "steps": {"capturing": 1.0}, "parity_ok": True, "verified": "verified ... -> ok"}
    bad = {"wall_s": 4.0, "rc": 1, "steps": {"capturing": 3.0}, "parity_ok": False, "verified": "... -> MISMATCH"}
    failed = {"wall_s": 1.0, "rc": 2, "steps": {}, "error": "error: no such model"}
    base, cur = et.summarise([ok, bad, ok]), et.summarise([ok, ok, failed])
    assert base["median_s"] == 2.0 and base["parity"] == "MISMATCH (2/3 ok)" and base["failed"] == 0
    assert cur["median_s"] == 2.0 and cur["failed"] == 1 and cur["parity"] == "MISMATCH (2/3 ok)"
    assert et.summarise([failed])["error"] == "error: no such model"
    result = {"command": "python benchmarks/export_time.py", "runs": 3, "warmup": 1,
              "baseline": {"rev": "aaaa"}, "current": {"rev": "bbbb"},
              "machine": {"loadavg_before": [1, 1, 1], "loadavg_after": [2, 2, 2], "cpu_count": 2, "torch": "x"},
              "models": {"m": {"baseline": base, "current": et.summarise([ok, ok, ok])}}}
    md = et.to_markdown(result)
    assert "| m | 2.0 | 2.0 | 1.00x | 2.0 / 2.0 | 1.0 / 1.0 | 0.0 / 0.0 | MISMATCH (2/3 ok) | ok |" in md
