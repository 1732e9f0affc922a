"""The export driver: capture -> passes -> emit -> verification -> artifact.

Two ways a model's inputs and outputs reach the emitted graph:

* ``structured``: any model. The graph takes the flattened example inputs and
  returns the flattened outputs; the loader rebuilds both with the schemas.
  Non-tensor inputs and the number of list items are fixed at capture.
* ``detection``: a zoo-style detector (a model with ``forward_batched``). The
  graph takes one padded batch ``images f32[N,3,H,W]``, ``image_sizes i64[N,2]``
  and ``output_sizes i64[N,2]`` and returns concatenated detections with per-image
  ``counts`` (the format of ``dexport.ir.dialects.detection_io``), so one artifact serves any
  batch size and resolution. The loader does the padding and splits the results
  back into the model's own list of dicts.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from dexport.artifacts import check_output, finish_manifest, staging_directory
from dexport.backends.base import DEFAULT_BACKEND, Backend, dist_version, get_backend, load_backends
from dexport.capture import capture
from dexport.dump import dump_ir as write_ir_dump
from dexport.frontends.base import get_frontend
from dexport.ir.errors import DexportError
from dexport.ir.graph import Graph

IO_KINDS = ("structured", "detection")


@dataclass
class ExportResult:
    directory: Path
    manifest: dict
    graph: Graph
    verification: Any = None  # a dexport.verification.VerificationReport when check_inputs were given


def io_kind_of(model: torch.nn.Module) -> str:
    return "detection" if callable(getattr(model, "forward_batched", None)) else "structured"


def default_pipeline(format: str = DEFAULT_BACKEND) -> str:
    """In-place and out= ops rewritten functionally (so the cleanups and folding below
    see plain SSA values); cleanups; parameter-only arithmetic (frozen batch norm scales and shifts) computed
    once here instead of on every run; ops without a lowering in the ``format``'s backend
    rewritten through torch's decompositions (before the emitter gives up on them); the
    dead code that leaves."""
    target = get_backend(format).decompose_target
    decompose = f"decompose{{target={target}}}," if target else ""
    return f"functionalize,canonicalize,cse,fold-constants,infer-types,{decompose}dce"


def _versions(backend: Backend) -> dict:
    return {"dexport": dist_version("dexport"), "torch": dist_version("torch"), **backend.versions()}


# Probes only need other sizes, not big ones: a probe costs a full run of the model at
# its size, so probe images are the example scaled down to this longest side.
PROBE_SIDE = 128


def probe_batches(example: list[dict], batch: str | int) -> list[tuple]:
    """Two more inputs for differential capture, made from the example images resized:
    other batch sizes (unless the batch is fixed) and other heights and widths, each
    varied on its own so every size the trace baked in can be told apart. They also ask
    for results at another size ("height"/"width"), so sizes that follow the requested
    output size are not mistaken for the input's. Images are first scaled down to a
    longest side of ``PROBE_SIDE`` (capture cost grows with the image), unless that
    would make a probe's height or width equal the example's."""
    import torch.nn.functional as F

    n = len(example)
    counts = (n, n) if batch != "dynamic" else (n + 1, n + 2)

    def resized(count: int, scale: float, dh: int, dw: int) -> list[dict]:
        out = []
        for k in range(count):
            image = example[k % len(example)]["image"]
            h, w = (max(1, round(side * scale)) + d for side, d in zip(image.shape[-2:], (dh, dw)))
            out.append({"image": F.interpolate(image[None], size=(h, w), mode="bilinear",
                                               align_corners=False)[0],
                        "height": h + 24, "width": w - 8})
        return out

    def probes(scale: float) -> list[tuple]:
        return [(resized(counts[0], scale, 32, 64),), (resized(counts[1], scale, 64, 32),)]

    def padded_sizes(inputs: list[dict]) -> tuple:
        return tuple(batched_inputs((inputs,))[0].shape[-2:])

    longest = max(max(x["image"].shape[-2:]) for x in example)
    scaled = probes(min(1.0, PROBE_SIDE / longest))
    sizes = [padded_sizes(example)] + [padded_sizes(p[0]) for p in scaled]
    if all(len({s[axis] for s in sizes}) == len(sizes) for axis in (0, 1)):
        return scaled
    return probes(1.0)


def batched_inputs(model_inputs: tuple) -> tuple:
    """A detector's list-of-dicts call arguments as its batched graph's inputs
    (images, image_sizes, output_sizes)."""
    from dexport.ir.dialects.detection_io import stack_inputs
    return tuple(stack_inputs(model_inputs[0], "cpu")[:3])


def build_graph(model: torch.nn.Module, example_inputs: tuple, *, method: str = "tracing",
                batch: str | int = "dynamic", pipeline: str | None = None,
                dump_dir: str | os.PathLike | None = None, step=None) -> tuple[Graph, str]:
    """The graph an export emits, and the full pipeline that made it: a detector is
    captured through ``forward_batched`` on the example (and, for a frontend that
    needs them, two probe batches), and
    ``fix-batch-dim`` runs first (unless ``pipeline`` already starts with it, as the
    pipeline an artifact's manifest records does); any other model is captured as it
    is called. ``pipeline`` None: the default format's (``default_pipeline``)."""
    from dexport.passes import PassManager

    step = step or (lambda text: nullcontext())
    load_backends()  # registers every backend's decompose target, which passes cannot import
    pipeline = pipeline or default_pipeline()
    model.eval()
    detection = io_kind_of(model) == "detection"
    if batch != "dynamic" and (not detection or int(batch) != len(example_inputs[0])):
        raise DexportError(f"batch={batch!r} needs a detector captured on exactly that many images",
                           hint="pass that many example images, or batch='dynamic'")
    with torch.no_grad():
        if detection:
            # A frontend that bakes the example's sizes in is also captured on probe batches.
            probing = get_frontend(method).needs_probes
            probes = [batched_inputs(p) for p in probe_batches(example_inputs[0], batch)] if probing else None
            with step(f"capturing by {method}" + (f" (and on {len(probes)} probe batches and a content probe "
                                                  "to find size- and value-dependent code)" if probing else "")):
                graph = capture(model, batched_inputs(example_inputs), method=method,
                                inference_func="forward_batched", probe_inputs=probes)
            if not pipeline.startswith("fix-batch-dim"):  # a manifest's pipeline already has it
                pipeline = f"fix-batch-dim{{batch={batch}}}," + pipeline
        else:
            with step(f"capturing by {method}"):
                graph = capture(model, example_inputs, method=method)
    with step(f"running passes {pipeline!r}"):
        PassManager(pipeline, verify_each=True, dump_dir=dump_dir).run(graph)
    return graph, pipeline


def export(model: torch.nn.Module, example_inputs: tuple, output: str | os.PathLike, *,
           format: str = DEFAULT_BACKEND, method: str = "tracing", batch: str | int = "dynamic",
           pipeline: str | None = None, dump_ir: str | os.PathLike | None = None, overwrite: bool = False,
           check_inputs: Sequence[tuple] = (), tolerances=None, model_spec: str | None = None, progress=None,
           **options) -> ExportResult:
    """Export ``model`` (called as ``model(*example_inputs)``) into the artifact
    directory ``output``, written atomically, in ``format`` (a registered backend,
    ``dexport.backends.backend_names()``); ``options`` are that backend's emission
    options by name (``Backend.options``, recorded in the manifest). ``pipeline`` None:
    the format's ``default_pipeline``.

    ``check_inputs``: more input tuples, not used for capture, on which the artifact is
    compared with eager PyTorch by ``dexport.verification.verify`` (detections matched
    per image; ``tolerances``: a ``Tolerances``); the report goes into the manifest as
    ``verification`` and into the result.
    ``model_spec`` (``zoo:NAME`` or ``package.module:factory``) is recorded so that
    ``dexport verify`` can rebuild the eager model. For a detector, ``batch="dynamic"``
    makes one artifact for every batch size (differential capture on two probe batches,
    then ``fix-batch-dim``); an int fixes the batch to the example's size. ``progress`` is a
    ``dexport.cli.Progress``-like object with a ``step(text)`` context manager (None: silent)."""
    from dexport.loader import load_files

    backend = get_backend(format)
    options = backend.resolve_options(options)
    check_output(output, overwrite=overwrite, dump_dir=dump_ir)  # before any work, and checked again at the end
    step = progress.step if progress is not None else (lambda text: nullcontext())
    kind = io_kind_of(model)
    graph, pipeline = build_graph(model, example_inputs, method=method, batch=batch,
                                  pipeline=pipeline or default_pipeline(format),
                                  dump_dir=Path(dump_ir) / "passes" if dump_ir else None, step=step)
    with step(f"emitting {backend.summary(options)}"):
        input_names, output_names = _io_names(graph, kind)
        emission = backend.emit(graph, input_names=input_names, output_names=output_names, options=options)

    manifest = {
        "model": model_spec,
        "format": format, "method": method, "io": kind, "batch": batch,
        **backend.manifest_fields(options),
        "versions": _versions(backend), "pipeline": pipeline,
        "input_schema": graph.input_schema.to_json() if graph.input_schema else None,
        "output_schema": graph.output_schema.to_json() if graph.output_schema else None,
        **emission.manifest_fields(),
    }
    report = None
    if check_inputs:
        from dexport.verification import verify
        with step(f"verifying against eager on {len(check_inputs)} held-out input(s)"):
            runner = load_files(emission.files.__getitem__, manifest)
            report = verify(model, runner, check_inputs, tolerances=tolerances)
            manifest["verification"] = report.to_dict()

    with step(f"writing {output}"):
        with staging_directory(output, overwrite=overwrite) as stage:
            for name, data in sorted(emission.files.items()):
                (stage / name).parent.mkdir(parents=True, exist_ok=True)
                (stage / name).write_bytes(data)
            if dump_ir:
                write_ir_dump(graph, dump_ir)
            manifest = finish_manifest(stage, manifest)
    return ExportResult(Path(output), manifest, graph, report)


DETECTION_INPUTS = ("images", "image_sizes", "output_sizes")


def _io_names(graph: Graph, kind: str) -> tuple[list[str] | None, list[str] | None]:
    """Readable I/O names where the structure gives them: the batched detection inputs,
    and the keys of a dict of tensors returned by the model."""
    from dexport.ir.schema import DictSchema, TensorSchema
    inputs = list(DETECTION_INPUTS) if kind == "detection" else None
    out = graph.output_schema
    outputs = None
    if (isinstance(out, DictSchema) and all(isinstance(v, TensorSchema) for v in out.values)
            and all(isinstance(k, str) and k for k in out.keys)
            and not set(out.keys) & set(inputs or ())):
        outputs = list(out.keys)
    return inputs, outputs


__all__ = ["ExportResult", "batched_inputs", "build_graph", "default_pipeline", "export", "io_kind_of",
           "probe_batches"]
