"""The text form of a graph, and the IR lines around a node for error messages.

The printer is deterministic and its output parses back (``dexport.ir.parse``)
to a graph that prints to the same text (an abridged example)::

    #! input_schema {"t":"tuple",...}
    graph(%x: f32[1,3,H,W], %im_info: f32[1,3]) {
      %conv.weight: f32[8,3,3,3] = prim::Param() {name="conv.weight"}
      %0: int = prim::Constant() {value=1}
      %1: f32[1,8,H,W] = aten::conv2d(%x, %conv.weight, %2, %3, %4, %5, %0)  # backbone.conv1 @ models/backbone.py:42
      %6: i64[n0], %7: f32[n0] = dexport::nms(%1, %0) {iou=0.5}  # roi_heads @ models/roi_heads.py:80 [postprocess]
      %8: f32[*] = prim::If(%c) {
        block0() {
          return (%1)
        }
        block1() {
          return (%7)
        }
      }
      return (%1, %8)
    }

* Values are named when printed: a usable ``name_hint`` (``[A-Za-z_][A-Za-z0-9_.]*``)
  prints as itself, made unique with a ``.1``, ``.2`` suffix on a clash; every
  other value gets the next number. Names are unique in the whole graph.
* Attributes print sorted by key; each kind has one exact text: ``1``, ``1.0``,
  ``inf``, ``-nan``, ``True``, ``None``, ``"str"`` (JSON escapes, ASCII only),
  ``[..]``, ``(..,)``, ``torch.float32``, ``device("cuda:0")``, ``torch.strided``,
  ``torch.channels_last``, ``tensor(f32[2], [1.0, 2.0])`` (flat row-major values).
  Floats use ``repr`` so they round-trip bit for bit (NaN keeps its sign, not its payload).
* Op names are namespaced (``aten::relu``, ``prim::If``); attribute keys that are
  not identifiers print as JSON strings.
* Meta is a trailing comment ``# scope @ source [tag1,tag2]`` with empty parts
  left out; a part that could be misread (spaces, quotes, ``@``, brackets)
  prints as a JSON string.

One walk names every value (in print order) and renders each line. For
``format_context`` the same walk keeps only the lines around its node and stops
there, so an error message costs a naming walk up to the node, not a full print.
"""
from __future__ import annotations

import json
import math
import re
from collections import deque
from typing import Any

import torch

from dexport.ir.errors import DexportError
from dexport.ir.graph import Block, Graph, Meta, Node, Value
from dexport.ir.types import Type, dtype_to_text

IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
ATTR_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLAIN_META = re.compile(r'[!-~]+')      # printable ASCII, no space
_META_SPECIAL = re.compile(r'["@\[\],]')  # characters that force quoting
INDENT = "  "

# Kinds of line the walk produces, as (kind, depth, object) items.
_SCHEMA, _HEADER, _NODE, _BLOCK, _RETURN, _CLOSE = range(6)


# --------------------------------------------------------------------------- attributes

def format_float(x: float) -> str:
    if x != x:
        return "-nan" if math.copysign(1.0, x) < 0 else "nan"
    if x in (math.inf, -math.inf):
        return "inf" if x > 0 else "-inf"
    return repr(x)  # shortest text that reads back to the same double; always has '.' or 'e'


def format_attr(value: Any) -> str:
    """The exact text of one attribute value (the parser reads it back)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return format_float(float(value))
    if isinstance(value, str):
        return json.dumps(value)
    if value is None:
        return "None"
    if isinstance(value, list):
        return "[" + ", ".join(format_attr(v) for v in value) + "]"
    if isinstance(value, tuple):
        if len(value) == 1:
            return "(" + format_attr(value[0]) + ",)"
        return "(" + ", ".join(format_attr(v) for v in value) + ")"
    if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
        return str(value)  # torch.float32, torch.strided, torch.channels_last
    if isinstance(value, torch.device):
        return f'device("{value}")'
    if isinstance(value, torch.Tensor):
        if value.is_complex() or value.is_quantized or value.layout != torch.strided:
            raise DexportError(f"cannot print a {value.dtype} {value.layout} tensor attribute",
                               hint="keep such tensors in graph.params and read them with prim::Param")
        shape = ",".join(str(d) for d in value.shape)
        values = ", ".join(format_attr(v) for v in value.detach().reshape(-1).tolist())
        return f"tensor({dtype_to_text(value.dtype)}[{shape}], [{values}])"
    raise DexportError(f"cannot print an attribute of type {type(value).__name__}: {value!r}",
                       hint="attributes must be plain constants: int, float, bool, str, None, "
                            "lists/tuples of them, torch dtype/device/layout/memory_format, small tensors")


def format_attrs(attrs: dict[str, Any]) -> str:
    parts = []
    for key in sorted(attrs):
        name = key if ATTR_KEY.fullmatch(key) else json.dumps(key)
        parts.append(f"{name}={format_attr(attrs[key])}")
    return "{" + ", ".join(parts) + "}"


def _meta_part(text: str) -> str:
    if _PLAIN_META.fullmatch(text) and not _META_SPECIAL.search(text):
        return text
    return json.dumps(text)


def format_meta(meta: Meta) -> str:
    """``  # scope @ source [tags]`` (empty parts left out), or "" when there is nothing."""
    parts = []
    if meta.scope:
        parts.append(_meta_part(meta.scope))
    if meta.source:
        parts.append("@ " + _meta_part(meta.source))
    if meta.tags:
        parts.append("[" + ",".join(_meta_part(t) for t in meta.tags) + "]")
    return "  # " + " ".join(parts) if parts else ""


# --------------------------------------------------------------------------- the printer

class _Printer:
    """Names every value of a graph and renders its lines, in one walk."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.names: dict[Value, str] = {}
        self._used: set[str] = set()
        self._next_suffix: dict[str, int] = {}
        self._counter = 0
        self._type_text: dict[int, tuple[Type, str]] = {}
        self.lines: list[str] = []
        self._window: _Window | None = None

    # -- naming ----------------------------------------------------------------------
    def _define(self, v: Value) -> str:
        if v in self.names:  # only in a broken graph: used before, or defined twice
            return self.names[v]
        hint = v.name_hint
        if hint and IDENT.fullmatch(hint):
            name = hint
            if name in self._used:
                k = self._next_suffix.get(hint, 1)
                while f"{hint}.{k}" in self._used:
                    k += 1
                self._next_suffix[hint] = k + 1
                name = f"{hint}.{k}"
            self._used.add(name)
        else:
            # Numbers cannot clash with hints, which start with a letter or '_'.
            name = str(self._counter)
            self._counter += 1
        self.names[v] = name
        return name

    def _name_inputs(self, node: Node) -> None:
        # In a well-formed graph every input is named already; a broken one (the
        # verifier's business) still prints, its unknown values named at first use.
        names = self.names
        for v in node.inputs:
            if v not in names:
                self._define(v)

    # -- the walk --------------------------------------------------------------------
    def walk(self, window: "_Window | None" = None) -> "_Printer":
        """Name every value in print order and render each line into ``self.lines``;
        with a ``window``, keep only the lines around its target (and stop early)."""
        self._window = window
        g = self.graph
        if g.example_shapes:
            self._add(_SCHEMA, 0, "example_shapes")
        for key in ("input_schema", "output_schema"):
            if getattr(g, key, None) is not None:
                self._add(_SCHEMA, 0, key)
        for p in g.block.params:
            self._define(p)
        self._add(_HEADER, 0, g.block)
        self._walk_block(g.block, 1)
        self._add(_CLOSE, 0, None)
        return self

    def _add(self, kind: int, depth: int, obj: Any) -> None:
        w = self._window
        if w is None:
            self.lines.append(self.render((kind, depth, obj)))
        else:
            w.add((kind, depth, obj))

    def _walk_block(self, block: Block, depth: int) -> None:
        lines = self.lines
        names = self.names
        define = self._define
        window = self._window
        indent = INDENT * depth
        for node in block.nodes:
            for v in node.inputs:
                if v not in names:
                    self._name_inputs(node)
                    break
            for o in node.outputs:
                define(o)
            if window is None:
                lines.append(indent + self.node_text(node))
            else:
                window.add((_NODE, depth, node))
            if node.blocks:
                for i, b in enumerate(node.blocks):
                    for p in b.params:
                        define(p)
                    self._add(_BLOCK, depth + 1, (i, b))
                    self._walk_block(b, depth + 2)
                    self._add(_CLOSE, depth + 1, None)
                self._add(_CLOSE, depth, None)
        ret = block.return_node
        self._name_inputs(ret)
        self._add(_RETURN, depth, ret)

    # -- rendering -------------------------------------------------------------------
    def type_text(self, t: Type) -> str:
        hit = self._type_text.get(id(t))
        if hit is None:
            hit = self._type_text[id(t)] = (t, str(t))  # keeps t alive so its id stays unique
        return hit[1]

    def _decls(self, values: list[Value]) -> str:
        names, tt = self.names, self.type_text
        return ", ".join(f"%{names[v]}: {tt(v.type)}" for v in values)

    def render(self, item: tuple[int, int, Any]) -> str:
        kind, depth, obj = item
        indent = INDENT * depth
        if kind == _NODE:
            return indent + self.node_text(obj)
        if kind == _CLOSE:
            return indent + "}"
        if kind == _RETURN:
            names = self.names
            return indent + "return (" + ", ".join("%" + names[v] for v in obj.inputs) + ")"
        if kind == _BLOCK:
            i, b = obj
            return f"{indent}block{i}({self._decls(b.params)}) {{"
        if kind == _HEADER:
            return f"graph({self._decls(obj.params)}) {{"
        if obj == "example_shapes":
            return "#! example_shapes"
        text = getattr(self.graph, obj).to_json().replace("\n", " ")
        return f"#! {obj} {text}"

    def node_text(self, node: Node) -> str:
        names = self.names
        outs = node.outputs
        if len(outs) == 1:
            o = outs[0]
            head = f"%{names[o]}: {self.type_text(o.type)} = "
        else:
            head = self._decls(outs) + " = " if outs else ""
        text = f"{head}{node.op}({', '.join(['%' + names[v] for v in node.inputs])})"
        if node.attrs:
            text += " " + format_attrs(node.attrs)
        if node.blocks:
            text += " {"
        meta = node.meta
        if meta.scope or meta.source or meta.tags:
            text += format_meta(meta)
        return text

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


class _StopWalk(Exception):
    pass


class _Window:
    """The lines around one target (a node, a block, a return node), collected as
    unrendered items while the printer walks: ``radius`` lines before it in a
    bounded deque, then ``radius`` lines after it, then the walk stops."""

    def __init__(self, target: Node | Block, radius: int):
        self.target = target
        self.radius = radius
        self.before: deque = deque(maxlen=radius)
        self.hit: tuple | None = None
        self.after: list = []

    def add(self, item: tuple[int, int, Any]) -> None:
        if self.hit is None:
            kind, _, obj = item
            if (obj[1] if kind == _BLOCK else obj) is self.target:
                self.hit = item
            else:
                self.before.append(item)
        elif len(self.after) < self.radius:
            self.after.append(item)
        else:
            raise _StopWalk


def print_graph(graph: Graph) -> str:
    """The graph's text form (ends with a newline). Linear in the graph size."""
    return _Printer(graph).walk().text()


def format_context(graph: Graph, node: Node | Block, radius: int = 3) -> str:
    """The printed lines around ``node`` with its line marked ``>>``: the piece of
    IR that an error message shows. ``node`` may also be a Block (its header line
    is marked) or a block's return node. A node that is not in the graph is shown
    alone, with a note saying so. Costs one naming walk up to the node, no full print."""
    return _format_context(graph, node, radius)[0]


def _format_context(graph: Graph, node: Node | Block, radius: int) -> tuple[str, dict[Value, str]]:
    """``format_context`` plus the names given so far, so that a message can name
    the values it talks about exactly as the context prints them."""
    printer = _Printer(graph)
    window = _Window(node, max(0, radius))
    try:
        printer.walk(window)
    except _StopWalk:
        pass
    if window.hit is None:
        if isinstance(node, Node):
            printer._name_inputs(node)
            for o in node.outputs:
                if o not in printer.names:
                    printer._define(o)
            return f">> {printer.node_text(node)}    (this node is not in the graph)", printer.names
        return ">> (this block is not in the graph)", printer.names
    render = printer.render
    lines = (["   " + render(i) for i in window.before] + [">> " + render(window.hit)]
             + ["   " + render(i) for i in window.after])
    return "\n".join(lines), printer.names
