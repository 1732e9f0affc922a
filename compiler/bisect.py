"""First-divergence bisection: which IR node does the emitted model get wrong?

When an exported model disagrees with PyTorch, the final outputs say only *that*
it is wrong. ``bisect`` says *where*: it has the backend emit the graph with the
value of every top-level IR node output exposed (``Backend.run_intermediates``),
runs it and the IR interpreter (the oracle) on the same inputs, and compares
the two node by node in IR order. The first node whose output differs beyond
tolerance is reported with its op, module scope, source line, the IR around it
and the error figures. Every node before it agreed, so its inputs agree too: the
report also runs the IR op itself on the emitted model's own input values, which
tells a wrong lowering (the op disagrees even on the same inputs) from a node
that only amplifies float noise (a tie broken the other way in sort/topk/NMS);
after mere noise the comparison goes on to find the first wrong lowering.
It keeps every top-level value of both runs in memory: meant for tiny models and
small inputs, which are enough to show a lowering bug.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from dexport.backends.base import DEFAULT_BACKEND, get_backend
from dexport.ir.errors import DexportError
from dexport.ir.graph import Graph, Node, Value
from dexport.passes.manager import abs_errors

DEFAULT_ATOL, DEFAULT_RTOL = 1e-4, 1e-4


@dataclass
class Divergence:
    """One IR node whose emitted output differs from the interpreter's."""
    node: Node
    output: int                # which output of the node
    value_name: str            # the backend's name for that value
    reason: str                # "values", "shape" or "dtype"
    expected_shape: tuple
    actual_shape: tuple
    expected_dtype: str
    actual_dtype: str
    max_abs: float
    max_rel: float             # max abs relative to the largest magnitude of the IR value
    mismatched: int            # elements beyond tolerance (all of them for a shape mismatch)
    numel: int
    input_max_abs: float = 0.0   # the largest difference over the node's compared inputs
    local_max_abs: float | None = None  # the IR op on the emitted model's own inputs vs its output
    local_ok: bool | None = None        # whether that is within tolerance (None: not re-run)
    context: str = ""
    label: str = ""                     # the backend, as messages name it

    @property
    def op(self) -> str:
        return self.node.op

    @property
    def scope(self) -> str:
        return self.node.meta.scope

    @property
    def source(self) -> str:
        return self.node.meta.source

    @property
    def verdict(self) -> str:
        if self.local_ok is None:
            return f"unknown (the op could not be re-run on the {self.label} model's own inputs)"
        if not self.local_ok:
            return (f"the {self.label} lowering of {self.op} is wrong: the IR op run on the {self.label} "
                    f"model's own inputs still differs from it by {self.local_max_abs:.3e}")
        return (f"float noise: the IR op run on the {self.label} model's own inputs agrees with it, so {self.op} "
                f"amplified input differences of {self.input_max_abs:.3e} (e.g. a tie broken the other way)")

    def describe(self, title: str) -> str:
        lines = [f"{title}: output {self.output} of {self.op}",
                 f"  scope:  {self.scope or '<top>'}",
                 f"  source: {self.source or '?'}",
                 f"  {self.label.lower()} value: {self.value_name}"]
        if self.reason == "shape":
            lines.append(f"  shape differs: IR {list(self.expected_shape)} vs {self.label} {list(self.actual_shape)}")
        elif self.reason == "dtype":
            lines.append(f"  dtype differs: IR {self.expected_dtype} vs {self.label} {self.actual_dtype}")
        else:
            lines.append(f"  {self.mismatched} of {self.numel} elements beyond tolerance: max abs "
                         f"{self.max_abs:.3e}, max rel {self.max_rel:.3e} (of the largest magnitude); "
                         f"shape {list(self.expected_shape)}, dtype {self.expected_dtype}")
        lines.append(f"  its inputs differ by at most {self.input_max_abs:.3e}")
        lines.append(f"  verdict: {self.verdict}")
        lines.append("  IR around it:")
        lines.extend("    " + line for line in self.context.splitlines())
        return "\n".join(lines)


@dataclass
class DivergenceReport:
    """What ``bisect`` found. ``divergence``: the first node (in IR order) whose emitted
    output is beyond tolerance, None when all agree. ``wrong_lowering``: the first
    divergent node that still disagrees when its op is run on the emitted model's own
    inputs (a lowering bug, not amplified noise); when the first divergence is only
    noise, comparison goes on past it to find one. ``label``: the backend's."""
    divergence: Divergence | None
    wrong_lowering: Divergence | None
    compared: int              # node outputs compared before the first divergence
    total: int                 # node outputs with an emitted value
    skipped: int               # top-level node outputs with none (constants, lists)
    atol: float
    rtol: float
    label: str = ""

    @property
    def ok(self) -> bool:
        return self.divergence is None

    def __str__(self) -> str:
        tol = f"atol={self.atol:g}, rtol={self.rtol:g} of each value's largest magnitude"
        if self.divergence is None:
            return (f"no divergence: all {self.total} node outputs of the {self.label} model match the IR "
                    f"interpreter ({tol}; {self.skipped} constants/lists have no {self.label} value)")
        parts = [self.divergence.describe(
            f"first divergence, after {self.compared} of {self.total} node outputs matched ({tol})")]
        if self.wrong_lowering is not None and self.wrong_lowering is not self.divergence:
            parts.append(self.wrong_lowering.describe("first wrong lowering further on"))
        elif self.divergence.local_ok:
            parts.append(f"no later node disagrees with {self.label} on its own inputs: every lowering "
                         "checked is right, the differences are float noise")
        return "\n".join(parts)


def bisect(graph: Graph, inputs: Sequence[Any], *, format: str = DEFAULT_BACKEND, atol: float = DEFAULT_ATOL,
           rtol: float = DEFAULT_RTOL, **options) -> DivergenceReport:
    """Compare the ``format`` backend's emission of ``graph`` (with its emission
    ``options``) with the IR interpreter on the flat ``inputs`` (one per graph input, as
    the graph's input schema flattens the model's arguments), value by value in IR
    order, and report the first divergent node. A backend that cannot expose its
    intermediate values is a DexportError.

    An element diverges when ``|emitted - ir| > atol + rtol * max|ir|`` (the largest
    magnitude of that value: float error scales with the values summed, not with each
    element). Shapes must be equal; IR scalars are compared with their 0-d tensors."""
    from dexport.ir.interpreter import run
    from dexport.ir.printer import format_context

    backend = get_backend(format)
    emitted = backend.run_intermediates(graph, inputs, backend.resolve_options(options))
    names, actual = emitted.names, emitted.values
    exposed = [v for node in graph.block.nodes for v in node.outputs if v in actual]
    skipped = sum(len(n.outputs) for n in graph.block.nodes) - len(exposed)

    expected: dict[Value, Any] = dict(zip(graph.inputs, inputs))  # the same on both sides
    found: list[Divergence] = []
    compared = 0

    def observe(node: Node, outputs) -> None:
        nonlocal compared
        if node.block is not graph.block:
            return
        for value, out in zip(node.outputs, outputs):
            # A copy: a later in-place kernel must not change what was observed.
            expected[value] = out.clone() if isinstance(out, torch.Tensor) else out
        for k, value in enumerate(node.outputs):
            if value not in actual:
                continue
            d = _compare(node, k, expected[value], actual[value], names[value], atol, rtol)
            if d is not None:
                d.label = backend.label
            if d is None:
                if not found:
                    compared += 1
                continue
            d.input_max_abs = _input_error(node, expected, actual)
            d.local_max_abs, d.local_ok = _local_check(d, expected, actual, atol, rtol)
            d.context = format_context(graph, node)
            found.append(d)
            if d.local_ok is False:
                raise _Stop
            return  # the other outputs of this node add nothing

    with torch.no_grad():
        try:
            run(graph, list(inputs), observe=observe)
        except _Stop:
            pass
    first = found[0] if found else None
    wrong = found[-1] if found and found[-1].local_ok is False else None
    return DivergenceReport(first, wrong, compared, len(exposed), skipped, atol, rtol, backend.label)


class _Stop(Exception):
    """Ends the interpreter run at the first wrong lowering."""


def _as_tensor(x: Any) -> torch.Tensor | None:
    """A value as a tensor for comparison (IR scalars may be 0-d tensors in the emitted
    model); None for values it holds no single tensor for."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.array(x))  # a copy; ascontiguousarray would make 0-d 1-D
    if isinstance(x, (bool, int, float)):
        return torch.tensor(x)
    return None


def _errors(e: torch.Tensor, a: torch.Tensor, atol: float, rtol: float) -> tuple[float, float, int]:
    """Max abs error, max abs error relative to ``max|e|``, and the count of elements
    beyond ``atol + rtol * max|e|`` (NaN equals NaN; infinities must be equal)."""
    if not e.numel() or (e.dtype == a.dtype and torch.equal(e, a)):
        return 0.0, 0.0, 0
    diff = abs_errors(e, a)
    e = e.double()
    scale = e.abs().nan_to_num(nan=0.0, posinf=0.0).max().item()
    max_abs = diff.max().item()
    bad = int((diff > atol + rtol * scale).sum())
    return max_abs, max_abs / scale if scale else (0.0 if max_abs == 0 else float("inf")), bad


def _compare(node: Node, k: int, out: Any, emitted: Any, name: str,
             atol: float, rtol: float) -> Divergence | None:
    e, a = _as_tensor(out), _as_tensor(emitted)
    if e is None:
        return None
    kinds = (e.dtype.is_floating_point, e.dtype == torch.bool), (a.dtype.is_floating_point, a.dtype == torch.bool)
    max_abs = max_rel = float("inf")
    mismatched = e.numel()
    if tuple(e.shape) != tuple(a.shape):
        reason = "shape"
    elif kinds[0] != kinds[1]:
        reason = "dtype"
    else:
        max_abs, max_rel, mismatched = _errors(e, a, atol, rtol)
        if not mismatched:
            return None
        reason = "values"
    return Divergence(node=node, output=k, value_name=name, reason=reason,
                      expected_shape=tuple(e.shape), actual_shape=tuple(a.shape),
                      expected_dtype=str(e.dtype).replace("torch.", ""),
                      actual_dtype=str(a.dtype).replace("torch.", ""),
                      max_abs=max_abs, max_rel=max_rel, mismatched=mismatched, numel=e.numel())


def _input_error(node: Node, expected: dict, actual: dict) -> float:
    worst = 0.0
    for v in node.inputs:
        if v in actual and v in expected:
            e, a = _as_tensor(expected[v]), _as_tensor(actual[v])
            if e is not None and e.shape == a.shape and e.numel():
                worst = max(worst, _errors(e, a, 0.0, 0.0)[0])
    return worst


def _local_check(d: Divergence, expected: dict, actual: dict, atol: float,
                 rtol: float) -> tuple[float | None, bool | None]:
    """Run the divergent node's IR op on the emitted model's values of its inputs (the
    interpreter's where it has none) and compare with its output: (max abs, within
    tolerance)."""
    from dexport.ir.interpreter import evaluate_node
    node = d.node
    if node.blocks:
        return None, None
    args = []
    for v in node.inputs:
        if v in actual:
            ref = expected.get(v)
            x = _as_tensor(actual[v])
            if not isinstance(ref, torch.Tensor):  # an IR scalar: back to a Python number
                x = x.item()
            elif x.dtype != ref.dtype:
                x = x.to(ref.dtype)
            args.append(x)
        elif v in expected:
            args.append(expected[v])
        else:
            return None, None
    try:
        with torch.no_grad():
            outs = evaluate_node(node, args)
    except DexportError:
        return None, None
    e, a = _as_tensor(outs[d.output]), _as_tensor(actual[node.outputs[d.output]])
    if e is None or e.shape != a.shape:
        return float("inf"), False
    max_abs, _, bad = _errors(e, a, atol, rtol)
    return max_abs, bad == 0


# --------------------------------------------------------------------------- models and artifacts

def capture_like_export(model: torch.nn.Module, example_inputs: tuple, *, method: str = "tracing",
                        batch: str | int = "dynamic", pipeline: str | None = None,
                        format: str = DEFAULT_BACKEND) -> Graph:
    """The graph ``dexport.export`` emits for ``model`` (``dexport.driver.build_graph``);
    ``pipeline`` may be an artifact manifest's full one (None: the ``format``'s default)."""
    from dexport.driver import build_graph, default_pipeline

    return build_graph(model, example_inputs, method=method, batch=batch,
                       pipeline=pipeline or default_pipeline(format))[0]


def flat_inputs(graph: Graph, model: torch.nn.Module, model_inputs: tuple) -> list:
    """``model_inputs`` (the model's own call arguments) as ``graph``'s flat inputs."""
    from dexport.driver import batched_inputs, io_kind_of
    if io_kind_of(model) == "detection":
        return list(batched_inputs(model_inputs))
    return graph.input_schema.flatten(model_inputs)


def bisect_model(model: torch.nn.Module, example_inputs: tuple, check_inputs: tuple, *,
                 method: str = "tracing", batch: str | int = "dynamic", pipeline: str | None = None,
                 format: str = DEFAULT_BACKEND, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
                 **options) -> DivergenceReport:
    """Capture ``model`` on ``example_inputs`` as export does and bisect its ``format``
    emission (with ``options``) on ``check_inputs`` (the model's own call arguments,
    best not those of the capture)."""
    graph = capture_like_export(model, example_inputs, method=method, batch=batch, pipeline=pipeline,
                                format=format)
    return bisect(graph, flat_inputs(graph, model, check_inputs), format=format, atol=atol, rtol=rtol,
                  **options)


def bisect_artifact(directory: str | os.PathLike, model: torch.nn.Module, check_inputs: tuple, *,
                    example_inputs: tuple | None = None, capture_size: int = 128,
                    atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL) -> DivergenceReport:
    """Bisect an artifact's model on ``check_inputs`` (the model's own call arguments).
    An artifact holds the emitted model, not the IR, so the eager ``model`` is
    re-captured with the manifest's method, batch, pipeline, format and options, on
    ``example_inputs`` or, for a detector, on synthetic images of ``capture_size``
    pixels (as many as a fixed batch has), as ``dexport export`` captures.
    What is bisected is the backend's emission with its values exposed, before any
    simplification (``--simplify``)."""
    from dexport.artifacts import read_manifest
    manifest = read_manifest(Path(directory))
    backend = get_backend(manifest.get("format"))
    if not backend.can_bisect:
        raise backend.cannot_bisect()
    batch = manifest.get("batch", "dynamic")
    if example_inputs is None:
        if manifest.get("io") != "detection":
            raise DexportError(f"{directory}: bisecting a non-detector needs the inputs it was captured with",
                               hint="pass example_inputs (a factory returns (model, example_inputs, checks))")
        from dexport import zoo
        data = zoo.shapes_dataset("val", num_images=1 if batch == "dynamic" else int(batch), seed=0,
                             image_size=capture_size)
        example_inputs = ([{"image": data[i]["image"]} for i in range(len(data))],)
    return bisect_model(model, example_inputs, check_inputs, method=manifest.get("method", "tracing"),
                        batch=batch, pipeline=manifest.get("pipeline"), format=backend.name,
                        atol=atol, rtol=rtol, **backend.options_from_manifest(manifest))


__all__ = ["DEFAULT_ATOL", "DEFAULT_RTOL", "Divergence", "DivergenceReport", "bisect", "bisect_artifact",
           "bisect_model", "capture_like_export", "flat_inputs"]
