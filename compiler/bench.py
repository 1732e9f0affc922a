"""``dexport bench``: latency of eager PyTorch and of exported artifacts, in one run.

Everything is timed in this process, on the same inputs and with the same thread
count for torch (``torch.set_num_threads``) and each artifact's runner (``threads``
of ``Backend.load``), and interleaved: every entry is compiled or loaded first, then
each of ``runs`` rounds calls every entry once (``interleaved_latency``), so the ratios
are comparable even on a shared machine whose load changes during the run. Each entry
reports the median and the p10/p90 of its ``runs`` timed calls after ``warmup``
untimed rounds.

Entries for a detector (a model with ``forward_batched``):

* ``eager model(list)``: the model's own list API, what a user runs today: the baseline
  every ratio is taken against;
* ``eager forward_batched``: the same network on the padded batch the artifact takes;
* ``torch.jit.trace forward_batched`` and ``torch.jit.script forward_batched``: torch's own
  compilers applied to the same eager model object (the trace on the batched entry
  point's tensors, so it is specialised to this batch), with parity against eager; where
  one fails on the model the entry holds ``error`` ("n/a: <reason>") instead of times;
* one entry per artifact (``dexport export`` directories, any format), run by its
  backend's runner on the batched input, with detection parity against eager on that input;
* ``floor``: the backbone + FPN alone (captured on the normalised, padded image and
  emitted by dexport in the first artifact's format): convolutions no exporter can
  remove, so ``artifact / floor`` says how much time the rest of the detector costs.
"""
from __future__ import annotations

from contextlib import nullcontext

import json
import os
import platform
import re
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from dexport.backends.base import DEFAULT_BACKEND, Backend, Emission, get_backend
from dexport.ir.errors import DexportError

BASELINE = "eager model(list)"
JIT_TRACE = "torch.jit.trace forward_batched"
JIT_SCRIPT = "torch.jit.script forward_batched"


def latency(fn: Callable[[], Any], *, runs: int, warmup: int) -> dict:
    """Median and p10/p90 wall time of ``fn()`` in milliseconds."""
    return interleaved_latency([fn], runs=runs, warmup=warmup)[0]


def interleaved_latency(fns: list[Callable[[], Any]], *, runs: int, warmup: int) -> list[dict]:
    """:func:`latency` of each of ``fns``, timed in rounds: every round calls each
    function once (in order, reversed every other round), so a change in machine load
    during the run hits every entry alike instead of the ones timed at that moment.
    ``warmup`` untimed rounds first."""
    if runs < 1:
        raise DexportError(f"runs must be at least 1, got {runs}")
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for r in range(runs):
        for i in (range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))):
            start = time.perf_counter()
            fns[i]()
            times[i].append((time.perf_counter() - start) * 1e3)
    return [_stats(t, runs=runs, warmup=warmup) for t in times]


def _stats(times: list[float], *, runs: int, warmup: int) -> dict:
    ordered = sorted(times)

    def quantile(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
    return {"median_ms": statistics.median(times), "p10_ms": quantile(0.1), "p90_ms": quantile(0.9),
            "runs": runs, "warmup": warmup, "times_ms": list(times)}


def failure_reason(exc: BaseException, limit: int = 120) -> str:
    """An exception as a short table cell: its first line and, where the message points
    into a source file (as torch.jit's errors do), that file's name and line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = (lines[0].rstrip(":") if lines else type(exc).__name__)
    where = re.search(r'File "([^"]+)", line (\d+)', str(exc))
    if where:
        reason += f" ({os.path.basename(where.group(1))}:{where.group(2)})"
    return reason if len(reason) <= limit else reason[:limit - 3] + "..."


def jit_compiled(model: torch.nn.Module, inputs: list[dict], flat: list[torch.Tensor], output_sizes: list[tuple]):
    """torch.jit.trace of ``forward_batched`` on ``flat`` and torch.jit.script of it
    (the method alone, as the scripting frontend compiles it: the list API is not
    scriptable without Instances staticization), as (label, how to compile, how to
    call the result on the bench's images -> the list API's results) for :func:`bench`."""
    from dexport.frontends.scripting import compile_method
    from dexport.loader import detection_results

    def trace():
        with torch.no_grad():
            return torch.jit.trace_module(model, {"forward_batched": tuple(flat)}, strict=False, check_trace=False)

    return [(JIT_TRACE, trace, lambda traced: detection_results(traced.forward_batched(*flat), output_sizes)),
            (JIT_SCRIPT, lambda: compile_method(model, "forward_batched"),
             lambda scripted: detection_results(scripted.forward_batched(*flat), output_sizes))]


def backbone_floor(model: torch.nn.Module, images: torch.Tensor, image_sizes: torch.Tensor, *,
                   format: str = DEFAULT_BACKEND, **options) -> tuple[Emission, torch.Tensor]:
    """The backbone + FPN of a zoo detector emitted in ``format`` and its input: the
    network captured on the normalised, padded batch, exactly what ``forward_batched``
    feeds it."""
    import dexport
    from dexport.zoo import normalize_images

    backend = get_backend(format)
    backbone = model.backbone
    with torch.no_grad():
        x = normalize_images(images, image_sizes, model.pixel_mean, model.pixel_std,
                             backbone.size_divisibility)
    graph = dexport.capture(backbone, (x,), method="tracing")
    return backend.emit(graph, options=backend.resolve_options(options)), x


def bench(model: torch.nn.Module, *, name: str, artifacts=(), size: int = 512, batch: int = 1,
          runs: int = 10, warmup: int = 2, threads: int = 2, floor: bool = True, progress=None) -> dict:
    """Time ``model`` eager and each artifact directory in ``artifacts`` (none given:
    ``dexport export`` it into a temporary directory first) on ``batch`` synthetic images
    of ``size``×``size``. Returns the results as a JSON-ready dict (see module doc)."""
    from dexport.artifacts import read_manifest
    from dexport.cli import sample_images
    from dexport.driver import export, io_kind_of
    from dexport.loader import detection_results, file_reader, load
    from dexport.ir.dialects.detection_io import stack_inputs
    from dexport.verification import compare_outputs

    if io_kind_of(model) != "detection":
        raise DexportError(f"{name} has no forward_batched: dexport bench times zoo-style detectors",
                           hint="use a zoo:NAME model or a factory returning a detector")
    for directory in artifacts:  # before any timing: a structured artifact takes no images
        if read_manifest(directory)["io"] != "detection":
            raise DexportError(f"{directory} is not a detector artifact: dexport bench times detectors on images",
                               hint="time it with your own inputs: dexport.load(DIR)(*inputs)")
    step = progress.step if progress is not None else (lambda text: nullcontext())
    model.eval()
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    inputs = sample_images(batch, size, seed=1)
    images, image_sizes, output_sizes, sizes = stack_inputs(inputs, "cpu")
    flat = [images, image_sizes, output_sizes]
    entries: list[dict] = []  # in table order; the timed ones get their times below
    timed: list[tuple[dict, Callable[[], Any]]] = []  # (entry, the call to time)
    used: list[Backend] = []  # the backends timed, first one also for the floor

    def add(label: str, fn, **extra):
        entries.append({"name": label, **extra})
        timed.append((entries[-1], fn))

    with torch.no_grad():
        expected = model(inputs)
    add(BASELINE, lambda: model(inputs))
    add("eager forward_batched", lambda: model.forward_batched(images, image_sizes, output_sizes))

    for label, compile_model, call in jit_compiled(model, inputs, flat, sizes.outputs):
        with step(f"compiling {label} and checking its parity"), warnings.catch_warnings():
            # deprecation of torch.jit and the trace's own warnings: nothing the user can act on here
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            try:
                compiled = compile_model()
                with torch.no_grad():
                    report = compare_outputs(expected, call(compiled))
            except Exception as exc:  # a model torch cannot compile is a row of the table, not a failure
                entries.append({"name": label, "error": f"n/a: {failure_reason(exc)}"})
                continue
            add(label, lambda c=compiled, f=call: f(c), parity=report.summary(), parity_ok=report.ok)

    with tempfile.TemporaryDirectory(prefix="dexport-bench-") as tmp:
        directories = [Path(a) for a in artifacts]
        if not directories:
            with step(f"exporting {name} with dexport (capture at {size}x{size})"):
                start = time.perf_counter()
                export(model, (sample_images(batch, size, seed=0),), Path(tmp) / "artifact")
                export_s = time.perf_counter() - start
            directories = [Path(tmp) / "artifact"]
        for directory in directories:
            with step(f"loading {directory.name} and checking its parity"):
                loaded = load(directory, threads=threads)
                backend = get_backend(loaded.manifest["format"])
                used.append(backend)
                with torch.no_grad():
                    outputs = loaded.output_schema.rebuild(loaded.run_flat(flat))
                report = compare_outputs(expected, detection_results(outputs, sizes.outputs))
                label = f"{backend.runtime} {directory.name}" + (" (simplified)" if loaded.manifest.get("simplified")
                                                                 else "")
                read = file_reader(directory, loaded.manifest)
                model_bytes = read(loaded.manifest["model_file"])
                extra = {"artifact": str(directory) if artifacts else "(exported by bench)", "format": backend.name,
                         **backend.describe(read, loaded.manifest), "file_mb": len(model_bytes) / 1e6,
                         "parity": report.summary(), "parity_ok": report.ok}
                if not artifacts:
                    extra["export_s"] = export_s
                add(label, lambda m=loaded: m.run_flat(flat), **extra)

        if floor:
            backend = used[0]
            with step("exporting the backbone + FPN floor"):
                emission, x = backbone_floor(model, images, image_sizes, format=backend.name)
                runner = backend.load(emission.files.__getitem__, emission.manifest_fields(), threads=threads)
            add(f"floor: backbone+FPN ({backend.runtime})", lambda: runner.run_flat([x]),
                **backend.describe(emission.files.__getitem__, emission.manifest_fields()))

        with step(f"timing {len(timed)} entries interleaved ({warmup} warm-up + {runs} rounds)"), torch.no_grad():
            for (entry, _), stats in zip(timed, interleaved_latency([fn for _, fn in timed], runs=runs,
                                                                     warmup=warmup)):
                entry.update(stats)

    base = next(e["median_ms"] for e in entries if e["name"] == BASELINE)
    floor_ms = entries[-1]["median_ms"] if floor else None
    for e in entries:
        if "error" in e:
            continue
        e["vs_baseline"] = e["median_ms"] / base
        if floor_ms:
            e["vs_floor"] = e["median_ms"] / floor_ms
    runtimes = {k: v for b in used for k, v in b.versions().items()}
    return {"model": name, "size": size, "batch": batch, "threads": threads, "runs": runs, "warmup": warmup,
            "baseline": BASELINE, "entries": entries, "machine": machine_info(load_before, runtimes)}


def machine_info(load_before=None, runtimes: dict | None = None) -> dict:
    """The machine, torch, and ``runtimes`` (distribution -> version of what ran the artifacts)."""
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "runtimes": dict(runtimes or {}),
            "loadavg_before": list(load_before) if load_before else None, "loadavg_after": list(os.getloadavg())}


def to_markdown(result: dict) -> str:
    """The result as a markdown table, ratios against the baseline (and the floor)."""
    m = result["machine"]
    lines = [f"## {result['model']}: {result['batch']} image(s) of {result['size']}x{result['size']}, "
             f"{result['threads']} threads, median of {result['runs']} interleaved rounds after {result['warmup']} warm-up",
             "",
             f"Baseline: `{result['baseline']}`. Load average (1/5/15 min) before: "
             f"{_load(m['loadavg_before'])}, after: {_load(m['loadavg_after'])} on {m['cpu_count']} CPUs; "
             f"torch {m['torch']}{''.join(f', {d} {v}' for d, v in m.get('runtimes', {}).items())}. "
             "Artifacts run on the padded batch "
             "(images, image_sizes, output_sizes); parity is against eager `model(list)` on the same images "
             "(ok: same counts, box error <= 1e-3 of the image size, score error <= 1e-4, mask IoU >= 0.99).",
             "",
             "| entry | median ms | p10 ms | p90 ms | vs baseline | vs floor | nodes | parity |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for e in result["entries"]:
        if "error" in e:
            lines.append(f"| {e['name']} | {e['error']} | | | | | | |")
            continue
        parity = "" if "parity_ok" not in e else ("ok" if e["parity_ok"] else "MISMATCH")
        vs_floor = f"{e['vs_floor']:.2f}x" if "vs_floor" in e else ""
        lines.append(f"| {e['name']} | {e['median_ms']:.1f} | {e['p10_ms']:.1f} | {e['p90_ms']:.1f} | "
                     f"{e['vs_baseline']:.2f}x | {vs_floor} | {e.get('nodes', '')} | {parity} |")
    return "\n".join(lines) + "\n"


def _load(values) -> str:
    return "/".join(f"{v:.2f}" for v in values) if values else "?"


def write_results(result: dict, json_path=None, md_path=None) -> None:
    """Write the JSON and markdown reports whole; their folders must exist and lie outside
    every artifact (``dexport.artifacts.check_report_path``, checked before timing)."""
    from dexport.artifacts import check_report_path, write_report
    for path, flag, text in ((json_path, "--json", lambda: json.dumps(result, indent=2) + "\n"),
                             (md_path, "--md", lambda: to_markdown(result))):
        if path:
            write_report(check_report_path(path, flag), text())


__all__ = ["BASELINE", "JIT_SCRIPT", "JIT_TRACE", "backbone_floor", "bench", "failure_reason", "interleaved_latency",
           "jit_compiled", "latency", "machine_info", "to_markdown", "write_results"]
