"""Running emitted ONNX models in onnxruntime (CPU, no custom-op library): the ONNX
backend's runner, and the exposed-values run ``dexport.bisect`` compares."""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import onnx
import torch
from onnx import helper

from dexport.ir.errors import DexportError


def ort_session(model: bytes | str | os.PathLike, threads: int | None = None, *,
                profile_prefix: str | None = None):
    """A CPU onnxruntime session; ``threads`` fixes the intra-op thread count (one
    inter-op thread, sequential execution), so timings compare with torch's."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    source = model if isinstance(model, bytes) else str(model)
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().contiguous().numpy()
    return np.asarray(x)


class OnnxRunner:
    """An ONNX model in an onnxruntime session: flat tensors in, flat tensors out."""

    def __init__(self, model_bytes: bytes, *, threads: int | None = None):
        self.session = ort_session(model_bytes, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run_flat(self, flat_inputs: Sequence[Any]) -> list[torch.Tensor]:
        feed = {name: to_numpy(x) for name, x in zip(self.input_names, flat_inputs)}
        # np.require keeps 0-d outputs 0-d (np.ascontiguousarray would make them [1]).
        return [torch.from_numpy(np.require(o, requirements="C")) for o in self.session.run(None, feed)]


def node_count(model_bytes: bytes) -> int:
    return len(onnx.load_from_string(model_bytes).graph.node)


def run_exposed(model: onnx.ModelProto, exposed: Sequence[str], inputs: Sequence[Any]) -> list[np.ndarray]:
    """Run ``model`` with every name in ``exposed`` as an extra output (each through an
    Identity, so graph inputs, initializers and existing outputs are exposed alike)."""
    # Element types only: inferred shapes would be declarations ORT checks for nothing.
    inferred = onnx.shape_inference.infer_shapes(model).graph
    elem = {v.name: v.type.tensor_type.elem_type for v in (*inferred.value_info, *model.graph.input,
                                                            *model.graph.output)}
    elem.update({t.name: t.data_type for t in model.graph.initializer})
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    taken = ({n for node in probe.graph.node for n in node.output} | {v.name for v in probe.graph.input}
             | {t.name for t in probe.graph.initializer})
    outs = []
    for k, name in enumerate(exposed):
        out = f"bisect_{k}"
        while out in taken:
            out += "_"
        probe.graph.node.append(helper.make_node("Identity", [name], [out], name=f"bisect_Identity_{k}"))
        info = onnx.ValueInfoProto()
        info.name = out
        if elem.get(name):
            info.type.CopyFrom(helper.make_tensor_type_proto(elem[name], None))
        probe.graph.output.append(info)
        outs.append(out)
    try:
        session = ort_session(probe.SerializeToString())
        feed = {info.name: to_numpy(x) for info, x in zip(session.get_inputs(), inputs)}
        return session.run(outs, feed)
    except Exception as err:  # onnxruntime raises its own exception types, all of them fatal here
        raise DexportError(f"onnxruntime cannot run the emitted model, so there is nothing to compare: {err}",
                           hint="the failing ONNX node is named '<module scope>/<OpType>_<k>'; its lowering "
                                "emits a graph that fails at run time on these inputs") from None
