"""Export time of zoo models: the current tree against a baseline git revision.

Each export is ``python -m dexport export --model zoo:NAME --output DIR`` (the CLI's
defaults: ONNX, tracing, capture at 128 px, verification on its held-out images) in a
fresh subprocess, so interpreter start, imports and model building count the same on
both sides; the wall time of that subprocess is the figure. The baseline is checked out
with ``git worktree add --detach`` into a temporary folder and installed editable into a
throwaway venv (``--system-site-packages``, so it sees the same torch and onnxruntime,
``--no-deps``); both sides run from that temporary folder so neither tree shadows the
other, and the script checks which source each side imports before timing. Everything
is removed afterwards.

Runs are interleaved (for each run, each model: baseline and current back to back, the
order alternating from run to run) after an untimed warm-up export per side
(a fresh checkout has no bytecode yet), so a change in machine load hits both sides alike;
the result is the median per side, their ratio, the median of each CLI step
(``[k/n] step ... 1.2s`` lines) and the verdict of each export's own verification
(``manifest.json`` ``verification.ok``, every run).

    python benchmarks/export_time.py                                  # the seven tiny models, 3 runs
    python benchmarks/export_time.py --models mask_rcnn_R50_FPN --runs 3 --baseline eaa4fa1

Writes ``benchmarks/results/export_time.json`` and ``.md`` (``--out`` to change).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEP = re.compile(r"^\[(\d+)/(\d+)\] (.*?) \.\.\. ?([0-9.]+)s$")
SIDES = ("baseline", "current")


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def tiny_models() -> list[str]:
    from dexport.models import zoo
    return [n for n in zoo.names() if n.endswith("_tiny")]


def step_name(text: str) -> str:
    """A CLI step line's text as a key both revisions share: its first word, with
    "running passes '...'" as "passes"."""
    word = text.split()[0]
    return {"running": "passes"}.get(word, word)


def materialise_baseline(rev: str, tmp: Path) -> Path:
    """Check ``rev`` out into ``tmp/src`` and install it editable into ``tmp/venv``;
    returns that venv's python."""
    src, venv = tmp / "src", tmp / "venv"
    git("worktree", "add", "--detach", str(src), rev)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, cwd=tmp)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(src)], check=True, cwd=tmp,
                   capture_output=True, text=True)
    return python


def imported_from(python: Path | str, cwd: Path) -> str:
    """The folder ``python`` imports the dexport package from, run in ``cwd``."""
    return subprocess.run([str(python), "-c", "import os, dexport; print(os.path.dirname(dexport.__file__))"],
                          cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def export_once(python: Path | str, model: str, out: Path, cwd: Path) -> dict:
    """One CLI export in a fresh process: wall time, step times, verification verdict."""
    start = time.perf_counter()
    proc = subprocess.run([str(python), "-m", "dexport", "export", "--model", f"zoo:{model}", "--output", str(out)],
                          cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    text = proc.stdout + proc.stderr
    steps = {}
    for line in text.splitlines():
        m = STEP.match(line.strip())
        if m:
            steps[step_name(m.group(3))] = float(m.group(4))
    record = {"wall_s": wall, "rc": proc.returncode, "steps": steps}
    manifest_path = out / "manifest.json"
    if not manifest_path.exists():  # no artifact: the export failed
        lines = [line for line in text.splitlines() if line.strip()]
        record["error"] = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        return record
    # exit status 1 with an artifact written: the export's verification failed (EXIT_MISMATCH)
    record["parity_ok"] = bool(json.loads(manifest_path.read_text())["verification"]["ok"])
    record["verified"] = next((line.strip() for line in text.splitlines() if line.strip().startswith("verified")), "")
    shutil.rmtree(out)
    return record


def wrote_artifact(record: dict) -> bool:
    """Whether the export got as far as writing its artifact: ``parity_ok`` recorded, or
    (records written before that field was kept for failed verifications) exit status 1
    after the CLI's last step, writing, finished."""
    return "parity_ok" in record or (record["rc"] == 1 and "writing" in record["steps"])


def summarise(records: list[dict]) -> dict:
    done = [r for r in records if wrote_artifact(r)]
    out = {"runs": len(records), "failed": len(records) - len(done), "wall_s": [r["wall_s"] for r in records]}
    if not done:
        out["error"] = records[0].get("error", "failed")
        return out
    out["median_s"] = statistics.median(r["wall_s"] for r in done)
    keys = [k for k in done[0]["steps"]]
    out["steps_median_s"] = {k: statistics.median(r["steps"].get(k, 0.0) for r in done) for k in keys}
    ok = sum(r.get("parity_ok", False) for r in done)
    out["parity"] = "ok" if ok == len(done) and len(done) == len(records) else f"MISMATCH ({ok}/{len(records)} ok)"
    out["verified"] = done[-1].get("verified", "")
    return out


def to_markdown(result: dict) -> str:
    load = lambda v: "/".join(f"{x:.2f}" for x in v)  # noqa: E731
    lines = [f"## Export time: current tree ({result['current']['rev']}) vs baseline {result['baseline']['rev']}",
             "",
             f"`{result['command']}`: `python -m dexport export --model zoo:NAME --output DIR` (CLI defaults: "
             f"ONNX, capture at 128 px, verification on), each in a fresh process, median wall time of "
             f"{result['runs']} interleaved runs per side after {result['warmup']} untimed warm-up export(s). Load average (1/5/15 min) before: "
             f"{load(result['machine']['loadavg_before'])}, after: {load(result['machine']['loadavg_after'])} on "
             f"{result['machine']['cpu_count']} CPUs; torch {result['machine']['torch']}. Parity: the export's own "
             "verification (`manifest.json` `verification.ok`) in every run.",
             "",
             "| model | baseline s | current s | current / baseline | fastest s (b / c) | capture s (b / c) "
             "| verify s (b / c) | parity baseline | parity current |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for name, row in result["models"].items():
        b, c = row["baseline"], row["current"]
        if "median_s" not in b or "median_s" not in c:
            lines.append(f"| {name} | {b.get('median_s', b.get('error', ''))} | {c.get('median_s', c.get('error', ''))}"
                         " | | | | | | |")
            continue

        def pair(key):
            return f"{b['steps_median_s'].get(key, 0):.1f} / {c['steps_median_s'].get(key, 0):.1f}"
        lines.append(f"| {name} | {b['median_s']:.1f} | {c['median_s']:.1f} | {c['median_s'] / b['median_s']:.2f}x | "
                     f"{min(b['wall_s']):.1f} / {min(c['wall_s']):.1f} | {pair('capturing')} | {pair('verifying')} | {b['parity']} | {c['parity']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", help="comma-separated zoo names (default: every *_tiny model)")
    p.add_argument("--runs", type=int, default=3, help="exports per model and side (default 3)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed exports of the first model per side first: bytecode compiled, caches warm (default 1)")
    p.add_argument("--baseline", default="eaa4fa1", help="git revision to compare with (default eaa4fa1)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for export_time.json/.md")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    models = args.models.split(",") if args.models else tiny_models()
    command = "python benchmarks/export_time.py" + "".join(
        f" {flag} {value}" for flag, value in (("--models", args.models), ("--runs", args.runs),
                                               ("--baseline", args.baseline)) if value is not None)
    baseline_rev = git("rev-parse", "--short", args.baseline)
    current_rev = git("rev-parse", "--short", "HEAD") + (
        "+dirty" if git("status", "--porcelain", "--", ".", ":!benchmarks/results") else "")
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="dexport-export-time-"))
    try:
        pythons = {"baseline": materialise_baseline(args.baseline, tmp), "current": Path(sys.executable)}
        sources = {side: imported_from(py, tmp) for side, py in pythons.items()}
        expected = {"baseline": str(tmp / "src" / "compiler"), "current": str(ROOT / "compiler")}
        for side in SIDES:
            if os.path.realpath(sources[side]) != os.path.realpath(expected[side]):
                raise SystemExit(f"{side} imports dexport from {sources[side]}, expected {expected[side]}")
        for k in range(args.warmup):
            for side in SIDES:
                rec = export_once(pythons[side], models[0], tmp / f"warmup-{side}-{k}", tmp)
                if rec["rc"] != 0:
                    raise SystemExit(f"{side} warm-up export of {models[0]} failed: {rec['error']}")
        records = {m: {s: [] for s in SIDES} for m in models}
        for run in range(args.runs):
            for model in models:
                for side in (SIDES if run % 2 == 0 else SIDES[::-1]):
                    rec = export_once(pythons[side], model, tmp / f"out-{side}-{model}-{run}", tmp)
                    records[model][side].append(rec)
                    verdict = rec.get("error") or ("ok" if rec["parity_ok"] else "MISMATCH (verification failed)")
                    print(f"run {run + 1}/{args.runs} {model:28s} {side:8s} {rec['wall_s']:6.1f}s  {verdict}",
                          flush=True)
    finally:
        if (tmp / "src").exists():
            subprocess.run(["git", "worktree", "remove", "--force", str(tmp / "src")], cwd=ROOT, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)
    import torch
    result = {"command": command, "runs": args.runs, "warmup": args.warmup,
              "baseline": {"rev": baseline_rev}, "current": {"rev": current_rev},
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                          "python": platform.python_version(), "torch": torch.__version__,
                          "loadavg_before": list(load_before), "loadavg_after": list(os.getloadavg())},
              "models": {m: {s: summarise(records[m][s]) for s in SIDES} for m in models},
              "records": records}
    for row in result["models"].values():
        if "median_s" in row["baseline"] and "median_s" in row["current"]:
            row["ratio"] = row["current"]["median_s"] / row["baseline"]["median_s"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "export_time.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "export_time.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
