"""``dexport bench``: latency of eager PyTorch and of exported artifacts, in one run.

Everything is timed in this process, on the same inputs and with the same thread
count for torch (``torch.set_num_threads``) and onnxruntime (``intra_op_num_threads``,
one inter-op thread), so the ratios are comparable even on a shared machine whose
absolute times drift. Each entry reports the median and the p10/p90 of ``runs``
timed calls after ``warmup`` untimed ones.

Entries for a detector (a model with ``forward_batched``):

* ``eager model(list)``: the model's own list API, what a user runs today: the baseline
  every ratio is taken against;
* ``eager forward_batched``: the same network on the padded batch the artifact takes;
* one entry per ONNX artifact (``dexport export`` directories), run by onnxruntime on
  the batched input, with detection parity against eager on that input;
* ``floor``: the backbone + FPN alone (captured on the normalised, padded image and
  emitted to ONNX by dexport): convolutions no exporter can remove, so
  ``artifact / floor`` says how much time the rest of the detector costs.
"""
from __future__ import annotations

from contextlib import nullcontext

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from dexport.ir.errors import DexportError

BASELINE = "eager model(list)"


def latency(fn: Callable[[], Any], *, runs: int, warmup: int) -> dict:
    """Median and p10/p90 wall time of ``fn()`` in milliseconds."""
    if runs < 1:
        raise DexportError(f"runs must be at least 1, got {runs}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    ordered = sorted(times)

    def quantile(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
    return {"median_ms": statistics.median(times), "p10_ms": quantile(0.1), "p90_ms": quantile(0.9),
            "runs": runs, "warmup": warmup}


def ort_session(model: bytes | str | os.PathLike, threads: int, *, profile_prefix: str | None = None):
    """A CPU onnxruntime session with a fixed thread count."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    source = model if isinstance(model, bytes) else str(model)
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def backbone_floor(model: torch.nn.Module, images: torch.Tensor, image_sizes: torch.Tensor, *,
                   opset: int = 17):
    """The backbone + FPN of a zoo detector as ONNX (bytes) and its input array: the
    network captured on the normalised, padded batch, exactly what ``forward_batched``
    feeds it."""
    import dexport
    from dexport.backends.onnx import emit_onnx
    from dexport.models.batched import normalize_images

    backbone = model.backbone
    with torch.no_grad():
        x = normalize_images(images, image_sizes, model.pixel_mean, model.pixel_std,
                             backbone.size_divisibility)
    graph = dexport.capture(backbone, (x,), method="tracing")
    return emit_onnx(graph, opset=opset).SerializeToString(), x.numpy()


def onnx_node_count(model_bytes: bytes) -> int:
    import onnx
    return len(onnx.load_from_string(model_bytes).graph.node)


def bench(model: torch.nn.Module, *, name: str, artifacts=(), size: int = 512, batch: int = 1,
          runs: int = 10, warmup: int = 2, threads: int = 2, opset: int = 17,
          floor: bool = True, progress=None) -> dict:
    """Time ``model`` eager and each artifact directory in ``artifacts`` (none given:
    ``dexport export`` it into a temporary directory first) on ``batch`` synthetic images
    of ``size``×``size``. Returns the results as a JSON-ready dict (see module doc)."""
    from dexport.artifacts import artifact_file, read_manifest
    from dexport.cli import sample_images
    from dexport.driver import export, io_kind_of
    from dexport.loader import detection_results, load
    from dexport.models.batched import stack_inputs
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
    feed = {"images": images.numpy(), "image_sizes": image_sizes.numpy(), "output_sizes": output_sizes.numpy()}
    entries: list[dict] = []

    def timed(label: str, fn, **extra):
        with step(f"timing {label} ({warmup} warm-up + {runs} runs)"):
            with torch.no_grad():
                entries.append({"name": label, **latency(fn, runs=runs, warmup=warmup), **extra})

    with torch.no_grad():
        expected = model(inputs)
    timed(BASELINE, lambda: model(inputs))
    timed("eager forward_batched", lambda: model.forward_batched(images, image_sizes, output_sizes))

    with tempfile.TemporaryDirectory(prefix="dexport-bench-") as tmp:
        directories = [Path(a) for a in artifacts]
        if not directories:
            with step(f"exporting {name} with dexport (capture at {size}x{size})"):
                start = time.perf_counter()
                export(model, (sample_images(batch, size, seed=0),), Path(tmp) / "artifact")
                export_s = time.perf_counter() - start
            directories = [Path(tmp) / "artifact"]
        for directory in directories:
            loaded = load(directory, threads=threads)
            session = loaded.session
            raw = session.run(None, feed)
            outputs = loaded.output_schema.rebuild([torch.from_numpy(o) for o in raw])
            report = compare_outputs(expected, detection_results(outputs, sizes.outputs))
            label = f"onnxruntime {directory.name}" + (" (simplified)" if loaded.manifest.get("simplified") else "")
            model_bytes = artifact_file(directory, loaded.manifest).read_bytes()
            extra = {"artifact": str(directory) if artifacts else "(exported by bench)",
                     "onnx_nodes": onnx_node_count(model_bytes), "file_mb": len(model_bytes) / 1e6,
                     "parity": report.summary(), "parity_ok": report.ok}
            if not artifacts:
                extra["export_s"] = export_s
            timed(label, lambda s=session: s.run(None, feed), **extra)

    if floor:
        with step("exporting the backbone + FPN floor"):
            floor_bytes, x = backbone_floor(model, images, image_sizes, opset=opset)
            session = ort_session(floor_bytes, threads)
            floor_feed = {session.get_inputs()[0].name: x}
        timed("floor: backbone+FPN (onnxruntime)", lambda: session.run(None, floor_feed),
              onnx_nodes=onnx_node_count(floor_bytes))

    base = next(e["median_ms"] for e in entries if e["name"] == BASELINE)
    floor_ms = entries[-1]["median_ms"] if floor else None
    for e in entries:
        e["vs_baseline"] = e["median_ms"] / base
        if floor_ms:
            e["vs_floor"] = e["median_ms"] / floor_ms
    return {"model": name, "size": size, "batch": batch, "threads": threads, "runs": runs, "warmup": warmup,
            "baseline": BASELINE, "entries": entries, "machine": machine_info(load_before)}


def machine_info(load_before=None) -> dict:
    import onnxruntime
    return {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "loadavg_before": list(load_before) if load_before else None, "loadavg_after": list(os.getloadavg())}


def to_markdown(result: dict) -> str:
    """The result as a markdown table, ratios against the baseline (and the floor)."""
    m = result["machine"]
    lines = [f"## {result['model']}: {result['batch']} image(s) of {result['size']}x{result['size']}, "
             f"{result['threads']} threads, median of {result['runs']} runs after {result['warmup']} warm-up",
             "",
             f"Baseline: `{result['baseline']}`. Load average (1/5/15 min) before: "
             f"{_load(m['loadavg_before'])}, after: {_load(m['loadavg_after'])} on {m['cpu_count']} CPUs; "
             f"torch {m['torch']}, onnxruntime {m['onnxruntime']}. Artifacts run on the padded batch "
             "(images, image_sizes, output_sizes); parity is against eager `model(list)` on the same images "
             "(ok: same counts, box error <= 1e-3 of the image size, score error <= 1e-4, mask IoU >= 0.99).",
             "",
             "| entry | median ms | p10 ms | p90 ms | vs baseline | vs floor | ONNX nodes | parity |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for e in result["entries"]:
        parity = "" if "parity_ok" not in e else ("ok" if e["parity_ok"] else "MISMATCH")
        vs_floor = f"{e['vs_floor']:.2f}x" if "vs_floor" in e else ""
        lines.append(f"| {e['name']} | {e['median_ms']:.1f} | {e['p10_ms']:.1f} | {e['p90_ms']:.1f} | "
                     f"{e['vs_baseline']:.2f}x | {vs_floor} | {e.get('onnx_nodes', '')} | {parity} |")
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


__all__ = ["BASELINE", "backbone_floor", "bench", "latency", "machine_info", "onnx_node_count",
           "ort_session", "to_markdown", "write_results"]
