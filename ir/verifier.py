"""The IR verifier: one walk that checks a graph's invariants for an IR stage.

Stages (each includes the checks of the ones before it):

* ``"captured"``: the structure every graph keeps. Values are defined once, before
  their uses, and used only inside the block that defines them or blocks nested in
  it; block parameters are not used outside their block, nor from a block that is
  not attached to the graph; every node's inputs agree with its inputs' use lists,
  both ways; ops exist and have their schema's number of inputs and outputs;
  ``prim::If``/``prim::Loop`` blocks return what the node's outputs (and a loop's
  carried values) declare; ``prim::Return`` only ends blocks; ``prim::Param`` names
  exist in ``graph.params`` (when the graph has any).
* ``"typed"``: every node's outputs agree with what its op's type rule
  (``OpDef.type_rule``) computes from the inputs and attributes, where the op has
  one: as many outputs, and types that do not contradict it (dtypes, ranks, int
  dims, list/tuple/optional/record structure agree where both sides know them; a
  symbolic or unknown dim, an unknown dtype or rank, ``Any`` agree with anything).
* ``"tensors-only"``: no record values, no ``struct::*`` ops and no ops that write to
  their arguments (in-place, ``out=``; run ``functionalize``) are left.
* ``"backend-ready"``: every value is a tensor, a scalar (not ``Any``) or a list of
  those, so any backend can express it.

A failure raises ``VerificationError`` naming the node (op, module scope, source
line), showing the printed IR around it and saying what to do. The walk is linear
in the graph size: each value and each use is looked at a constant number of times.
"""
from __future__ import annotations

from typing import Any

from dexport.ir.errors import DexportError, VerificationError
from dexport.ir.graph import PARAM, RETURN, Block, Graph, Node, Value
from dexport.ir.printer import _format_context
from dexport.ir.types import (ListType, OptionalType, RecordType, ScalarType, TensorType,
                              TupleType, Type, dtype_to_text)

STAGES = ("captured", "typed", "tensors-only", "backend-ready")
_TYPED, _TENSORS_ONLY, _BACKEND_READY = 1, 2, 3

_PASS_BUG = "this is a bug in whatever built or last rewrote the graph (a pass or a frontend)"


def verify(graph: "Graph | Program", stage: str = "captured") -> None:
    """Check ``graph`` for ``stage``; raise ``VerificationError`` at the first problem.
    A ``Program`` is checked graph by graph, then as a whole (``Program.verify``)."""
    if stage not in STAGES:
        raise DexportError(f"unknown IR stage {stage!r}", hint=f"use one of {', '.join(STAGES)}")
    if not isinstance(graph, Graph):
        from dexport.ir.program import Program
        if isinstance(graph, Program):
            return graph.verify(stage)
    _Verifier(graph, STAGES.index(stage)).run()


class _Verifier:
    def __init__(self, graph: Graph, level: int):
        self.graph = graph
        self.level = level                      # index into STAGES
        self.defined: dict[Value, Node | Block] = {}   # every value, in definition order
        self.visible: set[Value] = set()         # values usable at the current point
        self.reads: dict[Value, int] = {}        # number of input slots reading each value
        self.in_graph: set[Node] = set()         # every node walked, return nodes included
        self.opdefs: dict[str, Any] = {}
        self.type_problems: dict[int, tuple[Type, str | None]] = {}
        self._context: tuple[Node | Block, str] | None = None  # set by namer()

    # -- errors --------------------------------------------------------------------
    def namer(self, where: Node | Block):
        """A function giving values the names they have in the context printed around
        ``where``, so a message names them as the IR lines it shows do."""
        context, names = _format_context(self.graph, where, 3)
        self._context = (where, context)
        return lambda v: self.describe(v, names)

    def fail(self, what: str, where: Node | Block, hint: str = _PASS_BUG) -> None:
        """Raise for ``where`` (a node, a block's return node, or a block: its header)."""
        if self._context is not None and self._context[0] is where:
            context = self._context[1]
        else:
            context = _format_context(self.graph, where, 3)[0]
        node = where if isinstance(where, Node) else where.owner
        if isinstance(node, Node):
            if node.op == RETURN and isinstance(node.block.owner, Node):
                node = node.block.owner  # a block's return: report the node owning the block
            op, scope, source = node.op, node.meta.scope, node.meta.source
        else:
            op, scope, source = None, None, None
        raise VerificationError(f"{STAGES[self.level]} IR: {what}", op=op, scope=scope,
                                source=source, hint=hint, context=context)

    @staticmethod
    def describe(v: Value, names: dict[Value, str]) -> str:
        if v in names:
            return "%" + names[v]
        if isinstance(v.producer, Node):
            return f"output {v.index} of {v.producer.op}"
        return f"block parameter {v.index}"

    # -- the walk ------------------------------------------------------------------
    def run(self) -> None:
        top = self.graph.block
        if top.owner is not self.graph:
            self.fail("the graph's top block belongs to something else", top)
        self.walk_block(top)
        self.check_use_lists()

    def walk_block(self, block: Block) -> None:
        local: list[Value] = []
        for i, p in enumerate(block.params):
            self.define(p, block, i, block, local)
        visible, reads, in_graph = self.visible, self.reads, self.in_graph
        defined, level = self.defined, self.level
        for node in block.nodes:
            if node.block is not block:
                self.fail(f"{node.op} sits in a block's node list but its .block points elsewhere",
                          node, hint="insert and move nodes only with the Node/Graph methods")
            if node.op == RETURN:
                self.fail("prim::Return in the middle of a block; it may only end one", node)
            in_graph.add(node)
            for v in node.inputs:
                if v not in visible:
                    self.not_visible(v, node)
                reads[v] = reads.get(v, 0) + 1
            self.check_node(node)
            if node.blocks:
                for b in node.blocks:
                    if b.owner is not node:
                        self.fail(f"a block of {node.op} says another node owns it", node)
                    self.walk_block(b)
                self.check_block_results(node)
            for i, o in enumerate(node.outputs):
                if level >= _TENSORS_ONLY or o in defined or o.producer is not node or o.index != i:
                    self.define(o, node, i, node, local)  # the full checks, and the error
                else:
                    defined[o] = node
                    visible.add(o)
                    local.append(o)
            if level >= _TYPED:
                self.check_type_rule(node)
        ret = block.return_node
        if ret.op != RETURN or ret.block is not block:
            self.fail("a block's terminator is not its own prim::Return", block)
        in_graph.add(ret)
        for v in ret.inputs:
            if v not in visible:
                self.not_visible(v, ret)
            reads[v] = reads.get(v, 0) + 1
        visible.difference_update(local)

    def define(self, v: Value, producer: Node | Block, index: int, where: Node | Block,
               local: list[Value]) -> None:
        if v in self.defined:
            first = self.defined[v]
            first_desc = first.op if isinstance(first, Node) else "a block's parameters"
            name = self.namer(where)
            self.fail(f"value {name(v)} is defined twice: it is also an output or parameter of "
                      f"{first_desc}", where,
                      hint="create a new Value for each definition (Node.add_output, Block.add_param); "
                           + _PASS_BUG)
        if v.producer is not producer or v.index != index:
            name = self.namer(where)
            self.fail(f"value {name(v)} is listed as definition #{index} here, but says it is "
                      f"#{v.index} of {getattr(v.producer, 'op', 'a block')}", where,
                      hint="create a new Value for each definition (Node.add_output, Block.add_param); "
                           + _PASS_BUG)
        self.defined[v] = producer
        self.visible.add(v)
        local.append(v)
        if self.level >= _TENSORS_ONLY:
            problem = self.type_problem(v.type)
            if problem:
                name = self.namer(where)
                self.fail(f"value {name(v)} has type {v.type}: {problem}", where,
                          hint=self.stage_hint())

    # -- uses ----------------------------------------------------------------------
    def not_visible(self, v: Value, user: Node) -> None:
        producer = v.producer
        name = self.namer(user)(v)
        if isinstance(producer, Block):
            if not self.attached(producer):
                self.fail(f"{name} is a parameter of a block that is not attached to the graph "
                          "(a dangling block parameter)", user,
                          hint="replace its uses with a value of this block before dropping the block; "
                               + _PASS_BUG)
            self.fail(f"block parameter {name} is used outside its block", user)
        if v in self.defined:
            self.fail(f"{name} is used outside the block that defines it", user,
                      hint="a value defined in a prim::If/prim::Loop block is visible only inside "
                           "that block; return it from the block instead")
        if isinstance(producer, Node) and producer.block is not None and self.attached(producer.block):
            self.fail(f"{name} is used before its definition (by {producer.op}, later in the graph)",
                      user, hint="move the defining node before its first use; " + _PASS_BUG)
        self.fail(f"{name} is used but its producer is not in the graph (erased or never inserted)",
                  user, hint="insert the producing node, or replace the use; " + _PASS_BUG)

    def attached(self, block: Block) -> bool:
        while True:
            owner = block.owner
            if isinstance(owner, Graph):
                return owner is self.graph
            if owner.block is None or block not in owner.blocks:
                return False
            block = owner.block

    def check_use_lists(self) -> None:
        """Each (node, i) in a value's uses must be a walked node whose input i is the
        value (a use list holds each pair at most once by construction); and as many
        uses as input slots read the value."""
        in_graph, reads = self.in_graph, self.reads
        hint = "change inputs only with Node/Value methods (replace_input, replace_all_uses_with)"
        for v, producer in self.defined.items():
            uses = v.uses
            for user, i in uses:
                if user not in in_graph:
                    name = self.namer(producer)
                    self.fail(f"{name(v)} lists a use by {user.op}, which is not in the graph "
                              "(the use list is out of sync)", producer,
                              hint="drop a node's inputs (Node.erase / drop_inputs) when removing it; "
                                   + hint)
                if i >= len(user.inputs) or user.inputs[i] is not v:
                    name = self.namer(user)
                    self.fail(f"{name(v)} lists a use as input {i} of this node, but that input is "
                              "something else (the use list is out of sync)", user, hint=hint)
            if len(uses) != reads.get(v, 0):
                self.missing_use(v, producer, hint)

    def missing_use(self, v: Value, producer: Node | Block, hint: str) -> None:
        listed = {(id(u), i) for u, i in v.uses}
        for node in _nodes_and_returns(self.graph.block):
            for i, x in enumerate(node.inputs):
                if x is v and (id(node), i) not in listed:
                    name = self.namer(node)
                    self.fail(f"this node reads {name(v)} as input {i}, but the value's use list "
                              "does not say so (the use list is out of sync)", node, hint=hint)
        name = self.namer(producer)
        self.fail(f"{name(v)}'s use list does not match the inputs that read it", producer, hint=hint)

    # -- nodes ---------------------------------------------------------------------
    def check_node(self, node: Node) -> None:
        op = node.op
        opdef = self.opdefs.get(op)
        if opdef is None:
            from dexport.ir.ops import get_op
            try:
                opdef = self.opdefs[op] = get_op(op)
            except DexportError as e:
                self.fail(e.what, node, hint=e.hint or _PASS_BUG)
        if opdef.num_inputs is not None and len(node.inputs) != opdef.num_inputs:
            self.fail(f"{op} takes {opdef.num_inputs} inputs{self.schema_note(opdef)}, "
                      f"this node has {len(node.inputs)}", node,
                      hint="an ATen node carries every schema argument as an input, in schema order, "
                           "defaults included (as prim::Constant values)")
        if opdef.num_outputs is not None and len(node.outputs) != opdef.num_outputs:
            self.fail(f"{op} returns {opdef.num_outputs} outputs{self.schema_note(opdef)}, "
                      f"this node has {len(node.outputs)}", node)
        if op == PARAM:
            name = node.attrs.get("name")
            if not isinstance(name, str):
                self.fail("prim::Param has no 'name' attribute", node)
            if self.graph.params and name not in self.graph.params:
                self.fail(f"prim::Param reads {name!r}, which is not in graph.params", node,
                          hint="add the tensor with graph.add_param(name, tensor), or fix the name")
        elif self.level >= _TENSORS_ONLY and op.startswith("struct::"):
            self.fail(f"{op} is left in the graph", node, hint=self.stage_hint())
        elif self.level >= _TENSORS_ONLY and opdef.schema is not None and opdef.schema.is_mutable:
            self.fail(f"{op} writes to one of its arguments (mutation is left in the graph)", node,
                      hint="run the 'functionalize' pass first (it runs first in the default pipeline)")
        if op == "prim::If":
            if len(node.blocks) != 2 or any(b.params for b in node.blocks):
                self.fail("prim::If needs exactly two blocks, without parameters", node)
        elif op == "prim::Loop":
            carried = len(node.inputs) - 2
            if carried < 0 or len(node.blocks) != 1:
                self.fail("prim::Loop needs inputs (max_trip, cond, carried...) and exactly one block",
                          node)
            if len(node.outputs) != carried or len(node.blocks[0].params) != carried + 1:
                self.fail(f"prim::Loop carries {carried} values, so it needs {carried} outputs and a "
                          f"body with {carried + 1} parameters (iter, carried...); it has "
                          f"{len(node.outputs)} and {len(node.blocks[0].params)}", node)

    def check_type_rule(self, node: Node) -> None:
        """After the node's outputs are defined, so a stage's own check on a value's
        type (records, Any) speaks first."""
        opdef = self.opdefs[node.op]
        if opdef.type_rule is None:
            return
        try:
            expected = opdef.type_rule(node)
        except Exception as e:  # a rule that cannot read the node: its inputs or attrs are wrong
            self.fail(f"{node.op}'s type rule cannot read this node: {type(e).__name__}: {e}", node)
        if len(expected) != len(node.outputs):
            self.fail(f"{node.op}'s type rule gives {len(expected)} outputs, this node has "
                      f"{len(node.outputs)}", node)
        for j, (out, want) in enumerate(zip(node.outputs, expected)):
            if out.type is want or out.type == want:
                continue
            conflict = type_conflict(out.type, want)
            if conflict is not None:
                name = self.namer(node)
                self.fail(f"output {j} {name(out)}: {out.type} contradicts {want}, which {node.op}'s "
                          f"type rule gives ({conflict})", node,
                          hint="give the node the output types its op computes "
                               "(dexport.ir.ops.get_op(op).type_rule(node)); " + _PASS_BUG)

    @staticmethod
    def schema_note(opdef) -> str:
        return f" (schema: {opdef.schema})" if opdef.schema is not None else ""

    def check_block_results(self, node: Node) -> None:
        """Block returns must fit the types the node declares."""
        if node.op == "prim::If":
            for k, b in enumerate(node.blocks):
                if len(b.returns) != len(node.outputs):
                    self.fail(f"block{k} of prim::If returns {len(b.returns)} values for "
                              f"{len(node.outputs)} outputs", b.return_node)
                for j, (r, o) in enumerate(zip(b.returns, node.outputs)):
                    if not fits(r.type, o.type) and not _placeholder(r):
                        name = self.namer(b.return_node)
                        self.fail(f"block{k} of prim::If returns {name(r)}: {r.type} as output {j}, "
                                  f"declared {o.type}", b.return_node,
                                  hint="make the If's output type cover both branches "
                                       "(dexport.ir.ops.unify_types)")
        elif node.op == "prim::Loop":
            body = node.blocks[0]
            carried = len(node.outputs)
            if len(body.returns) != carried + 1:
                self.fail(f"the prim::Loop body returns {len(body.returns)} values; it must return "
                          f"(cond, {carried} carried)", body.return_node)
            for k in range(carried):
                init, param = node.inputs[2 + k], body.params[1 + k]
                ret, out = body.returns[1 + k], node.outputs[k]
                for value, declared, what in ((init, param, "initial value"),
                                              (ret, param, "body result"),
                                              (ret, out, "body result"),
                                              (init, out, "initial value")):
                    if not fits(value.type, declared.type) and not _placeholder(value):
                        where = body.return_node if what == "body result" else node
                        name = self.namer(where)
                        self.fail(f"prim::Loop carried value {k}: the {what} {name(value)} has type "
                                  f"{value.type}, which does not fit {name(declared)}: "
                                  f"{declared.type}", where,
                                  hint="a carried value keeps one type across iterations")

    # -- stages --------------------------------------------------------------------
    def stage_hint(self) -> str:
        # Only capture flattens structured values today (no pass does yet).
        if self.level == _TENSORS_ONLY:
            return ("capture through the flattening adapter (dexport.capture(..., method=\"tracing\")): "
                    "records in the model's inputs and outputs become schemas, not values; "
                    "register your own classes with dexport.register_record")
        return ("a backend takes tensors, scalars and lists of them: capture through the flattening "
                "adapter (dexport.capture(..., method=\"tracing\")), which turns structured inputs "
                "and outputs (records, tuples, optionals) into such values")

    def type_problem(self, t: Type) -> str | None:
        hit = self.type_problems.get(id(t))
        if hit is None:
            hit = self.type_problems[id(t)] = (t, self._type_problem(t))  # t kept alive: ids stay unique
        return hit[1]

    def _type_problem(self, t: Type) -> str | None:
        if _contains_record(t):
            return "records are not allowed at this stage"
        if self.level >= _BACKEND_READY:
            elem = t.elem if isinstance(t, ListType) else t
            if isinstance(elem, ScalarType) and elem.kind == "Any":
                return "Any is not allowed in a backend-ready graph"
            if not isinstance(elem, (TensorType, ScalarType)):
                return "a backend-ready value must be a tensor, a scalar or a list of those"
        return None


def _nodes_and_returns(block: Block):
    """Every node under ``block`` in print order, each block's return node included."""
    for node in block.nodes:
        yield node
        for b in node.blocks:
            yield from _nodes_and_returns(b)
    yield block.return_node


def _contains_record(t: Type) -> bool:
    if isinstance(t, RecordType):
        return True
    if isinstance(t, (ListType, OptionalType)):
        return _contains_record(t.elem)
    if isinstance(t, TupleType):
        return any(_contains_record(e) for e in t.elems)
    return False


def type_conflict(a: Type, b: Type) -> str | None:
    """Why no value can have both types ``a`` and ``b``, or None when they agree
    where both say something (unknown dtype, rank, symbolic dims and ``Any`` agree
    with anything; ``Scalar`` with int, float and bool)."""
    if a == b:
        return None
    for x, y in ((a, b), (b, a)):
        if isinstance(x, ScalarType) and (x.kind == "Any" or (
                x.kind == "Scalar" and isinstance(y, ScalarType) and y.kind in ("int", "float", "bool"))):
            return None
        if isinstance(x, OptionalType) and not isinstance(y, OptionalType):
            if isinstance(y, ScalarType) and y.kind == "None":
                return None
            return type_conflict(x.elem, y)
    if isinstance(a, TensorType) and isinstance(b, TensorType):
        if a.dtype is not None and b.dtype is not None and a.dtype != b.dtype:
            return f"dtype {dtype_to_text(a.dtype)} vs {dtype_to_text(b.dtype)}"
        if a.shape is None or b.shape is None:
            return None
        if len(a.shape) != len(b.shape):
            return f"rank {len(a.shape)} vs {len(b.shape)}"
        for k, (x, y) in enumerate(zip(a.shape, b.shape)):
            if isinstance(x, int) and isinstance(y, int) and x != y:
                return f"dim {k}: {x} vs {y}"
        return None
    if type(a) is not type(b):
        return f"{type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, (ListType, OptionalType)):
        inner = type_conflict(a.elem, b.elem)
        return None if inner is None else f"element: {inner}"
    if isinstance(a, TupleType):
        if len(a.elems) != len(b.elems):
            return f"{len(a.elems)} vs {len(b.elems)} tuple elements"
        for k, (x, y) in enumerate(zip(a.elems, b.elems)):
            inner = type_conflict(x, y)
            if inner is not None:
                return f"element {k}: {inner}"
        return None
    if isinstance(a, RecordType):
        if a.kind != b.kind or [n for n, _ in a.fields] != [n for n, _ in b.fields]:
            return f"record {a.kind} vs {b.kind} or other fields"
        for (n, x), (_, y) in zip(a.fields, b.fields):
            inner = type_conflict(x, y)
            if inner is not None:
                return f"field {n}: {inner}"
        return None
    return f"{a} vs {b}"


def fits(actual: Type, declared: Type) -> bool:
    """Whether a value of type ``actual`` may flow where ``declared`` is expected:
    equal types, or ``declared`` knows less (unknown dtype/rank, a symbolic dim, Any,
    an optional of it)."""
    if actual == declared:
        return True
    if isinstance(declared, ScalarType) and declared.kind == "Any":
        return True
    if isinstance(declared, OptionalType):
        return (isinstance(actual, ScalarType) and actual.kind == "None") or fits(
            actual.elem if isinstance(actual, OptionalType) else actual, declared.elem)
    if isinstance(declared, TensorType):
        if not isinstance(actual, TensorType):
            return False
        if declared.dtype is not None and actual.dtype != declared.dtype:
            return False
        if declared.shape is None:
            return True
        if actual.shape is None or len(actual.shape) != len(declared.shape):
            return False
        return all(not isinstance(d, int) or a == d for a, d in zip(actual.shape, declared.shape))
    if isinstance(declared, ScalarType):
        return (declared.kind == "Scalar" and isinstance(actual, ScalarType)
                and actual.kind in ("int", "float", "bool"))
    if isinstance(declared, ListType):
        return isinstance(actual, ListType) and fits(actual.elem, declared.elem)
    if isinstance(declared, TupleType):
        return (isinstance(actual, TupleType) and len(actual.elems) == len(declared.elems)
                and all(fits(a, d) for a, d in zip(actual.elems, declared.elems)))
    if isinstance(declared, RecordType):
        return (isinstance(actual, RecordType) and actual.kind == declared.kind
                and [n for n, _ in actual.fields] == [n for n, _ in declared.fields]
                and all(fits(a, d) for (_, a), (_, d) in zip(actual.fields, declared.fields)))
    return False


def _placeholder(value: Value) -> bool:
    """TorchScript's ``prim::Uninitialized``: a value no path reads, so it fits any slot."""
    return value.node is not None and value.node.op == "prim::Uninitialized"
