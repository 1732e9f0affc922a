"""The backend interface and the backend registry.

A backend turns a backend-ready IR graph into artifact files and runs them again:

* ``name``: the ``--format`` value and the manifest's ``format``; ``label`` is how
  messages call it ("ONNX"), ``runtime`` what runs its artifacts ("onnxruntime");
* ``table``: its ``LoweringTable`` (op -> lowering, data that may inherit another
  table); ``supports(op)`` / ``check_support(graph)`` read it;
* ``decompose_target``: the name ``decompose{target=...}`` uses for it (registered
  with the pass when the backend is), so ops it lacks are decomposed before emission;
* ``options``: its emission options (``Option``), given by name to ``dexport.export``
  and as ``--<name>`` flags; ``manifest_fields`` / ``options_from_manifest`` record
  them in an artifact's manifest and read them back;
* ``emit(graph, ...) -> Emission``: the files (name -> bytes) plus the I/O description
  (input/output names and dims) the manifest stores;
* ``load(read, manifest) -> Runner``: ``run_flat(list[Tensor]) -> list[Tensor]`` over the
  artifact's files, read by name through ``read``;
* optional: ``run_intermediates`` (every top-level IR value as the backend computes it,
  for ``dexport.bisect``); a backend without it raises a DexportError saying so.

The driver, loader, verification, bisect, bench and ``--check`` are written against
this class only. Built-in backends register themselves when their module is imported;
the registry imports them on first use, so ``import dexport`` loads none.
"""
from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Protocol, Sequence

import torch

from dexport.ir.errors import DexportError, UnsupportedOpsError
from dexport.ir.graph import Graph, Value
from dexport.ir.registry import Registry

# --------------------------------------------------------------------------- lowering tables


class LoweringTable:
    """Lowerings by op name, as data: ``entries`` of its own, and an optional ``parent``
    whose entries it inherits (an own entry overrides the parent's). ``modules`` are
    imported on first lookup (they register entries, and import the backend that owns
    the table, so they cannot be imported before it). A caffe2-flavoured ONNX table is
    ``LoweringTable("caffe2", parent=onnx.LOWERINGS, entries={...caffe2 ops...})``.

    Reads like a mapping (``op in table``, ``table[op]``, iteration over every covered
    op); assignment and deletion change this table's own entries only."""

    def __init__(self, name: str, parent: LoweringTable | None = None,
                 entries: Mapping[str, Callable] | None = None, modules: Sequence[str] = ()):
        self.name, self.parent = name, parent
        self.entries: dict[str, Callable] = dict(entries or {})
        self.modules = tuple(modules)
        self._loaded = not self.modules

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True  # first: the modules register into this table while importing
            for module in self.modules:
                importlib.import_module(module)

    def register(self, *ops: str) -> Callable[[Callable], Callable]:
        """Decorator: ``fn`` becomes this table's lowering of every op in ``ops``."""
        def add(fn: Callable) -> Callable:
            for op in ops:
                if op in self.entries:
                    old = self.entries[op]
                    raise DexportError(f"op {op!r} already has a lowering in the {self.name!r} table "
                                       f"({old.__module__}.{old.__name__})",
                                       op=op, hint="remove one of the two registrations")
                self.entries[op] = fn
            return fn
        return add

    def lookup(self, op: str) -> Callable | None:
        """The lowering of ``op``: this table's own, else the parent's (recursively)."""
        self._load()
        fn = self.entries.get(op)
        if fn is None and self.parent is not None:
            return self.parent.lookup(op)
        return fn

    def ops(self) -> list[str]:
        """Every op this table covers, inherited ones included, sorted."""
        self._load()
        inherited = self.parent.ops() if self.parent is not None else []
        return sorted(set(inherited) | set(self.entries))

    def own_ops(self) -> list[str]:
        self._load()
        return sorted(self.entries)

    def get(self, op: str, default: Callable | None = None) -> Callable | None:
        fn = self.lookup(op)
        return default if fn is None else fn

    def __contains__(self, op: object) -> bool:
        return isinstance(op, str) and self.lookup(op) is not None

    def __getitem__(self, op: str) -> Callable:
        fn = self.lookup(op)
        if fn is None:
            raise KeyError(op)
        return fn

    def __setitem__(self, op: str, fn: Callable) -> None:
        self._load()
        self.entries[op] = fn

    def __delitem__(self, op: str) -> None:
        self._load()
        del self.entries[op]

    def __iter__(self) -> Iterator[str]:
        return iter(self.ops())

    def __len__(self) -> int:
        return len(self.ops())

    def __repr__(self) -> str:
        parent = f", parent={self.parent.name!r}" if self.parent is not None else ""
        return f"LoweringTable({self.name!r}{parent}, {len(self.entries)} own entries)"


# --------------------------------------------------------------------------- what a backend hands back

class MissingOp(NamedTuple):
    """An op without a lowering: how often it occurs and each distinct (scope, source)."""
    op: str
    count: int
    places: list[tuple[str, str]]


def missing_ops(graph: Graph, supports: Callable[[str], bool]) -> list[MissingOp]:
    """Every op of ``graph`` (nested blocks included) that ``supports`` rejects, sorted by
    name, each distinct place once in graph order."""
    counts: dict[str, int] = {}
    places: dict[str, dict[tuple[str, str], None]] = {}
    for node in graph.nodes():
        if supports(node.op):
            continue
        counts[node.op] = counts.get(node.op, 0) + 1
        places.setdefault(node.op, {})[(node.meta.scope, node.meta.source)] = None
    return [MissingOp(op, counts[op], list(places[op])) for op in sorted(counts)]


def unsupported_ops_error(missing: Sequence[MissingOp], lowering: str, hint: str,
                          shown: int = 3) -> UnsupportedOpsError:
    """One error listing every op in ``missing``, each with its count and first places;
    ``lowering`` names what they lack (``ONNX lowering (opset 17)``)."""
    lines = []
    for op, count, where in missing:
        lines.append(f"{op}  x{count}")
        for scope, source in where[:shown]:
            lines.append(f"    {scope or '<top level>'}" + (f" @ {source}" if source else ""))
        if len(where) > shown:
            lines.append(f"    ... and {len(where) - shown} more places")
    return UnsupportedOpsError(f"{len(missing)} op(s) have no {lowering}: {', '.join(m.op for m in missing)}",
                               context="\n".join(lines), hint=hint)


@dataclass(frozen=True)
class TensorIO:
    """One graph input or output as the emitted model declares it: its name and dims
    (an int where static, a symbol such as ``N`` where not) and, where the backend
    declares it, its torch dtype name (``float32``), which the loader checks inputs against."""
    name: str
    shape: list
    dtype: str | None = None

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape),
                **({"dtype": self.dtype} if self.dtype else {})}


@dataclass
class Emission:
    """What ``Backend.emit`` made: ``files`` (artifact-relative name -> bytes),
    ``model_file`` (the main one, in ``files``) and the I/O description."""
    files: dict[str, bytes]
    model_file: str
    inputs: list[TensorIO]
    outputs: list[TensorIO]

    def manifest_fields(self) -> dict:
        """The manifest entries every artifact has, whatever the backend."""
        return {"model_file": self.model_file, "inputs": [i.to_json() for i in self.inputs],
                "outputs": [o.to_json() for o in self.outputs]}


class Runner(Protocol):
    """An emitted model, ready to run: flat tensors in, flat tensors out."""

    def run_flat(self, flat_inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]: ...


FileReader = Callable[[str], bytes]


@dataclass
class Intermediates:
    """Every top-level IR value the backend's model computes: ``names`` (IR value ->
    the backend's name for it) and ``values`` (IR value -> its value, array or tensor)."""
    names: dict[Value, str]
    values: dict[Value, Any]


@dataclass(frozen=True)
class Option:
    """An emission option: given to ``dexport.export`` by ``name``, on the command line
    as ``--name`` (a bool default makes it a flag)."""
    name: str
    default: Any
    help: str


# --------------------------------------------------------------------------- the interface

class Backend:
    """Base class of every backend (see the module doc). Subclasses set the class
    attributes and implement ``emit`` and ``load``."""
    name: str = ""
    label: str = ""
    runtime: str = ""
    decompose_target: str | None = None
    table: LoweringTable | None = None
    options: tuple[Option, ...] = ()
    dists: tuple[str, ...] = ()  # distributions whose versions the manifest records

    def supports(self, op: str) -> bool:
        return self.table is not None and op in self.table

    def check_support(self, graph: Graph) -> list[MissingOp]:
        return missing_ops(graph, self.supports)

    # -- options ---------------------------------------------------------------------------
    def resolve_options(self, given: Mapping[str, Any]) -> dict:
        """``given`` completed with the defaults; an option this backend lacks is an error."""
        known = {o.name: o.default for o in self.options}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise DexportError(f"format {self.name!r} has no option {', '.join(map(repr, unknown))}",
                               hint=f"its options: {', '.join(known) or 'none'}; or choose another --format")
        return {**known, **given}

    def manifest_fields(self, options: Mapping[str, Any]) -> dict:
        """How an artifact's manifest records ``options`` (read back by ``options_from_manifest``)."""
        return {"options": dict(options)} if options else {}

    def options_from_manifest(self, manifest: Mapping) -> dict:
        return self.resolve_options(manifest.get("options", {}))

    def summary(self, options: Mapping[str, Any]) -> str:
        """The backend and its options in a progress line, e.g. ``ONNX (opset 17)``."""
        return self.label

    # -- the work --------------------------------------------------------------------------
    def emit(self, graph: Graph, *, input_names: Sequence[str] | None = None,
             output_names: Sequence[str] | None = None, options: Mapping[str, Any]) -> Emission:
        raise NotImplementedError

    def load(self, read: FileReader, manifest: Mapping, *, threads: int | None = None) -> Runner:
        raise NotImplementedError

    def describe(self, read: FileReader, manifest: Mapping) -> dict:
        """Facts about an emitted model for reports, such as ``{"nodes": 1441}``; its
        files are read by name through ``read``, as ``load`` reads them."""
        return {}

    def run_intermediates(self, graph: Graph, flat_inputs: Sequence[Any],
                          options: Mapping[str, Any]) -> Intermediates:
        """Emit ``graph`` with its top-level values exposed and run it on ``flat_inputs``
        (what ``dexport.bisect`` compares with the IR interpreter)."""
        raise self.cannot_bisect()

    def cannot_bisect(self) -> DexportError:
        able = [b.name for b in backends() if b.can_bisect]
        return DexportError(f"format {self.name!r} cannot expose intermediate values, so it cannot be bisected",
                            hint=f"re-export with a format that can ({', '.join(able) or 'none registered'}) "
                                 f"and bisect that")

    @property
    def can_bisect(self) -> bool:
        return type(self).run_intermediates is not Backend.run_intermediates

    def versions(self) -> dict[str, str]:
        return {d: dist_version(d) for d in self.dists}

    def __repr__(self) -> str:
        return f"<backend {self.name}>"


def dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


# --------------------------------------------------------------------------- the registry

DEFAULT_BACKEND = "onnx"
# Backends shipped with dexport register themselves when imported, on first use of the registry.
_BACKENDS: Registry[Backend] = Registry(("dexport.backends.onnx", "dexport.backends.torchscript"), unknown="format {name!r} is not available")


def register_backend(backend: Backend) -> Backend:
    """Make ``backend`` available as ``--format backend.name`` (and its decompose target
    to ``decompose{target=...}``). Registering a name again replaces it."""
    from dexport.passes.decompose import register_target
    _BACKENDS.register(backend.name, backend)
    if backend.decompose_target:
        register_target(backend.decompose_target, backend.supports)
    return backend


def unregister_backend(name: str) -> None:
    _BACKENDS.unregister(name)


def backend_names() -> list[str]:
    return _BACKENDS.names()


def backends() -> list[Backend]:
    return _BACKENDS.entries()


def builtin_backends() -> list[Backend]:
    """The backends dexport ships (not ones registered by users or tests)."""
    return _BACKENDS.builtins()


def get_backend(name: str) -> Backend:
    return _BACKENDS.get(name)


def load_backends() -> None:
    """Register every built-in backend (and with it their decompose targets) before a
    pipeline that may name one runs."""
    _BACKENDS.load_builtins()


__all__ = ["DEFAULT_BACKEND", "Backend", "Emission", "FileReader", "Intermediates", "LoweringTable",
           "MissingOp", "Option", "Runner", "TensorIO", "backend_names", "backends", "builtin_backends",
           "dist_version", "get_backend", "load_backends", "missing_ops", "register_backend",
           "unregister_backend", "unsupported_ops_error"]
