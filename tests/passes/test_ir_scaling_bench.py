"""The IR scaling benchmark still builds valid graphs and writes its results
(tiny sizes; no time is asserted)."""
import json

from benchmarks.ir_scaling import STEPS, build_graph, measure, write_results
from dexport.ir.verifier import verify
from dexport.passes import PassManager


def test_synthetic_graph_is_valid_and_has_cleanup_work():
    g = build_graph(300)
    verify(g)
    n = len(g)
    assert n >= 300
    result = PassManager("cse,dce", verify_each=True).run(g)
    assert result.changed_passes == ["cse", "dce"] and len(g) < 0.85 * n


def test_results_files(tmp_path):
    rows = [measure(200, repeats=1), measure(2000, repeats=1)]
    write_results(rows, str(tmp_path))
    data = json.loads((tmp_path / "ir_scaling.json").read_text())
    assert [r["nodes"] for r in data["rows"]] == [rows[0]["nodes"], rows[1]["nodes"]]
    assert set(data["rows"][0]["cpu_seconds"]) == set(STEPS)
    table = (tmp_path / "ir_scaling.md").read_text()
    assert "| nodes | print | parse | verify | cse,dce |" in table


def test_ratio_row_and_targets(tmp_path):
    def row(n, secs):
        cpu = dict(zip(STEPS, secs))
        return {"nodes": n, "cpu_seconds": cpu, "wall_seconds": cpu,
                "nodes_per_second": {s: n / t for s, t in cpu.items()}}

    write_results([row(100_000, [1, 1, 1, 1]), row(1_000_000, [10, 11, 13, 5])], str(tmp_path))
    table = (tmp_path / "ir_scaling.md").read_text()
    assert "| **1M / 100k** | 10.0x | 11.0x | 13.0x | 5.0x |" in table
    assert "Linear: NOT met; cse,dce at 1M: 200k nodes/s (met)." in table
    ratios = json.loads((tmp_path / "ir_scaling.json").read_text())["ratio_1M_over_100k"]
    assert ratios["verify"] == 13.0
