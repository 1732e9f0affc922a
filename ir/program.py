"""Program: named graphs with an entry point.

A program holds the device graph (the entry, usually ``"main"``) and, where a pass
has cut it out, a host graph that post-processes the entry's results. Convention:

* ``program(*inputs)`` runs the entry graph on the model's structured inputs
  (flattened by the entry's ``input_schema``). Without a host graph its flat
  outputs are rebuilt by the entry's ``output_schema``, exactly as ``graph(*inputs)``.
* With a host graph, the host takes the entry's flat outputs, in order, as its
  inputs (so it has as many inputs as the entry has outputs), and the host's
  ``output_schema`` rebuilds the model's structured result.
* Other graphs may be held (e.g. a second device graph); only entry and host run.
* The graphs share one parameter namespace: a ``prim::Param`` name means the same
  tensor in every graph of the program.

Text form: a header line naming the entry (and the host), then each graph in
insertion order after a ``#! graph NAME`` line, printed by the graph printer::

    #! program entry=main host=postprocess
    #! graph main
    graph(%x: f32[N,3,H,W]) {
      ...
    }
    #! graph postprocess
    graph(%boxes: f32[n0,4], ...) {
      ...
    }

``parse_program(text)`` reads it back so that ``str(parse_program(text)) == text``.
"""
from __future__ import annotations

import os
import re
from typing import Any, Iterator

import torch

from dexport.ir.errors import DexportError, IRParseError, VerificationError
from dexport.ir.graph import PARAM, Graph

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_HEADER = re.compile(r"#! program entry=(\S+)(?: host=(\S+))?")
_SECTION = re.compile(r"#! graph (\S+)")


class Program:
    """Named graphs in insertion order, one of them the entry and optionally one the host."""

    def __init__(self, graphs: dict[str, Graph] | None = None, *, entry: str = "main",
                 host: str | None = None):
        self.graphs: dict[str, Graph] = {}
        for name, graph in (graphs or {}).items():
            self.add(name, graph)
        self.entry = entry
        self.host = host

    def add(self, name: str, graph: Graph) -> Graph:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise DexportError(f"bad graph name {name!r} for a program",
                               hint="name graphs like identifiers: letters, digits, '_', '.', '-'")
        if name in self.graphs:
            raise DexportError(f"the program already has a graph named {name!r}",
                               hint="pick another name, or replace program.graphs[name]")
        self.graphs[name] = graph
        return graph

    def __getitem__(self, name: str) -> Graph:
        try:
            return self.graphs[name]
        except KeyError:
            raise DexportError(f"the program has no graph {name!r}",
                               hint=f"its graphs: {', '.join(self.graphs) or 'none'}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.graphs)

    def __len__(self) -> int:
        return len(self.graphs)

    @property
    def main(self) -> Graph:
        """The entry graph."""
        return self[self.entry]

    @property
    def host_graph(self) -> Graph | None:
        return None if self.host is None else self[self.host]

    def params(self) -> dict[str, torch.Tensor]:
        """Every tensor a ``prim::Param`` of some graph reads, by name, in first-read order:
        what a caller must store to load the program again."""
        out: dict[str, torch.Tensor] = {}
        for graph in self.graphs.values():
            for node in graph.nodes():
                if node.op == PARAM and node.attrs["name"] in graph.params:
                    out.setdefault(node.attrs["name"], graph.params[node.attrs["name"]])
        return out

    # -- checking, running -------------------------------------------------------------
    def verify(self, stage: str = "captured") -> None:
        """The verifier on every graph (at ``stage``), then the program's own rules:
        the entry and host exist, and the host takes what the entry returns.
        ``dexport.ir.verify(program)`` does the same."""
        from dexport.ir.verifier import fits, verify
        if self.entry not in self.graphs:
            raise VerificationError(f"program: the entry graph {self.entry!r} is missing",
                                    hint=f"add it, or set entry to one of: {', '.join(self.graphs) or 'none'}")
        if self.host is not None and self.host not in self.graphs:
            raise VerificationError(f"program: the host graph {self.host!r} is missing",
                                    hint="add it, or set host to None")
        for name, graph in self.graphs.items():
            try:
                verify(graph, stage)
            except VerificationError as e:
                raise VerificationError(f"program graph {name!r}: {e.what}", op=e.op, scope=e.scope,
                                        source=e.source, hint=e.hint, context=e.context) from None
        host = self.host_graph
        if host is not None:
            outs, ins = self.main.outputs, host.inputs
            if len(outs) != len(ins):
                raise VerificationError(
                    f"program: the host graph {self.host!r} takes {len(ins)} inputs, the entry "
                    f"{self.entry!r} returns {len(outs)}",
                    hint="the host graph takes the entry's flat outputs, one input each, in order")
            for k, (out, param) in enumerate(zip(outs, ins)):
                if not fits(out.type, param.type):
                    raise VerificationError(
                        f"program: output {k} of {self.entry!r} is {out.type}, but input {k} of the "
                        f"host graph {self.host!r} is {param.type}",
                        hint="give the host graph's inputs the types of the entry's outputs")

    def __call__(self, *inputs) -> Any:
        """Run the entry graph on structured inputs, then the host graph on its flat
        outputs when there is one; see the module docstring."""
        from dexport.ir.interpreter import run
        main = self.main
        flat = list(inputs) if main.input_schema is None else main.input_schema.flatten(inputs)
        outputs = run(main, flat)
        last = main
        host = self.host_graph
        if host is not None:
            outputs = run(host, outputs)
            last = host
        if last.output_schema is not None:
            return last.output_schema.rebuild(outputs)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    # -- text --------------------------------------------------------------------------
    def __str__(self) -> str:
        from dexport.ir.printer import print_graph
        header = f"#! program entry={self.entry}" + (f" host={self.host}" if self.host else "")
        parts = [header + "\n"]
        for name, graph in self.graphs.items():
            parts.append(f"#! graph {name}\n")
            parts.append(print_graph(graph))
        return "".join(parts)

    def save(self, path: str | os.PathLike) -> None:
        """Write the text form to ``path`` (parameters are not in it: store
        ``program.params()`` with the artifact and pass them to ``load_program``)."""
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(str(self))

    def __repr__(self) -> str:
        return f"<Program entry={self.entry} host={self.host} graphs={list(self.graphs)}>"


def parse_program(text: str, params: dict[str, torch.Tensor] | None = None) -> Program:
    """Build a program from its text form. ``params`` (name -> tensor, one namespace
    for the whole program) fills each graph's ``params`` with the tensors it reads."""
    from dexport.ir.parser import parse
    lines = text.split("\n")
    first = _HEADER.fullmatch(lines[0]) if lines else None
    if first is None:
        raise IRParseError("program text line 1: expected '#! program entry=NAME [host=NAME]'",
                           context=lines[0] if lines else "",
                           hint="str(program) shows the form parse_program reads")
    entry, host = first.group(1), first.group(2)
    starts = [i for i, line in enumerate(lines) if _SECTION.fullmatch(line)]
    if not starts or starts[0] != 1:
        raise IRParseError("program text line 2: expected '#! graph NAME'",
                           context=lines[1] if len(lines) > 1 else "",
                           hint="each graph's text follows a '#! graph NAME' line")
    program = Program(entry=entry, host=host)
    for k, start in enumerate(starts):
        name = _SECTION.fullmatch(lines[start]).group(1)
        end = starts[k + 1] if k + 1 < len(starts) else len(lines)
        body = "\n".join(lines[start + 1:end])
        if k + 1 < len(starts):
            body += "\n"
        try:
            graph = parse(body, params)
        except IRParseError as e:
            raise IRParseError(f"program graph {name!r} (text from line {start + 2}): {e.what}",
                               context=e.context, hint=e.hint) from None
        if params:
            read = {n.attrs["name"] for n in graph.nodes() if n.op == PARAM}
            graph.params = {n: t for n, t in graph.params.items() if n in read}
        program.add(name, graph)
    return program


def load_program(path: str | os.PathLike, params: dict[str, torch.Tensor] | None = None) -> Program:
    """Read a program written by ``Program.save``; ``params`` as for ``parse_program``."""
    with open(path, encoding="utf-8", newline="") as f:
        return parse_program(f.read(), params)
