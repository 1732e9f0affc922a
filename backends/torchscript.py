"""The TorchScript backend: IR graph -> Python source -> ``torch.jit.script`` ->
``model.pt``, which plain ``torch.jit.load`` runs (no dexport, torchvision or
detectron2 needed).

The artifact holds ``model.pt`` (the scripted module with its parameters as buffers)
and ``model.py``, the generated source it was compiled from, for reading (see
``dexport.backends.torchscript_emit`` for its form). ``forward`` takes the graph's
flat tensor inputs, named as the manifest names them (detectors: ``images``,
``image_sizes``, ``output_sizes``), and returns a ``Dict[str, Tensor]`` keyed by the
manifest's output names, in manifest order.

Lowerings: aten ops are called generically (``torch.ops.aten.<name>(...)``; ``supports``
accepts any functional aten op torch has), prim ops and ``dexport::*`` ops have entries
in ``LOWERINGS`` (``dexport.backends.torchscript_lowerings``), the latter calling the
TorchScript functions of ``dexport.backends.torchscript_detection``.

Scripting and saving run in a fresh ``python -I`` that imports only torch
(``dexport.backends.torchscript_compile``), which also reloads the saved model and
checks that no ``dexport::`` op is left in it, and makes ``model.pt`` byte-identical
across exports of the same model (see that module for how).
"""
from __future__ import annotations

import collections
import contextlib
import io
import json
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import torch

from dexport.backends.base import (Backend, Emission, Intermediates, LoweringTable, TensorIO, register_backend,
                                   unsupported_ops_error)
from dexport.backends.torchscript_emit import aten_schema, check_overloads, emit_source, identifier
from dexport.ir.errors import DexportError
from dexport.ir.graph import Graph, Value
from dexport.ir.types import ScalarType, TensorType

# prim and dexport lowerings; aten ops without an entry are emitted generically.
LOWERINGS = LoweringTable("torchscript", modules=("dexport.backends.torchscript_lowerings",))
lowering = LOWERINGS.register

MODEL_FILE, SOURCE_FILE = "model.pt", "model.py"


def supports(op: str) -> bool:
    """An op with a table entry, or a functional aten op torch has (in-place and out=
    forms are refused: ``functionalize`` has removed them before emission)."""
    if op in LOWERINGS:
        return True
    if not op.startswith("aten::"):
        return False
    schema = aten_schema(op)
    return schema is not None and not any(a.alias_info is not None and a.alias_info.is_write
                                          for a in schema.arguments)


# --------------------------------------------------------------------------- emission

def _io_identifiers(values: Sequence[Value], given: Sequence[str] | None, kind: str) -> list[str]:
    """Safe, unique identifiers for the graph's inputs or outputs: the given names (or
    the inputs' name hints), sanitised."""
    if given is not None and len(given) != len(values):
        raise DexportError(f"{len(given)} {kind} names for {len(values)} graph {kind}s",
                           hint=f"pass one name per flattened {kind}")
    names: list[str] = []
    for k, value in enumerate(values):
        base = given[k] if given is not None else (value.name_hint if kind == "input" else None)
        name = identifier(base, kind) if base else f"{kind}{k}"
        while name in names:
            name = f"{name}_{k}"
        names.append(name)
    return names


def _declared_dims(typ, name: str, static_ok: bool) -> list:
    """Dims as the manifest records them: a symbol where the IR has one, a number only
    where proven (not observed on example inputs), else a per-tensor symbol."""
    if not isinstance(typ, TensorType) or typ.shape is None:
        return []
    return [d if (isinstance(d, str) and d != "?") or (isinstance(d, int) and static_ok) else f"{name}_dim{k}"
            for k, d in enumerate(typ.shape)]


def _io(value: Value, name: str, static_ok: bool) -> TensorIO:
    typ = value.type
    if isinstance(typ, TensorType):  # the dtype is left out where the IR does not know it (If/Loop results)
        dtype = str(typ.dtype).removeprefix("torch.") if typ.dtype is not None else None
        return TensorIO(name, _declared_dims(typ, name, static_ok), dtype)
    if isinstance(typ, ScalarType) and typ.kind in ("int", "float", "bool"):
        return TensorIO(name, [], {"int": "int64", "float": "float64", "bool": "bool"}[typ.kind])
    raise DexportError(f"graph input/output {name!r} of type {typ} cannot be a TorchScript model's tensor",
                       hint="graph inputs/outputs are tensors or numbers: flatten structured values "
                            "with the graph's schemas and capture with example inputs")


@contextlib.contextmanager
def quiet_jit():
    """torch 2.13 deprecates torch.jit.script / save / load; the warning is about torch,
    not the user's model, so it is silenced around this backend's own calls only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
        yield


COMPILER = Path(__file__).with_name("torchscript_compile.py")


def compile_source(source: str, buffers: dict[str, torch.Tensor]) -> tuple[bytes, collections.Counter]:
    """``model.pt`` bytes of the generated module, and the aten overloads TorchScript
    resolved in its ``forward`` ({(op, overload): count}). Scripting, saving and a
    reload that looks for ``dexport::`` ops left in the model all run in a fresh
    ``python -I`` importing only torch (``torchscript_compile``; TorchScript reads a
    function's source through ``inspect``, so the source is a real file there)."""
    with tempfile.TemporaryDirectory(prefix="dexport-torchscript-") as tmp:
        (Path(tmp) / SOURCE_FILE).write_text(source, encoding="utf-8")
        torch.save(buffers, Path(tmp) / "buffers.pt")
        proc = subprocess.run([sys.executable, "-I", str(COMPILER), tmp], capture_output=True, text=True,
                              cwd=tmp, timeout=600)
        if proc.returncode != 0:
            unknown = [f"dexport::{op}" for op in re.findall(r"(?:dexport::|torch\.ops\.dexport\.)(\w+)", proc.stderr)]
            if unknown:
                raise DexportError(f"the TorchScript model calls {unknown[0]}, which plain torch cannot run",
                                   op=unknown[0], hint="give the op a TorchScript implementation in "
                                                       "dexport.backends.torchscript_detection (FUNCTIONS)")
            raise DexportError("torch.jit.script rejected the generated source",
                               context=proc.stderr.strip().rpartition("Error:")[2].strip()[-3000:],
                               hint="this is a bug in a TorchScript lowering; the context quotes the "
                                    "generated model.py line")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        model_bytes = (Path(tmp) / MODEL_FILE).read_bytes()
    if report["left"]:
        raise DexportError(f"the saved TorchScript model still calls {', '.join(report['left'])}, which plain "
                           f"torch cannot run", op=report["left"][0],
                           hint="give the op a TorchScript implementation in "
                                "dexport.backends.torchscript_detection (FUNCTIONS)")
    return model_bytes, collections.Counter({(k, o): n for k, o, n in report["overloads"]})


def load_module(model_bytes: bytes) -> torch.jit.ScriptModule:
    with quiet_jit():
        return torch.jit.load(io.BytesIO(model_bytes), map_location="cpu")


def build_module(graph: Graph, input_names: Sequence[str], output_names: Sequence[str],
                 expose: Sequence[Value] = ()):
    """(source, model.pt bytes) for ``graph`` (see ``emit_source``)."""
    missing = TORCHSCRIPT.check_support(graph)
    if missing:
        raise unsupported_ops_error(
            missing, "TorchScript lowering",
            hint="the 'decompose' pass rewrites ops torch can decompose; for the others, replace the op in "
                 "the model or register a lowering with @dexport.backends.torchscript.lowering('<op>')")
    from dexport.backends.torchscript_detection import FUNCTIONS, HELPERS
    source, buffers = emit_source(graph, table=LOWERINGS, functions=FUNCTIONS, helpers=HELPERS,
                                     input_names=input_names, output_names=output_names, expose=expose)
    model_bytes, overloads = compile_source(source, buffers)
    check_overloads(graph, overloads)
    return source, model_bytes


# --------------------------------------------------------------------------- running

class TorchScriptRunner:
    """A saved TorchScript model, loaded with ``torch.jit.load``: flat tensors in, the
    output dict's values in manifest order out. ``threads`` sets torch's intra-op
    thread count for the duration of each call only (``torch.set_num_threads`` is
    process-wide, so the previous count is restored after the call)."""

    def __init__(self, model_bytes: bytes, output_names: Sequence[str], *, threads: int | None = None):
        self.module = load_module(model_bytes)
        self.output_names = list(output_names)
        self.threads = threads

    def run_flat(self, flat_inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        previous = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.no_grad():
                out = self.module(*[torch.as_tensor(x) for x in flat_inputs])
        finally:
            if self.threads:
                torch.set_num_threads(previous)
        return [out[name] for name in self.output_names]


class TorchScriptBackend(Backend):
    """TorchScript (``model.pt`` + its source ``model.py``) run by ``torch.jit.load``."""
    name = "torchscript"
    label = "TorchScript"
    runtime = "torch.jit"
    decompose_target = "torchscript"  # TorchScript runs nearly every aten op: decompose rewrites only the rest
    table = LOWERINGS

    def supports(self, op: str) -> bool:
        return supports(op)

    def emit(self, graph: Graph, *, input_names=None, output_names=None, options) -> Emission:
        self.resolve_options(options)
        ins = _io_identifiers(graph.inputs, input_names, "input")
        outs = _io_identifiers(graph.outputs, output_names, "output")
        source, model_bytes = build_module(graph, ins, outs)
        static_ok = not graph.example_shapes
        return Emission({MODEL_FILE: model_bytes, SOURCE_FILE: source.encode("utf-8")}, MODEL_FILE,
                        [_io(v, n, static_ok) for v, n in zip(graph.inputs, ins)],
                        [_io(v, n, static_ok) for v, n in zip(graph.outputs, outs)])

    def load(self, read, manifest, *, threads=None):
        return TorchScriptRunner(read(manifest["model_file"]), [o["name"] for o in manifest["outputs"]],
                                 threads=threads)

    def describe(self, read, manifest) -> dict:
        module = load_module(read(manifest["model_file"]))
        return {"nodes": sum(1 for _ in module.forward.inlined_graph.nodes())}

    def run_intermediates(self, graph: Graph, flat_inputs, options) -> Intermediates:
        exposed = [v for node in graph.block.nodes for v in node.outputs
                   if isinstance(v.type, TensorType) or (isinstance(v.type, ScalarType)
                                                         and v.type.kind in ("int", "float", "bool"))]
        ins = _io_identifiers(graph.inputs, None, "input")
        outs = _io_identifiers(graph.outputs, None, "output")
        _, model_bytes = build_module(graph, ins, outs, expose=exposed)
        module = load_module(model_bytes)
        with torch.no_grad():
            result = module(*[torch.as_tensor(x) for x in flat_inputs])
        keys = [f"__v{k}" for k in range(len(exposed))]
        return Intermediates(dict(zip(exposed, keys)), {v: result[k] for v, k in zip(exposed, keys)})


TORCHSCRIPT = register_backend(TorchScriptBackend())

__all__ = ["LOWERINGS", "TORCHSCRIPT", "TorchScriptBackend", "TorchScriptRunner", "build_module",
           "compile_source", "lowering", "supports"]
