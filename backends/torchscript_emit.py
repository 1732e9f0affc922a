"""IR graph -> Python source of one ``nn.Module`` that ``torch.jit.script`` compiles.

The source (``model.py`` in a TorchScript artifact) is meant to be read:

* one statement per IR node, in graph order, in ``forward``; ``prim::If`` / ``prim::Loop``
  become ``if`` / ``while`` / ``for`` with their blocks indented;
* each value is named after its node's module scope and op (``conv1_convolution``),
  made a safe, unique identifier (``identifier``); constants are written inline;
* a comment ``# <scope> @ <source line>`` heads each run of statements with the same
  scope and source line;
* ``graph.params`` (and tensor constants) are buffers of the module, read as
  ``self.<name>``, so ``torch.jit.save`` stores them;
* ``dexport::*`` ops call the TorchScript functions of
  ``dexport.backends.torchscript_detection`` (their source is pasted in above the class).

aten ops are called through their overload packet (``torch.ops.aten.add(...)``,
TorchScript refuses ``torch.ops.aten.add.Tensor``) with the schema's keyword-only
arguments passed by keyword; ``check_overloads`` confirms TorchScript resolved each
call to the IR's overload. Sizes stay run-time computations: the IR computes them
with ``aten::size`` etc., which are emitted like any other op.

Lowerings (the ``torchscript`` LoweringTable in ``dexport.backends.torchscript``) take
``(ctx, node)`` and return the expression of the node's result (assigned to its output
names by the context), or None when they bound the outputs themselves.
"""
from __future__ import annotations

import builtins
import collections
import inspect
import keyword
import math
import re
import textwrap
from typing import Any, Callable, Sequence

import torch

from dexport.ir.errors import DexportError, UnsupportedOpsError
from dexport.ir.graph import Block, Graph, Node, Value
from dexport.ir.types import ListType, OptionalType, ScalarType, TensorType, TupleType, Type

MODULE_CLASS = "Model"
INDENT = "    "
MAX_NAME = 48

# Names the generated source itself uses; user-derived names never take them.
_RESERVED = {"self", "torch", "math", "Tensor", "List", "Dict", "Optional", "Tuple", "Any", MODULE_CLASS,
             "params", "forward"}


def identifier(text: str, fallback: str = "v") -> str:
    """``text`` as a Python identifier: only [A-Za-z0-9_] (anything else becomes ``_``),
    not starting with a digit, not a keyword, builtin or a name the source uses."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", text)
    name = re.sub(r"__+", "_", name).strip("_")[:MAX_NAME].rstrip("_") or fallback
    if name[0].isdigit():
        name = f"{fallback}_{name}"
    if keyword.iskeyword(name) or keyword.issoftkeyword(name) or hasattr(builtins, name) or name in _RESERVED:
        name += "_"
    return name


def comment_text(text: str) -> str:
    """``text`` safe inside a ``#`` comment: no line breaks or other non-printable characters."""
    return "".join(c if c.isprintable() else " " for c in text)


class Names:
    """Unique identifiers: ``take(base)`` gives ``base``, then ``base_1``, ``base_2``, ..."""

    def __init__(self, taken: Sequence[str] = ()):
        self.used = set(taken) | _RESERVED
        self.counts: dict[str, int] = collections.Counter()

    def take(self, base: str) -> str:
        name = base
        while name in self.used:
            self.counts[base] += 1
            name = f"{base}_{self.counts[base]}"
        self.used.add(name)
        return name


# --------------------------------------------------------------------------- types and literals

def annotation(typ: Type) -> str | None:
    """The TorchScript annotation of an IR type, or None when it has no exact one."""
    if isinstance(typ, TensorType):
        return "Tensor"
    if isinstance(typ, ScalarType):
        return {"int": "int", "float": "float", "bool": "bool", "str": "str", "Dtype": "int",
                "Layout": "int", "MemoryFormat": "int", "Device": "torch.device"}.get(typ.kind)
    if isinstance(typ, ListType):
        elem = annotation(typ.elem)
        return f"List[{elem}]" if elem else None
    if isinstance(typ, OptionalType):
        elem = annotation(typ.elem)
        return f"Optional[{elem}]" if elem else None
    if isinstance(typ, TupleType):
        elems = [annotation(t) for t in typ.elems]
        return f"Tuple[{', '.join(elems)}]" if elems and all(elems) else None
    return None


def literal(value: Any, typ: Type | None = None) -> str | None:
    """Python source of a constant (None when it cannot be written inline: tensors)."""
    if value is None or isinstance(value, (bool, str)):
        return repr(value)
    if isinstance(value, int):
        return repr(int(value))
    if isinstance(value, float):
        if math.isfinite(value):
            return repr(value)
        return f'float("{value}")'
    if isinstance(value, torch.dtype) or isinstance(value, (torch.layout, torch.memory_format)):
        return str(value)
    if isinstance(value, torch.device):
        return f"torch.device({str(value)!r})"
    if isinstance(value, (list, tuple)):
        elem_type = typ.elem if isinstance(typ, ListType) else None
        items = [literal(v, elem_type) for v in value]
        if any(i is None for i in items):
            return None
        if isinstance(value, tuple):
            return "(" + "".join(f"{i}, " for i in items).rstrip(" ") + ")" if items else "()"
        if not items:
            ann = annotation(typ) if typ is not None else None
            return f"torch.jit.annotate({ann or 'List[int]'}, [])"
        return "[" + ", ".join(items) + "]"
    return None


# --------------------------------------------------------------------------- the context

class EmitContext:
    """The state of one emission: source lines, value -> expression, buffers, the
    detection functions used."""

    def __init__(self, graph: Graph, table, functions: dict[str, Callable], helpers: Sequence[Callable] = ()):
        self.graph = graph
        self.table = table
        self.functions = functions
        self.names = Names([f.__name__ for f in [*functions.values(), *helpers]])
        self.env: dict[Value, str] = {}
        self.lines: list[str] = []
        self.depth = 2  # inside class and forward
        self.buffers: dict[str, torch.Tensor] = {}   # attribute -> tensor
        self.param_attrs: dict[str, str] = {}        # graph.params name -> attribute
        self.used_functions: dict[str, Callable] = {}
        self.current: Node | None = None
        self._place: tuple[str, str] | None = None

    # -- writing ---------------------------------------------------------------------
    def line(self, text: str) -> None:
        self.lines.append(INDENT * self.depth + text)

    def statement(self, text: str) -> None:
        """``text`` as a statement of the current node, after its place comment when
        the place changes."""
        node = self.current
        place = (node.meta.scope, node.meta.source) if node is not None else ("", "")
        if place != self._place and any(place):
            self.line(f"# {comment_text(place[0]) or '<top>'}" + (f" @ {comment_text(place[1])}" if place[1] else ""))
        self._place = place
        self.line(text)

    def expr(self, value: Value) -> str:
        return self.env[value]

    def value_name(self, node: Node, k: int = 0) -> str:
        scope = [p for p in node.meta.scope.split(".") if p][-2:]
        op = node.op.split("::", 1)[-1].split(".", 1)[0].lower()
        suffix = f"_{k}" if len(node.outputs) > 1 else ""
        return self.names.take(identifier("_".join([*scope, op]) + suffix))

    def bind(self, node: Node, result: str) -> None:
        """Assign ``result`` (an expression) to fresh names for ``node``'s outputs."""
        outs = node.outputs
        if not outs:
            self.statement(result)
            return
        names = [self.value_name(node, k) for k in range(len(outs))]
        if len(outs) == 1:
            ann = annotation(outs[0].type) if isinstance(outs[0].type, (ListType, OptionalType)) else None
            self.statement(f"{names[0]}: {ann} = {result}" if ann else f"{names[0]} = {result}")
        else:
            self.statement(f"{', '.join(names)} = {result}")
        for v, n in zip(outs, names):
            self.env[v] = n

    def buffer(self, base: str, tensor: torch.Tensor) -> str:
        attr = self.names.take(identifier(base, "param"))
        self.buffers[attr] = tensor.detach().contiguous().clone()
        return f"self.{attr}"

    def fail(self, what: str, hint: str | None = None) -> DexportError:
        node = self.current
        if node is None:
            return DexportError(what, hint=hint)
        from dexport.ir.printer import format_context
        return UnsupportedOpsError(what, op=node.op, scope=node.meta.scope, source=node.meta.source, hint=hint,
                                   context=format_context(node.graph, node) if node.graph else None)

    # -- walking ---------------------------------------------------------------------
    def emit_block(self, block: Block, targets: Sequence[str] = (), returns: Sequence[Value] | None = None) -> None:
        """A nested block's statements, one level deeper, then ``targets = returns``
        (default: the block's returns); ``pass`` if that leaves it empty."""
        self.depth += 1
        start = len(self.lines)
        for node in block.nodes:
            self.emit_node(node)
        self.assign(targets, block.returns if returns is None else returns)
        if all(line.strip().startswith("#") for line in self.lines[start:]):
            self.line("pass")
        self.depth -= 1

    def emit_node(self, node: Node) -> None:
        outer, self.current = self.current, node
        try:
            lowering = self.table.get(node.op)
            if lowering is None:
                lowering = generic_aten if node.op.startswith("aten::") else None
            if lowering is None:
                raise self.fail(f"{node.op} has no TorchScript lowering")
            result = lowering(self, node)
            if result is not None:
                self.bind(node, result)
            missing = [v for v in node.outputs if v not in self.env]
            if missing:
                raise self.fail(f"the TorchScript lowering of {node.op} bound {len(node.outputs) - len(missing)} "
                                f"of {len(node.outputs)} outputs", "fix the lowering")
        finally:
            self.current = outer

    def assign(self, targets: Sequence[str], values: Sequence[Value]) -> None:
        """``targets = values`` as one tuple assignment, so the right side reads every
        value before any target changes (loop-carried swaps stay right)."""
        pairs = [(t, self.expr(v)) for t, v in zip(targets, values) if t != self.expr(v)]
        if len(pairs) == 1:
            self.line(f"{pairs[0][0]} = {pairs[0][1]}")
        elif pairs:
            self.line(f"{', '.join(t for t, _ in pairs)} = {', '.join(r for _, r in pairs)}")


# --------------------------------------------------------------------------- generic aten calls

def aten_schema(op: str) -> torch._C.FunctionSchema | None:
    """The torch schema of an IR op name ``aten::name[.overload]``, or None."""
    name, _, overload = op.removeprefix("aten::").partition(".")
    packet = getattr(torch.ops.aten, name, None)
    if packet is None:
        return None
    try:
        return getattr(packet, overload or "default")._schema
    except (AttributeError, RuntimeError):
        return None


def generic_aten(ctx: EmitContext, node: Node) -> str:
    schema = aten_schema(node.op)
    if schema is None:
        raise ctx.fail(f"{node.op} is not an aten operator TorchScript can call")
    name = node.op.removeprefix("aten::").partition(".")[0]
    args = []
    for arg, value in zip(schema.arguments, node.inputs):
        text = ctx.expr(value)
        if arg.kwarg_only and not keyword.iskeyword(arg.name):
            args.append(f"{arg.name}={text}")
        else:
            args.append(text)
    return f"torch.ops.aten.{name}({', '.join(args)})"


# --------------------------------------------------------------------------- the module source

def emit_source(graph: Graph, *, table, functions: dict[str, Callable], helpers: Sequence[Callable],
                input_names: Sequence[str], output_names: Sequence[str], expose: Sequence[Value] = ()):
    """The module source for ``graph`` and the buffers it reads (attribute -> tensor).
    ``input_names`` / ``output_names`` are identifiers / dict keys chosen by the caller;
    ``expose``: more values returned under the keys ``__v<k>`` (for bisecting)."""
    ctx = EmitContext(graph, table, functions, helpers)
    for name in input_names:
        ctx.names.used.add(name)
    args = []
    for value, name in zip(graph.inputs, input_names):
        ann = annotation(value.type) or "Tensor"
        args.append(f"{name}: {ann}")
        ctx.env[value] = name
    for node in graph.block.nodes:
        ctx.emit_node(node)
    ctx.current = None
    ctx._place = None
    outs = []
    for name, value in [*zip(output_names, graph.outputs), *((f"__v{k}", v) for k, v in enumerate(expose))]:
        text = ctx.expr(value)
        if not isinstance(value.type, TensorType):
            text = f"torch.tensor({text})"
        outs.append(f"{name!r}: {text}")
    body_text = "\n".join(ctx.lines)

    sources = []  # the helpers only where a detection function (their only callers) is pasted
    used = [ctx.used_functions[op] for op in sorted(ctx.used_functions)]
    for fn in [*(helpers if used else ()), *used]:
        src = textwrap.dedent(inspect.getsource(fn)).rstrip()
        if src not in sources:
            sources.append(src)
    header = ["# Generated by dexport from the captured IR graph; compiled by torch.jit.script.",
              "import math",
              "from typing import Dict, List, Optional, Tuple",
              "",
              "import torch",
              "from torch import Tensor",
              ""]
    funcs = "\n\n\n".join(sources)
    out_lines = ",\n".join(f"{INDENT * 3}{o}" for o in outs)
    cls = f'''class {MODULE_CLASS}(torch.nn.Module):
    """The exported graph: buffers hold its parameters and tensor constants."""

    def __init__(self, params: Dict[str, Tensor]):
        super().__init__()
        for name, tensor in params.items():
            self.register_buffer(name, tensor)

    def forward(self{''.join(', ' + a for a in args)}) -> Dict[str, Tensor]:
{body_text}
        return {{
{out_lines}
        }}
'''
    source = "\n".join(header) + ("\n\n" + funcs + "\n" if funcs else "") + "\n\n" + cls
    return source, ctx.buffers


def _is_wrapped_number(value: Value, arg) -> bool:
    """A number where the schema takes a Tensor (a traced number, or a 0-d constant
    holding one)."""
    if not isinstance(arg.type, torch.TensorType):
        return False
    node = value.node
    return isinstance(value.type, ScalarType) or (
        node is not None and node.op == "prim::Constant" and isinstance(node.attrs["value"], (bool, int, float)))


def check_overloads(graph: Graph, actual: collections.Counter) -> None:
    """TorchScript picks an overload of ``torch.ops.aten.X(...)`` by the argument types:
    every overload the IR names must appear in the compiled forward (``actual``:
    {(op, overload): count}) at least as often."""
    expected = collections.Counter()
    for node in graph.nodes():
        # A number traced as a 0-d tensor ("wrapped number") is written as the number,
        # so TorchScript rightly picks the Scalar overload (same result: no promotion).
        schema = aten_schema(node.op) if node.op.startswith("aten::") else None
        if schema is not None and not any(_is_wrapped_number(v, a) for v, a in zip(node.inputs, schema.arguments)):
            name, _, overload = node.op.partition(".")
            expected[(name, overload)] += 1
    wrong = sorted(f"{name}.{overload}" if overload else name
                   for (name, overload), count in expected.items() if actual[(name, overload)] < count)
    if wrong:
        raise DexportError(f"TorchScript resolved calls to other overloads than the IR's: {', '.join(wrong)}",
                           hint="this is a bug in the TorchScript emitter: pass the arguments that tell "
                                "these overloads apart by keyword")


__all__ = ["EmitContext", "aten_schema", "annotation", "check_overloads", "comment_text", "emit_source",
           "generic_aten", "identifier", "literal"]
