"""dexport's ONNX vs PyTorch's own ``torch.onnx.export`` on the zoo detectors.

For each model, at SIZE x SIZE on CPU with a fixed thread count (torch and
onnxruntime alike), in one process:

* eager ``model(list)`` (the baseline: what a user runs today) and eager
  ``forward_batched`` (the same network on the padded batch the artifacts take);
* the floor: backbone + FPN alone, exported by dexport and run by onnxruntime;
* exporters, each reporting export time, ONNX node count, file size, onnxruntime
  median latency and detection parity against eager ``model(list)``, or the
  failure message (a failure is a result):
  - ``dexport`` and ``dexport --simplify`` (capture, passes, emit, write);
  - ``torch.onnx (TorchScript)``: ``dynamo=False`` with dynamic N/H/W axes and
    symbolic functions for dexport's custom ops (below), and the same model run
    through onnxsim (``torch.onnx + onnxsim``);
  - ``torch.onnx (dynamo)``: ``dynamo=True`` at static shapes, no custom
    translation table: what a user gets out of the box.

All exporters are timed on the batched input (images, image_sizes, output_sizes).
torch.onnx's TorchScript exporter sees dexport's custom ops as opaque nodes and needs
a symbolic function for each: they are part of the anchor being measured, written the
way a torch.onnx user would, and serve only that exporter (dexport's own path uses its
ONNX backend's lowering table, ``dexport.backends.onnx_detection``; sessions, node
counts and the floor come from the same backend). The symbolic functions map ``dexport::nms``/``batched_nms`` to NonMaxSuppression
(classes separated by the coordinate-offset trick), ``roi_align`` to RoiAlign,
and write box decoding, clipping, FPN level assignment and mask pasting out in
standard ONNX ops, so the TorchScript exporter's model runs in plain onnxruntime;
``heatmaps_to_keypoints`` goes to the custom domain ``com.dexport`` (no kernel: a
keypoint model's session fails, and that is reported). One torch bug needs a
workaround: its ``aten::cumsum`` symbolic emits CumSum on bool tensors, which
onnxruntime refuses ("Type 'tensor(bool)' ... of operator (CumSum) is invalid");
it is overridden here to cast to int64 first, as torch itself does.

    python benchmarks/export_compare.py                              # mask_rcnn_R50_FPN
    python benchmarks/export_compare.py --models mask_rcnn_R50_FPN,faster_rcnn_R50_FPN --runs 10

Writes ``benchmarks/results/export_compare.json`` and ``.md`` (``--out`` to change).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
import traceback
from pathlib import Path

import torch

from dexport.backends.onnx_runtime import node_count as onnx_node_count
from dexport.backends.onnx_runtime import ort_session
from dexport.bench import backbone_floor, latency, machine_info

EXPORTERS = ("dexport", "dexport --simplify", "torch.onnx (TorchScript)", "torch.onnx + onnxsim",
             "torch.onnx (dynamo)")
OPSET = 17
PARITY_NOTE = ("Parity is against eager `model(list)` on a held-out image (exported counts vs eager "
               "counts, largest box error relative to the image size, score error, smallest mask IoU); "
               "`ok` means counts equal, box <= 1e-3, score <= 1e-4, mask IoU >= 0.99. Untrained R50 "
               "mask heads give masks whose logits sit near the threshold, so float-level differences "
               "flip border pixels: every exporter shows the same figures when that is the cause.")


# --------------------------------------------------------------------------- symbolics

def _const(g, value, dtype=torch.float32):
    return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))


def _column(g, x, i, axis=1):
    return g.op("Gather", x, _const(g, i, torch.int64), axis_i=axis)


def _unsqueeze(g, x, axes):
    return g.op("Unsqueeze", x, _const(g, list(axes), torch.int64))


def _nms(g, boxes, scores, iou_threshold):
    from torch.onnx import symbolic_helper as sh
    iou = sh._maybe_get_const(iou_threshold, "f")
    selected = g.op("NonMaxSuppression", _unsqueeze(g, boxes, [0]), _unsqueeze(g, scores, [0, 1]),
                    _const(g, [2 ** 31 - 1], torch.int64), _const(g, [float(iou)]))
    return _column(g, selected, 2)


def _batched_nms(g, boxes, scores, idxs, iou_threshold):
    # Shift each group's boxes past every other group's: one NMS never compares groups.
    span = g.op("Add", g.op("ReduceMax", boxes, keepdims_i=0), _const(g, 1.0))
    offset = g.op("Mul", g.op("Cast", idxs, to_i=1), span)
    return _nms(g, g.op("Add", boxes, _unsqueeze(g, offset, [1])), scores, iou_threshold)


def _roi_align(g, x, rois, spatial_scale, output_h, output_w, sampling_ratio, aligned):
    from torch.onnx import symbolic_helper as sh
    batch = g.op("Cast", _column(g, rois, 0), to_i=7)
    boxes = g.op("Slice", rois, _const(g, [1], torch.int64), _const(g, [5], torch.int64),
                 _const(g, [1], torch.int64))
    return g.op("RoiAlign", x, boxes, batch, mode_s="avg",
                coordinate_transformation_mode_s="half_pixel" if sh._maybe_get_const(aligned, "b")
                else "output_half_pixel",
                output_height_i=sh._maybe_get_const(output_h, "i"),
                output_width_i=sh._maybe_get_const(output_w, "i"),
                sampling_ratio_i=sh._maybe_get_const(sampling_ratio, "i"),
                spatial_scale_f=sh._maybe_get_const(spatial_scale, "f"))


def _decode_boxes(g, deltas, boxes, weights, scale_clamp):
    from torch.onnx import symbolic_helper as sh
    wx, wy, ww, wh = sh._maybe_get_const(weights, "fs")
    clamp = sh._maybe_get_const(scale_clamp, "f")
    boxes = g.op("Cast", boxes, to_i=1)
    x0, y0, x1, y1 = (_column(g, boxes, i) for i in range(4))
    widths, heights = g.op("Sub", x1, x0), g.op("Sub", y1, y0)
    half = _const(g, 0.5)
    ctr_x = _unsqueeze(g, g.op("Add", x0, g.op("Mul", half, widths)), [1])
    ctr_y = _unsqueeze(g, g.op("Add", y0, g.op("Mul", half, heights)), [1])
    widths, heights = _unsqueeze(g, widths, [1]), _unsqueeze(g, heights, [1])
    d = g.op("Reshape", deltas, _const(g, [0, -1, 4], torch.int64))
    dx, dy, dw, dh = (g.op("Div", _column(g, d, i, 2), _const(g, w)) for i, w in enumerate((wx, wy, ww, wh)))
    dw, dh = g.op("Min", dw, _const(g, clamp)), g.op("Min", dh, _const(g, clamp))
    cx = g.op("Add", g.op("Mul", dx, widths), ctr_x)
    cy = g.op("Add", g.op("Mul", dy, heights), ctr_y)
    pw = g.op("Mul", g.op("Mul", g.op("Exp", dw), widths), half)
    ph = g.op("Mul", g.op("Mul", g.op("Exp", dh), heights), half)
    corners = [g.op("Sub", cx, pw), g.op("Sub", cy, ph), g.op("Add", cx, pw), g.op("Add", cy, ph)]
    out = g.op("Concat", *(_unsqueeze(g, c, [2]) for c in corners), axis_i=2)
    return g.op("Reshape", out, g.op("Shape", deltas))


def _clip_boxes(g, boxes, image_size):
    hw = g.op("Cast", image_size, to_i=1)
    h, w = _unsqueeze(g, _column(g, hw, 0, 0), [0]), _unsqueeze(g, _column(g, hw, 1, 0), [0])
    repeats = g.op("Div", g.op("Slice", g.op("Shape", boxes), _const(g, [1], torch.int64),
                               _const(g, [2], torch.int64)), _const(g, [4], torch.int64))
    bounds = g.op("Tile", g.op("Concat", w, h, w, h, axis_i=0), repeats)
    return g.op("Min", g.op("Max", boxes, _const(g, 0.0)), bounds)


def _assign_fpn_levels(g, boxes, min_level, max_level, canonical_box_size, canonical_level):
    from torch.onnx import symbolic_helper as sh
    lo, hi = sh._maybe_get_const(min_level, "i"), sh._maybe_get_const(max_level, "i")
    size, level0 = sh._maybe_get_const(canonical_box_size, "i"), sh._maybe_get_const(canonical_level, "i")
    x0, y0, x1, y1 = (_column(g, boxes, i) for i in range(4))
    area = g.op("Max", g.op("Mul", g.op("Sub", x1, x0), g.op("Sub", y1, y0)), _const(g, 0.0))
    ratio = g.op("Add", g.op("Div", g.op("Sqrt", area), _const(g, float(size))), _const(g, 1e-8))
    log2 = g.op("Div", g.op("Log", ratio), _const(g, float(torch.log(torch.tensor(2.0)))))
    level = g.op("Floor", g.op("Add", log2, _const(g, float(level0))))
    level = g.op("Clip", level, _const(g, float(lo)), _const(g, float(hi)))
    return g.op("Sub", g.op("Cast", level, to_i=7), _const(g, lo, torch.int64))


def _hat_weights(g, src, size):
    """[N, L, size]: bilinear weights max(0, 1 - |src - j|) (src: [N, L])."""
    j = g.op("Cast", g.op("Range", _const(g, 0, torch.int64), size, _const(g, 1, torch.int64)), to_i=1)
    return g.op("Relu", g.op("Sub", _const(g, 1.0), g.op("Abs", g.op("Sub", _unsqueeze(g, src, [2]), j))))


def _paste_masks(g, masks, boxes, image_size, threshold):
    from torch.onnx import symbolic_helper as sh
    thr = sh._maybe_get_const(threshold, "f")
    masks, boxes = g.op("Cast", masks, to_i=1), g.op("Cast", boxes, to_i=1)
    shape = g.op("Shape", masks)
    mask_h, mask_w = _column(g, shape, 1, 0), _column(g, shape, 2, 0)
    height, width = _column(g, image_size, 0, 0), _column(g, image_size, 1, 0)
    tiny = _const(g, torch.finfo(torch.float32).tiny)

    def weights(lo, hi, extent, cells):
        pixels = g.op("Add", g.op("Cast", g.op("Range", _const(g, 0, torch.int64), extent,
                                                _const(g, 1, torch.int64)), to_i=1), _const(g, 0.5))
        span = g.op("Sub", hi, lo)
        src = g.op("Div", g.op("Sub", _unsqueeze(g, pixels, [0]), _unsqueeze(g, lo, [1])),
                   _unsqueeze(g, g.op("Max", span, tiny), [1]))
        src = g.op("Sub", g.op("Mul", src, g.op("Cast", cells, to_i=1)), _const(g, 0.5))
        alive = g.op("Cast", g.op("Greater", span, _const(g, 0.0)), to_i=1)
        return g.op("Mul", _hat_weights(g, src, cells), _unsqueeze(g, alive, [1, 2]))

    x0, y0, x1, y1 = (_column(g, boxes, i) for i in range(4))
    ax = weights(x0, x1, width, mask_w)  # [N, W, Mw]
    ay = weights(y0, y1, height, mask_h)  # [N, H, Mh]
    canvas = g.op("MatMul", g.op("MatMul", ay, masks), g.op("Transpose", ax, perm_i=[0, 2, 1]))
    return g.op("GreaterOrEqual", canvas, _const(g, thr)) if thr >= 0 else canvas


def _cumsum(g, x, dim, dtype=None):
    """torch's own cumsum symbolic feeds a bool tensor straight into CumSum, which
    onnxruntime rejects; torch sums bools as int64, so cast first."""
    from torch.onnx import symbolic_helper as sh
    from torch.onnx._internal.torchscript_exporter import _type_utils
    if _type_utils.JitScalarType.from_value(x, _type_utils.JitScalarType.UNDEFINED) == _type_utils.JitScalarType.BOOL:
        x = g.op("Cast", x, to_i=7)
    return g.op("CumSum", x, _const(g, sh._maybe_get_const(dim, "i"), torch.int64))


def _custom_domain(name):
    """An op in the custom ONNX domain ``com.dexport`` (torch.onnx would re-convert a node
    left in the ``dexport`` namespace, and fail)."""
    def symbolic(g, *args):
        return g.op(f"com.dexport::{name}", *args)
    return symbolic


def register_symbolics(opset: int = OPSET) -> None:
    """Symbolic functions for dexport's custom ops (TorchScript-based torch.onnx.export)."""
    table = {"nms": _nms, "batched_nms": _batched_nms, "roi_align": _roi_align,
             "decode_boxes": _decode_boxes, "clip_boxes": _clip_boxes,
             "assign_fpn_levels": _assign_fpn_levels, "paste_masks": _paste_masks,
             "heatmaps_to_keypoints": _custom_domain("heatmaps_to_keypoints")}
    for name, fn in table.items():
        torch.onnx.register_custom_op_symbolic(f"dexport::{name}", fn, opset)
    torch.onnx.register_custom_op_symbolic("aten::cumsum", _cumsum, opset)


# --------------------------------------------------------------------------- exporters

class _Batched(torch.nn.Module):
    """``forward_batched`` returning its dict's values as a tuple (in ``keys`` order)."""

    def __init__(self, model, keys):
        super().__init__()
        self.model, self.keys = model, list(keys)

    def forward(self, images, image_sizes, output_sizes):
        out = self.model.forward_batched(images, image_sizes, output_sizes)
        return tuple(out[k] for k in self.keys)


def export_dexport(model, example_list, simplify: bool) -> bytes:
    from dexport.driver import export
    with tempfile.TemporaryDirectory() as tmp:
        export(model, (example_list,), Path(tmp) / "a", opset=OPSET, simplify=simplify)
        return (Path(tmp) / "a" / "model.onnx").read_bytes()


def export_torch_onnx(model, keys, args, dynamo: bool) -> bytes:
    wrapper = _Batched(model, keys).eval()
    names = ["images", "image_sizes", "output_sizes"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        if dynamo:
            torch.onnx.export(wrapper, args, str(path), dynamo=True, opset_version=18, input_names=names,
                              output_names=list(keys), external_data=False)
        else:
            register_symbolics()
            axes = {"images": {0: "N", 2: "H", 3: "W"}, "image_sizes": {0: "N"}, "output_sizes": {0: "N"}}
            axes.update({k: {0: f"{k}_rows"} for k in keys})
            torch.onnx.export(wrapper, args, str(path), dynamo=False, opset_version=OPSET, input_names=names,
                              output_names=list(keys), dynamic_axes=axes)
        return path.read_bytes()


def onnxsim_bytes(model_bytes: bytes) -> bytes:
    import onnx
    import onnxsim
    simplified, _ = onnxsim.simplify(onnx.load_from_string(model_bytes), check_n=0)
    return simplified.SerializeToString()


def _failure(err: BaseException) -> str:
    """The error's first line and its root cause's (torch.onnx wraps the real reason,
    e.g. which node failed to translate, in a generic "next steps" message)."""
    def first_line(e):
        return re.sub(r"\x1b\[[0-9;]*m", "", f"{type(e).__name__}: {e}").strip().splitlines()[0][:300]
    root = err
    while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
        root = root.__cause__ or root.__context__
    return first_line(err) if root is err else f"{first_line(err)} <- {first_line(root)}"


def op_profile(model_bytes: bytes, feed: dict, threads: int, runs: int = 3, top: int = 8) -> list:
    """Share of onnxruntime's kernel time per ONNX op type over ``runs`` calls."""
    with tempfile.TemporaryDirectory() as tmp:
        session = ort_session(model_bytes, threads, profile_prefix=os.path.join(tmp, "ort"))
        for _ in range(runs + 1):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + e["dur"]
    whole = sum(totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [{"op": op, "share": t / whole, "ms_per_run": t / 1e3 / (runs + 1)} for op, t in ranked]


def compare_model(name: str, *, size: int = 512, threads: int = 2, runs: int = 10, warmup: int = 2,
                  exporters=EXPORTERS, profile: bool = True, weights="default", log=print) -> dict:
    """Every measurement for one zoo model (see the module doc); a JSON-ready dict."""
    from dexport.cli import sample_images
    from dexport.verification import compare_outputs
    from dexport.loader import detection_results
    from dexport.models import zoo
    from dexport.ir.dialects.detection_io import stack_inputs

    torch.set_num_threads(threads)
    model = zoo.get(name, weights=weights).eval()
    load_before = os.getloadavg()
    example = sample_images(1, size, seed=0)
    inputs = sample_images(1, size, seed=1)
    images, image_sizes, output_sizes, sizes = stack_inputs(inputs, "cpu")
    feed_arrays = [images.numpy(), image_sizes.numpy(), output_sizes.numpy()]
    with torch.no_grad():
        expected = model(inputs)
        keys = list(model.forward_batched(images, image_sizes, output_sizes))

    def timed(label, fn):
        log(f"  timing {label}")
        with torch.no_grad():
            return latency(fn, runs=runs, warmup=warmup)

    result = {"model": name, "size": size, "threads": threads, "runs": runs, "warmup": warmup,
              "baseline": "eager model(list)", "exporters": []}
    result["eager_list"] = timed("eager model(list)", lambda: model(inputs))
    result["eager_forward_batched"] = timed("eager forward_batched",
                                            lambda: model.forward_batched(images, image_sizes, output_sizes))
    floor, x = backbone_floor(model, images, image_sizes, format="onnx", opset=OPSET)
    floor_bytes, x = floor.files[floor.model_file], x.numpy()
    floor_session = ort_session(floor_bytes, threads)
    floor_feed = {floor_session.get_inputs()[0].name: x}
    result["floor"] = {**timed("floor", lambda: floor_session.run(None, floor_feed)),
                       "onnx_nodes": onnx_node_count(floor_bytes)}

    made: dict[str, tuple[bytes, float]] = {}
    for exporter in exporters:
        log(f"  exporting with {exporter}")
        entry = {"exporter": exporter}
        result["exporters"].append(entry)
        try:
            start = time.perf_counter()
            if exporter.startswith("dexport"):
                model_bytes = export_dexport(model, example, simplify=exporter.endswith("--simplify"))
            elif exporter == "torch.onnx + onnxsim":
                base = made.get("torch.onnx (TorchScript)")
                if base is None:
                    raise RuntimeError("torch.onnx (TorchScript) produced no model to simplify")
                model_bytes = onnxsim_bytes(base[0])
            else:
                ex_images, ex_sizes, ex_out, _ = stack_inputs(example, "cpu")
                model_bytes = export_torch_onnx(model, keys, (ex_images, ex_sizes, ex_out),
                                                dynamo=exporter.endswith("(dynamo)"))
            export_s = time.perf_counter() - start
            if exporter == "torch.onnx + onnxsim":
                export_s += made["torch.onnx (TorchScript)"][1]  # simplifying comes after exporting
            made[exporter] = (model_bytes, export_s)
            entry.update(export_s=export_s, onnx_nodes=onnx_node_count(model_bytes),
                         file_mb=len(model_bytes) / 1e6)
            session = ort_session(model_bytes, threads)
            feed = {i.name: a for i, a in zip(session.get_inputs(), feed_arrays)}
            raw = session.run(None, feed)
            outputs = {k: torch.from_numpy(v) for k, v in zip(keys, raw)}
            report = compare_outputs(expected, detection_results(outputs, sizes.outputs))
            entry.update(parity=report.summary(), parity_ok=report.ok)
            entry.update(timed(exporter, lambda: session.run(None, feed)))
            if profile and exporter == "dexport":
                entry["op_profile"] = op_profile(model_bytes, feed, threads)
                result["floor"]["op_profile"] = op_profile(floor_bytes, floor_feed, threads)
        except Exception as err:  # a failing exporter is a result, not a crash
            entry["error"] = _failure(err)
            entry["traceback_tail"] = traceback.format_exc().strip().splitlines()[-3:]
    from dexport.backends import get_backend
    result["machine"] = machine_info(load_before, get_backend("onnx").versions())
    return result


# --------------------------------------------------------------------------- results

def _ms(entry) -> str:
    return f"{entry['median_ms']:.0f} ({entry['p10_ms']:.0f}-{entry['p90_ms']:.0f})" if "median_ms" in entry else ""


def to_markdown(results: list[dict]) -> str:
    lines = ["# dexport vs torch.onnx.export", "", *_summary(results)]
    for r in results:
        m = r["machine"]
        eager = r["eager_list"]["median_ms"]
        floor = r["floor"]["median_ms"]
        lines += [f"## {r['model']} at {r['size']}x{r['size']}, {r['threads']} threads",
                  "",
                  f"Median (p10-p90) of {r['runs']} runs after {r['warmup']} warm-up. Baseline: eager "
                  f"`model(list)` {_ms(r['eager_list'])} ms; eager `forward_batched` "
                  f"{_ms(r['eager_forward_batched'])} ms; floor (backbone+FPN in onnxruntime, "
                  f"{r['floor']['onnx_nodes']} nodes) {_ms(r['floor'])} ms. Load average before "
                  f"{'/'.join(f'{v:.2f}' for v in m['loadavg_before'])}, after "
                  f"{'/'.join(f'{v:.2f}' for v in m['loadavg_after'])} on {m['cpu_count']} CPUs "
                  f"(torch {m['torch']}, onnxruntime {m['runtimes']['onnxruntime']}).",
                  "",
                  "| exporter | export s | ONNX nodes | MB | ORT ms | vs eager | vs floor | parity |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for e in r["exporters"]:
            if "median_ms" not in e:
                done = f"{e['export_s']:.1f} | {e['onnx_nodes']} | {e['file_mb']:.1f}" if "export_s" in e else " | | "
                reason = " / ".join([*e.get("traceback_tail", [])[:1], e["error"]])
                lines.append(f"| {e['exporter']} | {done} | failed | | | {_cell(reason)} |")
                continue
            parity = e["parity"]
            lines.append(f"| {e['exporter']} | {e['export_s']:.1f} | {e['onnx_nodes']} | {e['file_mb']:.1f} | "
                         f"{_ms(e)} | {e['median_ms'] / eager:.2f}x | {e['median_ms'] / floor:.2f}x | {parity} |")
        lines += ["", PARITY_NOTE, "", *_targets(r), *_profiles(r), ""]
    return "\n".join(lines) + "\n"


def _summary(results: list[dict]) -> list[str]:
    """One row per model: dexport's ratios against every baseline (the targets' columns)."""
    def ratio(num, den):
        return f"{num / den:.2f}x" if num is not None and den else "n/a"
    lines = ["| model | dexport ORT ms | vs eager | vs floor | vs torch.onnx + onnxsim | export s "
             "| vs torch.onnx export |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        by = {e["exporter"]: e for e in r["exporters"]}
        dx, sim, ts = by.get("dexport", {}), by.get("torch.onnx + onnxsim", {}), by.get("torch.onnx (TorchScript)", {})
        ms, export_s = dx.get("median_ms"), dx.get("export_s")
        lines.append(f"| {r['model']} | {f'{ms:.0f}' if ms is not None else 'failed'} "
                     f"| {ratio(ms, r['eager_list']['median_ms'])} | {ratio(ms, r['floor']['median_ms'])} "
                     f"| {ratio(ms, sim.get('median_ms'))} | {f'{export_s:.1f}' if export_s is not None else ''} "
                     f"| {ratio(export_s, ts.get('export_s'))} |")
    return [*lines, ""]


def _cell(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text).replace("|", "/")[:500]


def _targets(r: dict) -> list[str]:
    by = {e["exporter"]: e for e in r["exporters"]}
    dx, sim, ts = by.get("dexport", {}), by.get("torch.onnx + onnxsim", {}), by.get("torch.onnx (TorchScript)", {})
    rows = []

    def target(text, num, den, goal):
        if num is None or den is None:
            rows.append(f"| {text} | n/a | <= {goal} | not measured |")
        else:
            ratio = num / den
            rows.append(f"| {text} | {ratio:.2f} | <= {goal} | {'met' if ratio <= goal else 'missed'} |")
    target("dexport ORT / eager model(list)", dx.get("median_ms"), r["eager_list"]["median_ms"], 0.6)
    target("dexport ORT / backbone+FPN floor", dx.get("median_ms"), r["floor"]["median_ms"], 1.25)
    target("dexport ORT / torch.onnx + onnxsim ORT", dx.get("median_ms"), sim.get("median_ms"), 1.0)
    target("dexport export time / torch.onnx.export time", dx.get("export_s"), ts.get("export_s"), 0.5)
    return ["| target | measured | goal | |", "|---|---:|---|---|", *rows, ""]


def _profiles(r: dict) -> list[str]:
    dx = next((e for e in r["exporters"] if e["exporter"] == "dexport" and "op_profile" in e), None)
    if dx is None:
        return []
    lines = ["onnxruntime kernel time by op type (dexport artifact | floor):", ""]
    for label, prof in (("dexport", dx["op_profile"]), ("floor", r["floor"].get("op_profile", []))):
        lines.append(f"- {label}: " + ", ".join(f"{p['op']} {100 * p['share']:.0f}% ({p['ms_per_run']:.0f} ms)"
                                                 for p in prof))
    return lines


def write_results(results: list[dict], out_dir) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "export_compare.json", out / "export_compare.md"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path.write_text(to_markdown(results))
    return json_path, md_path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mask_rcnn_R50_FPN", help="comma-separated zoo names")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--exporters", default=",".join(EXPORTERS), help="comma-separated subset of: " + ", ".join(EXPORTERS))
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    exporters = [e.strip() for e in args.exporters.split(",") if e.strip()]
    results = []
    for name in args.models.split(","):
        print(f"{name}:", flush=True)
        results.append(compare_model(name, size=args.size, threads=args.threads, runs=args.runs,
                                     warmup=args.warmup, exporters=exporters,
                                     log=lambda s: print(s, flush=True)))
        write_results(results, args.out)  # after each model: a later crash keeps what was measured
    print(to_markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
