"""Shared helpers for the ONNX backend tests: capture a small function, emit it,
and compare onnxruntime with the IR interpreter on other inputs."""
from __future__ import annotations

import numpy as np
import onnx
import torch

import dexport
from dexport.backends.onnx import emit_onnx, run_onnx
from dexport.ir.interpreter import run


class Fn(torch.nn.Module):
    """A function as a module (capture takes modules)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def capture_fn(fn, *args):
    with torch.no_grad():
        return dexport.capture(Fn(fn), args)


def assert_same(ref, out, atol: float, where: str) -> None:
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert out.shape == ref.shape, f"{where}: shape {out.shape} != {ref.shape}"
    assert out.dtype == ref.dtype, f"{where}: dtype {out.dtype} != {ref.dtype}"
    if ref.dtype.kind in "biu":
        np.testing.assert_array_equal(out, ref, err_msg=where)
    else:
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=atol, err_msg=where)


def compare(graph, model: onnx.ModelProto, args: tuple, atol: float = 1e-5) -> None:
    flat = graph.input_schema.flatten(args) if graph.input_schema is not None else list(args)
    ref = run(graph, flat)
    out = run_onnx(model, flat)
    assert len(out) == len(ref)
    for k, (r, o) in enumerate(zip(ref, out)):
        assert_same(r, o, atol, f"output {k}")


def check(fn, capture_args: tuple, *other_args: tuple, ops=(), opset: int = 17, atol: float = 1e-5):
    """Capture ``fn`` on ``capture_args``, require ``ops`` in the graph, emit it, and
    match the interpreter on the capture inputs and on every tuple in ``other_args``
    (different shapes: traced sizes must not have been baked in)."""
    graph = capture_fn(fn, *capture_args)
    present = {n.op for n in graph.nodes()}
    missing = [op for op in ops if op not in present]
    assert not missing, f"the capture has no {missing}; it has {sorted(present)}"
    model = emit_onnx(graph, opset=opset)
    for args in (capture_args, *other_args):
        compare(graph, model, args, atol)
    return graph, model
