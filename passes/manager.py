"""PassManager: run a pipeline of passes with instruments around each pass.

A pipeline is a list of pass names / ``Pass`` objects, or a text such as
``"fix-batch-dim{batch=dynamic},cse,dce"`` (options in
braces, values unquoted or quoted with ``"``). Instruments are small objects
with ``before_pipeline`` / ``before_pass`` / ``after_pass`` hooks; the
built-in ones time passes, verify after each pass, dump the IR before and
after each pass, and check on sample inputs that no pass changed the outputs.
Before hooks run in instrument order, after hooks in reverse (like nested
``with`` blocks), so timing measures the pass alone and an ``.after.ir`` dump
is written before the verifier can fail.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from dexport.ir.errors import DexportError, PassError
from dexport.ir.graph import Graph
from dexport.ir.interpreter import run as run_graph
from dexport.ir.printer import print_graph
from dexport.ir.verifier import STAGES, verify
from dexport.passes.base import Pass, get_pass, pass_class, property_check, registered

# --------------------------------------------------------------------------- pipeline text

def parse_pipeline(text: str) -> list[Pass]:
    """``"cse,fix-batch-dim{batch=dynamic}"`` -> pass objects. Errors name the
    position in the text and show it with a caret."""
    return _PipelineReader(text).read()


class _PipelineReader:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def error(self, what: str, pos: int, hint: str | None = None) -> PassError:
        return PassError(f"{what} at position {pos} of the pipeline",
                         context=f"{self.text}\n{' ' * pos}^", hint=hint)

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def word(self, stops: str) -> tuple[str, int]:
        """Text up to one of ``stops`` (or a quoted string); (text, start position)."""
        self.skip_space()
        start = self.pos
        if self.pos < len(self.text) and self.text[self.pos] == '"':
            end = self.text.find('"', self.pos + 1)
            if end < 0:
                raise self.error("unterminated quoted value", start)
            self.pos = end + 1
            return self.text[start + 1:end], start
        while self.pos < len(self.text) and self.text[self.pos] not in stops:
            self.pos += 1
        return self.text[start:self.pos].strip(), start

    def expect(self, chars: str, what: str) -> str:
        self.skip_space()
        if self.pos >= len(self.text) or self.text[self.pos] not in chars:
            got = repr(self.text[self.pos]) if self.pos < len(self.text) else "the end"
            raise self.error(f"expected {what}, got {got}", self.pos)
        self.pos += 1
        return self.text[self.pos - 1]

    def read(self) -> list[Pass]:
        passes: list[Pass] = []
        self.skip_space()
        if self.pos == len(self.text):
            return passes
        while True:
            name, name_pos = self.word(",{}=")
            if not name:
                raise self.error("expected a pass name", name_pos)
            try:
                cls = pass_class(name)
            except PassError as e:
                raise self.error(f"unknown pass {name!r}", name_pos, e.hint) from None
            options: dict[str, str] = {}
            self.skip_space()
            if self.pos < len(self.text) and self.text[self.pos] == "{":
                self.pos += 1
                options = self.read_options(name)
            try:
                passes.append(cls(**options))
            except PassError as e:
                raise self.error(e.what, name_pos, e.hint) from None
            self.skip_space()
            if self.pos == len(self.text):
                return passes
            self.expect(",", "',' between passes")

    def read_options(self, pass_name: str) -> dict[str, str]:
        options: dict[str, str] = {}
        self.skip_space()
        if self.pos < len(self.text) and self.text[self.pos] == "}":
            self.pos += 1
            return options
        while True:
            key, key_pos = self.word("=,{}")
            if not key:
                raise self.error(f"expected an option name for pass {pass_name!r}", key_pos)
            if key in options:
                raise self.error(f"option {key!r} given twice", key_pos)
            self.expect("=", f"'=' after option {key!r}")
            value, _ = self.word(",{}")
            options[key] = value
            if self.expect(",}", "',' or '}' after an option") == "}":
                return options


# --------------------------------------------------------------------------- results

@dataclass
class PassRecord:
    index: int
    name: str
    spec: str
    changed: bool
    seconds: float | None = None  # filled by the timing instrument


@dataclass
class PassResult:
    records: list[PassRecord] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.records)

    @property
    def changed_passes(self) -> list[str]:
        return [r.spec for r in self.records if r.changed]

    def report(self) -> str:
        """A small table: one line per pass with whether it changed the graph and its time."""
        width = max([len(r.spec) for r in self.records] + [4])
        lines = [f"{'#':>3}  {'pass':<{width}}  changed  seconds"]
        for r in self.records:
            secs = "-" if r.seconds is None else f"{r.seconds:.4f}"
            lines.append(f"{r.index:>3}  {r.spec:<{width}}  {'yes' if r.changed else 'no':<7}  {secs}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()


# --------------------------------------------------------------------------- instruments

class Instrument:
    """Hooks around a pipeline run. Raise (a PassError) to stop the pipeline."""

    def before_pipeline(self, graph: Graph) -> None:
        pass

    def before_pass(self, index: int, p: Pass, graph: Graph) -> None:
        pass

    def after_pass(self, index: int, p: Pass, graph: Graph, record: PassRecord) -> None:
        pass


class TimingInstrument(Instrument):
    def before_pass(self, index, p, graph):
        self._start = time.perf_counter()

    def after_pass(self, index, p, graph, record):
        record.seconds = time.perf_counter() - self._start


class DumpInstrument(Instrument):
    """Writes ``NNN_<pass>.before.ir`` / ``NNN_<pass>.after.ir`` into a directory."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)

    def _write(self, index: int, p: Pass, when: str, graph: Graph) -> None:
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, f"{index:03d}_{p.name}.{when}.ir")
        with open(path, "w", encoding="utf-8") as f:
            f.write(print_graph(graph))

    def before_pass(self, index, p, graph):
        self._write(index, p, "before", graph)

    def after_pass(self, index, p, graph, record):
        self._write(index, p, "after", graph)


class VerifyInstrument(Instrument):
    """Runs the verifier after each pass at the strictest stage the manager knows
    holds, and at least ``typed`` (every node agrees with its op's type rule)."""

    def __init__(self, manager: "PassManager"):
        self.manager = manager

    def after_pass(self, index, p, graph, record):
        stage = max(self.manager.current_stage(), "typed", key=STAGES.index)
        try:
            verify(graph, stage=stage)
        except DexportError as e:
            raise PassError(f"pass {p.spec()!r} (#{index} in the pipeline) left a graph that fails "
                            f"the {stage!r} verifier: {e.what}",
                            op=e.op, scope=e.scope, source=e.source, context=e.context,
                            hint=e.hint or f"this is a bug in pass {p.name!r}") from e


class ValidateInstrument(Instrument):
    """Runs the interpreter on sample inputs before the pipeline and after every
    pass (also those that say they changed nothing: a pass can be wrong about
    that too), and names the first pass that changed an output by more than ``atol``."""

    def __init__(self, sample_inputs: Any, atol: float):
        self.sample_inputs = sample_inputs
        self.atol = atol

    def _run(self, graph: Graph) -> list:
        inputs = self.sample_inputs
        if graph.input_schema is not None:
            flat = graph.input_schema.flatten(inputs)
        else:
            flat = [inputs] if isinstance(inputs, torch.Tensor) else list(inputs)
        return run_graph(graph, flat)

    def before_pipeline(self, graph):
        self.reference = self._run(graph)

    def after_pass(self, index, p, graph, record):
        where = f"pass {p.spec()!r} (#{index} in the pipeline)"
        try:
            outputs = self._run(graph)
        except DexportError as e:
            raise PassError(f"{where}: the graph no longer runs on the sample inputs: {e.what}",
                            op=e.op, scope=e.scope, source=e.source, context=e.context,
                            hint=f"this is a bug in pass {p.name!r}") from e
        if not p.changes_signature:
            problem = first_difference(self.reference, outputs, self.atol)
            if problem is not None:
                raise PassError(f"{where} changed the graph's outputs on the sample inputs: {problem}",
                                hint=f"this is a bug in pass {p.name!r}; dump the IR around it "
                                     f"(dump_dir=...) to see what it did")
        self.reference = outputs


def abs_errors(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise |a - b| in float64 (broadcast): equal entries (infinities, NaN
    against NaN) are 0, a NaN against a number or an infinity against another value
    is inf. The one definition of "how far apart" that validation, verification and
    bisection share."""
    wide = torch.complex128 if a.is_complex() or b.is_complex() else torch.float64
    a, b = a.detach().to(wide), b.detach().to(wide)
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    diff = torch.where(same, 0.0, (a - b).abs())
    return torch.nan_to_num(diff, nan=math.inf, posinf=math.inf)


def max_abs_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest of ``abs_errors(a, b)``; 0 for empty tensors."""
    if a.numel() == 0:
        return 0.0
    return float(abs_errors(a, b).max())


def _compare(a: Any, b: Any, path: str, atol: float) -> str | None:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            return f"output {path} changed shape from {tuple(a.shape)} to {tuple(b.shape)}"
        if a.dtype != b.dtype:
            return f"output {path} changed dtype from {a.dtype} to {b.dtype}"
        err = max_abs_error(a, b)
        if err > atol:
            return f"output {path} differs by max abs error {err:.6g} (atol {atol:g})"
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and type(a) is type(b):
        if len(a) != len(b):
            return f"output {path} changed length from {len(a)} to {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            problem = _compare(x, y, f"{path}[{i}]", atol)
            if problem:
                return problem
        return None
    if type(a) is not type(b) or a != b:
        return f"output {path} changed from {a!r} to {b!r}"
    return None


def first_difference(before: Sequence[Any], after: Sequence[Any], atol: float) -> str | None:
    """None if ``after`` matches ``before`` within ``atol``, else what differs
    first (output index, max abs error)."""
    if len(before) != len(after):
        return f"the number of outputs changed from {len(before)} to {len(after)}"
    for i, (a, b) in enumerate(zip(before, after)):
        problem = _compare(a, b, str(i), atol)
        if problem:
            return problem
    return None


# --------------------------------------------------------------------------- the manager

class PassManager:
    """Runs passes in order and reports which changed the graph.

    ``assume`` names the IR properties (or verifier stages) already known to
    hold. A pass's ``requires`` must hold when it starts: a property holds if it
    was assumed or established by an earlier pass and not invalidated since
    (by a pass that changed the graph); a verifier stage or an observable
    property (``register_property``) also holds if its check accepts the graph.
    Before anything runs, ``run`` checks the whole pipeline: every pass's
    ``validate()``, and that each plain property a pass requires is assumed or
    established by an earlier pass (``check_pipeline``).
    """

    def __init__(self, pipeline: str | Sequence[str | Pass], *, verify_each: bool = False,
                 dump_dir: str | os.PathLike | None = None, timing: bool = False,
                 validate_with: Any = None, atol: float = 1e-5,
                 instruments: Sequence[Instrument] = (), assume: Sequence[str] = ()):
        if isinstance(pipeline, str):
            self.passes = parse_pipeline(pipeline)
        else:
            self.passes = [p if isinstance(p, Pass) else get_pass(p) for p in pipeline]
        self.assume = tuple(assume)
        self.instruments: list[Instrument] = list(instruments)
        if validate_with is not None:
            self.instruments.append(ValidateInstrument(validate_with, atol))
        if verify_each:
            self.instruments.append(VerifyInstrument(self))
        if dump_dir is not None:
            self.instruments.append(DumpInstrument(dump_dir))
        if timing:
            self.instruments.append(TimingInstrument())
        self.established: set[str] = set()

    @property
    def pipeline_text(self) -> str:
        """The pipeline as text that parses back to the same passes and options."""
        return ",".join(p.spec() for p in self.passes)

    def current_stage(self) -> str:
        """The strictest verifier stage known to hold (at least "captured")."""
        held = [s for s in STAGES if s in self.established]
        return held[-1] if held else STAGES[0]

    def _establish(self, prop: str) -> None:
        self.established.add(prop)
        if prop in STAGES:  # verifier stages are nested: a stage implies the looser ones
            self.established.update(STAGES[:STAGES.index(prop)])

    def check_pipeline(self) -> None:
        """The static part of the contracts, before any pass runs: each pass's
        options are valid, and each plain property (not a verifier stage nor
        observable on the graph) that a pass requires is assumed or established by
        an earlier pass of the pipeline."""
        promised = set(self.assume)
        for index, p in enumerate(self.passes):
            try:
                p.validate()
            except PassError as e:
                raise PassError(f"pass {p.spec()!r} (#{index} in the pipeline): {e.what}",
                                hint=e.hint) from None
            for prop in p.requires:
                if prop in promised or prop in STAGES or property_check(prop) is not None:
                    continue
                raise PassError(f"pass {p.spec()!r} (#{index} in the pipeline) requires {prop!r}, "
                                f"which no earlier pass establishes", hint=self._establishers_hint(prop))
            promised.update(p.establishes)

    def _check_requires(self, index: int, p: Pass, graph: Graph) -> None:
        for prop in p.requires:
            if prop in self.established:
                continue
            if prop in STAGES:
                try:
                    verify(graph, stage=prop)
                except DexportError as e:
                    raise PassError(f"pass {p.spec()!r} (#{index} in the pipeline) requires a "
                                    f"{prop!r} graph, and the verifier rejects it: {e.what}",
                                    op=e.op, scope=e.scope, source=e.source, context=e.context,
                                    hint=self._establishers_hint(prop)) from e
                self._establish(prop)
                continue
            check = property_check(prop)
            if check is not None:
                missing = check(graph)
                if missing is None:
                    self._establish(prop)
                    continue
                what, hint = missing
                raise PassError(f"pass {p.spec()!r} (#{index} in the pipeline) requires {prop!r}: "
                                f"{what}", hint=hint)
            raise PassError(f"pass {p.spec()!r} (#{index} in the pipeline) requires {prop!r}, "
                            f"which no earlier pass established", hint=self._establishers_hint(prop))

    @staticmethod
    def _establishers_hint(prop: str) -> str:
        makers = [n for n in registered() if prop in pass_class(n).establishes]
        if makers:
            return f"run one of these passes before it: {', '.join(makers)}"
        return f"no registered pass establishes {prop!r}; pass assume=[{prop!r}] if it holds"

    def run(self, graph: Graph) -> PassResult:
        self.check_pipeline()
        self.established = set()
        for prop in self.assume:
            self._establish(prop)
        result = PassResult()
        for inst in self.instruments:
            inst.before_pipeline(graph)
        for index, p in enumerate(self.passes):
            self._check_requires(index, p, graph)
            for inst in self.instruments:
                inst.before_pass(index, p, graph)
            try:
                changed = bool(p.run(graph))
            except PassError:
                raise
            except DexportError as e:
                raise PassError(f"pass {p.spec()!r} (#{index} in the pipeline) failed: {e.what}",
                                op=e.op, scope=e.scope, source=e.source, context=e.context,
                                hint=e.hint) from e
            except Exception as e:
                raise PassError(f"pass {p.spec()!r} (#{index} in the pipeline) crashed: "
                                f"{type(e).__name__}: {e}",
                                hint=f"this is a bug in pass {p.name!r}; the traceback above shows where") from e
            record = PassRecord(index, p.name, p.spec(), changed)
            if changed:
                self.established.difference_update(p.invalidates)
            for prop in p.establishes:
                self._establish(prop)
            for inst in reversed(self.instruments):
                inst.after_pass(index, p, graph, record)
            result.records.append(record)
        return result
