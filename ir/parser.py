"""Read the text form of a graph (the inverse of ``dexport.ir.printer``).

``parse(print_graph(g))`` prints exactly like ``g``. The parser works line by
line with ``str.find``/``split`` over separators that cannot occur inside the
parts they separate (types never contain ``%``, ``=`` or ``)``; value names never
contain spaces), so it runs in linear time without regex backtracking. Types are
parsed once per distinct text.

Malformed text raises ``IRParseError`` naming the line and column, showing the
line with a caret under the problem, and saying what was expected. A value must
be defined on an earlier line than its first use; scoping across blocks is the
verifier's business (``dexport.ir.verify``), so a broken dump still parses and
can be verified.
"""
from __future__ import annotations

import gc
import re
from json.decoder import scanstring
from typing import Any

import torch

from dexport.ir.errors import DexportError, IRParseError
from dexport.ir.graph import Block, Graph, Meta, Node, Value
from dexport.ir.types import TensorType, Type, parse_type

_NAME = re.compile(r"[A-Za-z0-9_.]+")
_OP = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(::[A-Za-z_][A-Za-z0-9_.]*)+")  # namespaced: aten::relu
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|inf|nan)")
_PLAIN_PART = re.compile(r"[^ ]+")      # a scope or source without quotes
_PLAIN_TAG = re.compile(r"[^,\]]+")    # a tag without quotes
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_TORCH_CONSTANTS = (torch.dtype, torch.layout, torch.memory_format)
_HINT = "fix the IR text; print_graph(graph) shows the form the parser reads"


class _BlockFrame:
    __slots__ = ("block", "returned", "line")

    def __init__(self, block: Block, line: int):
        self.block = block
        self.returned = False
        self.line = line


class _NodeFrame:
    """A node whose blocks are being read; its outputs are defined when it closes."""
    __slots__ = ("node", "names", "line")

    def __init__(self, node: Node, names: list[str], line: int):
        self.node = node
        self.names = names
        self.line = line


class _Parser:
    def __init__(self, text: str, params: dict[str, torch.Tensor] | None):
        self.lines = text.split("\n")
        self.graph = Graph()
        if params:
            self.graph.params = dict(params)
        self.values: dict[str, Value] = {}
        self.types: dict[str, Type] = {}
        self.ops: set[str] = set()
        self.ln = 0        # current line number (1-based); the line is self.lines[ln - 1]

    # -- errors --------------------------------------------------------------------
    def fail(self, p: int, what: str, hint: str = _HINT) -> None:
        """Raise for column ``p`` of the current line, counted after its indentation."""
        line = self.lines[self.ln - 1].rstrip()
        col = len(line) - len(line.lstrip()) + p
        raise IRParseError(f"IR text line {self.ln}, column {col + 1}: {what}",
                           context=f"{line}\n{' ' * col}^", hint=hint)

    # -- driver --------------------------------------------------------------------
    def run(self) -> Graph:
        stack: list[Any] = []
        started = done = False
        for ln, line in enumerate(self.lines, 1):
            s = line.strip()
            if not s:
                continue
            self.ln = ln
            frame = stack[-1] if stack else None
            if s[0] == "%" and type(frame) is _BlockFrame and not frame.returned:
                opened = self.node_line(s, frame.block)  # the common case first
                if opened is not None:
                    stack.append(opened)
                continue
            if s[0] == "#":
                if s.startswith("#!"):
                    if started:
                        self.fail(0, "schema lines ('#! ...') must come before 'graph(...) {'")
                    self.directive(s)
                continue
            if done:
                self.fail(0, "unexpected text after the graph's closing '}'")
            if not started:
                self.header(s)
                stack.append(_BlockFrame(self.graph.block, ln))
                started = True
                continue
            if type(frame) is _BlockFrame:
                if frame.returned:
                    if s != "}":
                        self.fail(0, "expected '}' after the block's 'return (...)'")
                    stack.pop()
                    done = not stack
                elif s.startswith("return ("):
                    self.returns(s, frame)
                elif s == "}":
                    self.fail(0, "expected 'return (...)' before the block's closing '}'")
                else:
                    opened = self.node_line(s, frame.block)
                    if opened is not None:
                        stack.append(opened)
            elif s == "}":
                if not frame.node.blocks:
                    self.fail(0, "expected a block header 'block0(...) {' inside the node's '{'")
                stack.pop()
                self.define(frame.node.outputs, frame.names, 0)
            elif s.startswith("block"):
                stack.append(self.block_header(s, frame.node))
            else:
                self.fail(0, f"expected 'block{len(frame.node.blocks)}(...) {{' or '}}' "
                             f"inside {frame.node.op}")
        if not done:
            self.ln = len(self.lines)
            end = len(self.lines[-1].strip())
            if not started:
                self.fail(end, "expected 'graph(...) {'")
            self.fail(end, f"unexpected end of text: the '{{' opened on line {stack[-1].line} "
                           "is never closed")
        return self.graph

    # -- pieces of lines -----------------------------------------------------------
    def directive(self, s: str) -> None:
        key, _, text = s[2:].strip().partition(" ")
        if key == "example_shapes" and not text:
            self.graph.example_shapes = True
            return
        if key not in ("input_schema", "output_schema"):
            self.fail(0, f"unknown directive {key!r}; expected '#! example_shapes', "
                         "'#! input_schema ...' or '#! output_schema ...'")
        from dexport.ir.schema import schema_from_json
        try:
            setattr(self.graph, key, schema_from_json(text))
        except DexportError as e:
            self.fail(s.find(text), f"bad {key}: {e.what}")

    def header(self, s: str) -> None:
        if not s.startswith("graph(") or not s.endswith(") {"):
            self.fail(0, "expected 'graph(%input: type, ...) {'")
        g = self.graph
        names, types = self.decls(s, 6, len(s) - 3)
        self.define([g.add_input(t) for t in types], names, 0)

    def block_header(self, s: str, node: Node) -> _BlockFrame:
        lp = s.find("(")
        if lp < 0 or not s.endswith(") {"):
            self.fail(0, "expected a block header 'blockN(%param: type, ...) {'")
        if s[5:lp] != str(len(node.blocks)):
            self.fail(5, f"expected block number {len(node.blocks)}")
        block = node.add_block()
        names, types = self.decls(s, lp + 1, len(s) - 3)
        self.define([block.add_param(t) for t in types], names, 0)
        return _BlockFrame(block, self.ln)

    def returns(self, s: str, frame: _BlockFrame) -> None:
        if not s.endswith(")"):
            self.fail(len(s), "expected ')' closing the returned values")
        frame.block.set_returns(self.refs(s, 8, len(s) - 1))
        frame.returned = True

    def node_line(self, s: str, block: Block) -> _NodeFrame | None:
        """Read one node into ``block``; returns a frame when the node opens blocks."""
        n = len(s)
        p = 0
        names: list[str] = []
        types: list[Type] = []
        if s[0] == "%":
            eq = s.find(" = ")
            if eq < 0:
                self.fail(n, "expected ' = op(...)' after the output declarations")
            names, types = self.decls(s, 0, eq)
            p = eq + 3
        lp = s.find("(", p)
        if lp < 0:
            self.fail(p, "expected an op name followed by '(' (or 'return (...)', or '}')")
        op = s[p:lp]
        if op not in self.ops:
            if not _OP.fullmatch(op):
                self.fail(p, f"expected an op name such as aten::relu, got {op!r}")
            self.ops.add(op)
        rp = s.find(")", lp)
        if rp < 0:
            self.fail(n, "expected ')' closing the inputs")
        inputs = self.refs(s, lp + 1, rp) if rp > lp + 1 else []
        p = rp + 1
        attrs = meta = None
        opens = False
        if p < n:
            if s.startswith(" {", p):
                if p + 2 == n or s.startswith("  #", p + 2):
                    opens, p = True, p + 2
                else:
                    attrs, p = self.attrs(s, p + 1)
                    if s.startswith(" {", p) and (p + 2 == n or s.startswith("  #", p + 2)):
                        opens, p = True, p + 2
            if p < n:
                if not s.startswith("  # ", p):
                    self.fail(p, "expected attributes ' {key=value, ...}', a block opener ' {' "
                                 "or a comment '  # scope @ source [tags]'")
                meta = self.meta(s, p + 4)
        node = Node(op, inputs, types, attrs, meta)
        block.append(node)
        if opens:
            return _NodeFrame(node, names, self.ln)
        if names:
            self.define(node.outputs, names, 0)
        return None

    def define(self, values: list[Value], names: list[str], p: int) -> None:
        table = self.values
        for v, name in zip(values, names):
            if name in table:
                self.fail(p, f"value %{name} is defined twice")
            table[name] = v
            v.name_hint = None if name.isdigit() else name

    def decls(self, s: str, start: int, end: int) -> tuple[list[str], list[Type]]:
        """``%a: T, %b: U`` in ``s[start:end]`` (empty allowed): the names and the types."""
        names: list[str] = []
        types: list[Type] = []
        if start == end:
            return names, types
        known = self.types
        p = start
        for part in s[start:end].split(", %"):
            if p != start:
                part = "%" + part
            colon = part.find(": ")
            if colon < 0 or part[0] != "%" or not _NAME.fullmatch(part, 1, colon):
                self.fail(p, "expected a value declaration '%name: type'")
            text = part[colon + 2:]
            typ = known.get(text)
            if typ is None:
                try:
                    typ = known[text] = parse_type(text)
                except IRParseError as e:
                    self.fail(p + colon + 2, f"bad type: {e.what}")
            names.append(part[1:colon])
            types.append(typ)
            p += len(part) + 2
        return names, types

    def refs(self, s: str, start: int, end: int) -> list[Value]:
        """``%a, %b`` in ``s[start:end]`` (empty allowed), resolved to defined values."""
        if start == end:
            return []
        values = self.values
        out = []
        p = start
        for part in s[start:end].split(", "):
            v = values.get(part[1:]) if part[:1] == "%" else None
            if v is None:
                if part[:1] != "%" or not _NAME.fullmatch(part, 1):
                    self.fail(p, f"expected a value reference '%name', got {part!r}")
                self.fail(p, f"use of undefined value {part}",
                          hint="define the value on an earlier line (values are SSA: one "
                               "definition, before every use)")
            out.append(v)
            p += len(part) + 2
        return out

    # -- attributes ----------------------------------------------------------------
    def attrs(self, s: str, p: int) -> tuple[dict[str, Any], int]:
        """``{key=value, ...}`` starting at ``s[p] == '{'``; returns (attrs, end)."""
        attrs: dict[str, Any] = {}
        p += 1
        while True:
            if s.startswith('"', p):
                key, p = self.string(s, p)
            else:
                m = _KEY.match(s, p)
                if not m:
                    self.fail(p, "expected an attribute name")
                key, p = m.group(), m.end()
            if not s.startswith("=", p):
                self.fail(p, "expected '=' after the attribute name")
            if key in attrs:
                self.fail(p, f"attribute {key!r} given twice")
            attrs[key], p = self.value(s, p + 1)
            if s.startswith(",", p):
                p += 1
                while s.startswith(" ", p):  # hand-written IR may space freely
                    p += 1
            elif s.startswith("}", p):
                return attrs, p + 1
            else:
                self.fail(p, "expected ', ' or '}' after an attribute value")

    def string(self, s: str, p: int) -> tuple[str, int]:
        try:
            return scanstring(s, p + 1)
        except ValueError as e:
            self.fail(p, f"bad string literal: {getattr(e, 'msg', e)}")

    def value(self, s: str, p: int) -> tuple[Any, int]:
        c = s[p:p + 1]
        if c == '"':
            return self.string(s, p)
        if c == "[":
            items, p = self.sequence(s, p + 1, "]")
            return items, p
        if c == "(":
            items, p = self.sequence(s, p + 1, ")")
            return tuple(items), p
        if c == "-" or "0" <= c <= "9" or s.startswith(("inf", "nan"), p):
            m = _NUMBER.match(s, p)
            if not m:
                self.fail(p, "expected a number")
            text = m.group()
            if text.isdigit() or (text[0] == "-" and text[1:].isdigit()):
                return int(text), m.end()
            return float(text), m.end()
        m = _WORD.match(s, p)
        if not m:
            self.fail(p, "expected an attribute value")
        word, end = m.group(), m.end()
        if word == "True":
            return True, end
        if word == "False":
            return False, end
        if word == "None":
            return None, end
        if word == "tensor" and s.startswith("(", end):
            return self.tensor(s, end + 1)
        if word == "device" and s.startswith('("', end):
            text, q = self.string(s, end + 1)
            if not s.startswith(")", q):
                self.fail(q, "expected ')' after the device string")
            try:
                return torch.device(text), q + 1
            except RuntimeError:
                self.fail(end + 1, f"unknown device {text!r}")
        if word.startswith("torch."):
            const = getattr(torch, word[6:], None)
            if isinstance(const, _TORCH_CONSTANTS):
                return const, end
        self.fail(p, f"unknown attribute value {word!r}; expected a number, string, True/False/None, "
                     "[list], (tuple), torch.<dtype|layout|memory_format>, device(\"...\") or tensor(...)")

    def sequence(self, s: str, p: int, close: str) -> tuple[list, int]:
        items: list = []
        if s.startswith(close, p):
            return items, p + 1
        while True:
            item, p = self.value(s, p)
            items.append(item)
            if s.startswith(close, p):
                return items, p + 1
            if s.startswith(",", p):
                p += 1
                if close == ")" and s.startswith(")", p):  # the one-element tuple "(x,)"
                    return items, p + 1
                if s.startswith(" ", p):
                    p += 1
            else:
                self.fail(p, f"expected ', ' or '{close}'")

    def tensor(self, s: str, p: int) -> tuple[torch.Tensor, int]:
        """``tensor(f32[2,2], [1.0, 2.0, 3.0, 4.0])`` after ``tensor(``."""
        close = s.find("]", p)
        typ = None
        if close > 0:
            try:
                typ = parse_type(s[p:close + 1])
            except IRParseError:
                pass
        if not isinstance(typ, TensorType) or typ.dtype is None or not typ.is_static:
            self.fail(p, "expected the tensor's dtype and static shape, e.g. f32[2,3]")
        if not s.startswith(", [", close + 1):
            self.fail(close + 1, "expected ', [values...]' after the tensor's type")
        values, q = self.sequence(s, close + 4, "]")
        if not s.startswith(")", q):
            self.fail(q, "expected ')' closing tensor(...)")
        numel = 1
        for d in typ.shape:
            numel *= d
        if len(values) != numel:
            self.fail(close + 3, f"tensor has {len(values)} values, its shape {list(typ.shape)} needs {numel}")
        try:
            if typ.dtype == torch.bfloat16:
                # Converting to bf16 drops a NaN's sign; its bits are the top half of an f32's.
                bits = torch.tensor(values, dtype=torch.float32).view(torch.int32) >> 16
                t = bits.to(torch.int16).view(torch.bfloat16)
            else:
                t = torch.tensor(values, dtype=typ.dtype)
        except (TypeError, RuntimeError, OverflowError) as e:
            self.fail(close + 3, f"bad tensor values: {e}")
        return t.reshape(typ.shape), q + 1

    # -- meta ----------------------------------------------------------------------
    def meta(self, s: str, p: int) -> Meta:
        """``scope @ source [tag1,tag2]``, each part optional."""
        n = len(s)
        scope = source = ""
        tags: list[str] = []
        if p < n and s[p] not in "@[":
            scope, p = self.meta_part(s, p, _PLAIN_PART)
            p = self.meta_gap(s, p)
        if s.startswith("@ ", p):
            source, p = self.meta_part(s, p + 2, _PLAIN_PART)
            p = self.meta_gap(s, p)
        if s.startswith("[", p):
            p += 1
            while True:
                tag, p = self.meta_part(s, p, _PLAIN_TAG)
                tags.append(tag)
                if s.startswith("]", p):
                    p += 1
                    break
                if not s.startswith(",", p):
                    self.fail(p, "expected ',' or ']' in the tag list")
                p += 1
        if p != n:
            self.fail(p, "expected '@ source' or '[tags]' in the comment, or the end of the line")
        return Meta(scope, source, tuple(tags))

    def meta_gap(self, s: str, p: int) -> int:
        if p == len(s):
            return p
        if not s.startswith(" ", p):
            self.fail(p, "expected a space between the parts of the comment")
        return p + 1

    def meta_part(self, s: str, p: int, pattern: re.Pattern) -> tuple[str, int]:
        if s.startswith('"', p):
            return self.string(s, p)
        m = pattern.match(s, p)
        if not m:
            self.fail(p, "expected a scope, source or tag")
        return m.group(), m.end()


def parse(text: str, params: dict[str, torch.Tensor] | None = None) -> Graph:
    """Build a graph from its text form; ``params`` (name -> tensor) fills ``graph.params``."""
    # A graph is millions of small objects in reference cycles (node <-> value uses):
    # letting the cyclic GC rescan them while they are created costs more than the parse.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _Parser(text, params).run()
    finally:
        if was_enabled:
            gc.enable()
