"""The one exception family of dexport.

Every user-facing failure is a ``DexportError`` that says *what* went wrong,
*where* (op, module scope, source line, and where useful the IR lines around
the failing node) and *what to do*. A bare traceback from deep inside the
compiler is a bug.
"""
from __future__ import annotations


class DexportError(Exception):
    """Base class. ``str(err)`` is the full, formatted message."""

    def __init__(self, what: str, *, op: str | None = None, scope: str | None = None,
                 source: str | None = None, hint: str | None = None,
                 context: str | None = None):
        self.what = what
        self.op = op
        self.scope = scope
        self.source = source
        self.hint = hint
        self.context = context
        super().__init__(self._format())

    def _format(self) -> str:
        lines = [self.what]
        if self.op:
            lines.append(f"  op:     {self.op}")
        if self.scope is not None:
            lines.append(f"  scope:  {self.scope or '<top level>'}")
        if self.source:
            lines.append(f"  source: {self.source}")
        if self.context:
            lines.append("  context:")
            lines.extend("    " + line for line in self.context.splitlines())
        if self.hint:
            lines.append(f"  what to do: {self.hint}")
        return "\n".join(lines)


class DexportWarning(UserWarning):
    """Something works but should not be trusted blindly: e.g. loading an artifact whose
    recorded verification failed. Like errors, the text says what and what to do."""


class IRParseError(DexportError):
    """Malformed IR text."""


class VerificationError(DexportError):
    """A graph breaks an invariant of its IR stage."""


class SchemaError(DexportError):
    """A structured input/output that cannot be flattened or rebuilt."""


class CaptureError(DexportError):
    """The model could not be captured (it raised, or produced something untraceable)."""


class PassError(DexportError):
    """A pass failed, broke the verifier, or changed the graph's behaviour."""


class InterpreterError(DexportError):
    """Running a graph failed at a node."""


class UnsupportedOpsError(DexportError):
    """A backend lacks lowerings for one or more ops (all are listed at once)."""
