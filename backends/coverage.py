"""Op coverage of a backend: each ATen op of torch's core opset (overloads of
``torch.ops.aten`` tagged ``torch.Tag.core``) and each ATen op the backend's lowering
table names, classified as

* ``lowered``: the table has a lowering for it;
* ``decomposed``: no lowering, but ``decompose`` can rewrite it (an entry in torch's or
  dexport's decomposition tables, or a composite kernel that tracing expands);
* ``missing``: neither.

``decomposed`` says a decomposition exists, not that every op it produces is lowered:
that depends on the inputs' shapes, which a static table cannot know (the export's
unsupported-op report names what is left). ``dexport ops --format NAME`` prints this.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dexport.backends.base import get_backend

KINDS = ("lowered", "decomposed", "missing")


@dataclass(frozen=True)
class Coverage:
    backend: str
    ops: dict[str, str]  # op name -> kind

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
                lines.extend(f"  {op}" for op in self.names(kind))
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
    kinds = {}
    for name, op in sorted(ops.items()):
        if target.supports(name):
            kinds[name] = "lowered"
        elif has_decomposition(op):
            kinds[name] = "decomposed"
        else:
            kinds[name] = "missing"
    return Coverage(backend, kinds)
