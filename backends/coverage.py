"""Op coverage of a backend: each ATen op of torch's core opset (overloads of
``torch.ops.aten`` tagged ``torch.Tag.core``) and each ATen op the backend's lowering
table names, classified as

* ``lowered``: the table has a lowering for it;
* ``decomposed``: no lowering, and ``decompose`` verifiably rewrites it into lowered
  ops: on a sample call (from torch's OpInfo database, ``op_db``, whose float32 or
  int64 samples are run and every call of the op recorded), tracing the op with the
  decompositions ``decompose`` uses gives only ops the table lowers;
* ``missing``: neither: no decomposition, or one that ends in ops the table lacks
  (``prims::acos`` for ``aten::acos``), or one no OpInfo sample reaches, so it is
  unverified. ``Coverage.notes`` says which, per op.

A verified decomposition can still be refused for particular shapes (one that guards
on a size); the export's unsupported-op report names what is left. ``dexport ops
--format NAME`` prints this (the verification runs torch's samples: about 10 s).
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch

from dexport.backends.base import get_backend

KINDS = ("lowered", "decomposed", "missing")


@dataclass(frozen=True)
class Coverage:
    backend: str
    ops: dict[str, str]  # op name -> kind
    notes: dict[str, str] = field(default_factory=dict)  # missing op with a decomposition -> why

    def counts(self) -> dict[str, int]:
        return {kind: sum(1 for k in self.ops.values() if k == kind) for kind in KINDS}

    def names(self, kind: str) -> list[str]:
        return sorted(op for op, k in self.ops.items() if k == kind)

    def summary(self) -> str:
        counts = self.counts()
        return (f"{self.backend}: {len(self.ops)} ATen ops: "
                + ", ".join(f"{counts[k]} {k}" for k in KINDS))

    def format(self, markdown: bool = False) -> str:
        if not markdown:
            lines = [self.summary()]
            for kind in KINDS:
                lines.append(f"{kind} ({self.counts()[kind]}):")
                lines.extend(f"  {op}" + (f"  ({self.notes[op]})" if op in self.notes else "")
                             for op in self.names(kind))
            return "\n".join(lines)
        counts = self.counts()
        lines = [f"| {self.backend} | lowered | decomposed | missing | total |", "|---|---|---|---|---|",
                 f"| ATen ops | {counts['lowered']} | {counts['decomposed']} | {counts['missing']} | {len(self.ops)} |"]
        for kind in KINDS:
            lines += ["", f"**{kind}** ({counts[kind]}): " + ", ".join(f"`{op}`" for op in self.names(kind))]
        return "\n".join(lines)


def core_aten_ops() -> dict[str, torch._ops.OpOverload]:
    """Every overload of torch.ops.aten tagged core, by name (``aten::add.Tensor``);
    from the dispatcher's registry, as torch.ops.aten lists only the ops already used."""
    found = {}
    for name in torch._C._dispatch_get_all_op_names():
        op = _overload(name) if name.startswith("aten::") else None
        if op is not None and torch.Tag.core in op.tags:
            found[op.name()] = op
    return found


def _overload(name: str) -> torch._ops.OpOverload | None:
    base, _, overload = name.removeprefix("aten::").partition(".")
    packet = getattr(torch.ops.aten, base, None)
    try:
        return getattr(packet, overload or "default") if packet is not None else None
    except AttributeError:
        return None


def coverage(backend: str) -> Coverage:
    """The coverage of ``backend`` (a registered name such as ``onnx``)."""
    from dexport.passes.decompose import has_decomposition
    target = get_backend(backend)
    ops = dict(core_aten_ops())
    if target.table is not None:
        for name in target.table:
            op = _overload(name) if name.startswith("aten::") else None
            if op is not None:
                ops.setdefault(name, op)
    kinds, candidates = {}, {}
    for name, op in sorted(ops.items()):
        if target.supports(name):
            kinds[name] = "lowered"
        elif has_decomposition(op):
            candidates[name] = op
        else:
            kinds[name] = "missing"
    notes = {}
    lowered = frozenset(name for name, kind in kinds.items() if kind == "lowered")
    for name, why in verify_decompositions(target.supports, frozenset(candidates), lowered).items():
        kinds[name] = "decomposed" if why is None else "missing"
        if why is not None:
            notes[name] = why
    return Coverage(backend, dict(sorted(kinds.items())), notes)


@functools.lru_cache(maxsize=8)
def verify_decompositions(supports: Callable[[str], bool], candidates: frozenset[str],
                          lowered: frozenset[str] = frozenset()) -> dict[str, str | None]:
    """For each candidate op: None when its decomposition, traced on a recorded sample
    call, uses only ops ``supports`` accepts; else why not. (``lowered`` is part of the
    cache key only: the same target with other lowerings registered is verified anew.)"""
    from torch.fx.experimental.proxy_tensor import make_fx
    from dexport.passes.decompose import target_decompositions
    table = target_decompositions(supports)
    calls = _sample_calls(candidates)
    verdicts: dict[str, str | None] = {}
    for name in sorted(candidates):
        if name not in calls:
            verdicts[name] = "a decomposition exists, but no OpInfo sample reaches the op to verify it"
            continue
        args, kwargs = calls[name]
        op = _overload(name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gm = make_fx(lambda *a: op(*a, **kwargs), decomposition_table=table)(*args)
        except Exception as err:  # torch's tracing failing on the sample: unverified
            verdicts[name] = f"tracing its decomposition failed ({type(err).__name__})"
            continue
        used = {n.target.name() for n in gm.graph.nodes
                if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)}
        lacking = sorted(u for u in used if not supports(u))
        verdicts[name] = None if not lacking else "its decomposition needs " + ", ".join(lacking)
    return verdicts


@functools.lru_cache(maxsize=None)
def _sample_calls(names: frozenset[str]) -> dict[str, tuple[tuple, dict]]:
    """The first call of each op in ``names`` (its arguments) seen while running the
    samples of the OpInfos named like one of them (float32, else int64), at the
    dispatcher, so calls made inside composite ops count."""
    from torch.utils._python_dispatch import TorchDispatchMode
    try:
        from torch.testing._internal.common_methods_invocations import op_db
    except Exception:  # torch's test internals (and expecttest, a dependency for them) broken or absent
        return {}

    def base(name: str) -> str:
        return name.strip("_").replace("native_", "")
    bases = {base(n.removeprefix("aten::").split(".")[0]) for n in names}

    def related(info) -> bool:
        own = {base(info.name.split(".")[-1]), base(info.aten_name or "")} - {""}
        return any(a in b or b in a for a in own for b in bases)

    calls: dict[str, tuple[tuple, dict]] = {}

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func.name() in names and func.name() not in calls:
                calls[func.name()] = (args, kwargs)
            return func(*args, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for info in filter(related, op_db):
            supported = info.supported_dtypes("cpu")
            dtype = next((d for d in (torch.float32, torch.int64) if d in supported), None)
            if dtype is None:
                continue
            try:
                for k, sample in enumerate(info.sample_inputs("cpu", dtype)):
                    if k == SAMPLES_PER_OPINFO:
                        break
                    with torch.no_grad(), Record():
                        info.op(sample.input, *sample.args, **sample.kwargs)
            except Exception:  # a sample eager rejects: the other OpInfos still count
                continue
    return calls


SAMPLES_PER_OPINFO = 4  # enough to reach each op's common overload; keeps `dexport ops` quick
