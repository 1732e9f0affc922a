"""Value / Node / Block / Graph: the in-memory IR.

Invariants (checked by ``dexport.ir.verify``):

* Every Value has exactly one producer: a Node (``value.producer``, output
  number ``value.index``) or a Block (a block parameter).
* ``value.uses`` lists every ``(node, input_index)`` that reads the value, in
  the order the uses were made. Use lists change only through the methods in
  this module, so they cannot drift out of sync with ``node.inputs``.
* A Block is a doubly-linked list of Nodes ended by a ``prim::Return`` node
  whose inputs are the block's results. Iteration order is the list order, so
  everything built on it (printing, passes, emission) is deterministic.
* Names are not identity: values are named when printed; ``name_hint`` only
  suggests a name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import torch

from dexport.ir.errors import DexportError
from dexport.ir.types import Type

RETURN = "prim::Return"
PARAM = "prim::Param"        # reads graph.params[attrs["name"]]
CONSTANT = "prim::Constant"  # attrs["value"]


@dataclass
class Meta:
    """Where a node came from: the module scope (``backbone.res2.0.conv1``), the
    user's source line (``models/resnet.py:42``) and free-form tags such as
    ``postprocess``."""
    scope: str = ""
    source: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)

    def copy(self) -> "Meta":
        return Meta(self.scope, self.source, tuple(self.tags))


class Value:
    __slots__ = ("type", "producer", "index", "uses", "name_hint")

    def __init__(self, type: Type, producer: "Node | Block", index: int, name_hint: str | None = None):
        self.type = type
        self.producer = producer
        self.index = index
        self.uses: list[tuple[Node, int]] = []
        self.name_hint = name_hint

    @property
    def node(self) -> "Node | None":
        """The producing node, or None for a block parameter."""
        return self.producer if isinstance(self.producer, Node) else None

    def replace_all_uses_with(self, new: "Value") -> None:
        if new is self:
            return
        for user, i in self.uses:
            user.inputs[i] = new
            new.uses.append((user, i))
        self.uses = []

    def users(self) -> list["Node"]:
        """Distinct using nodes, in use order."""
        seen: dict[int, Node] = {}
        for user, _ in self.uses:
            seen.setdefault(id(user), user)
        return list(seen.values())

    def __repr__(self) -> str:
        where = self.producer.op if isinstance(self.producer, Node) else "block-param"
        return f"<Value {self.name_hint or ''}:{self.type} from {where}#{self.index}>"


class Node:
    __slots__ = ("op", "inputs", "outputs", "attrs", "blocks", "meta", "block", "prev", "next")

    def __init__(self, op: str, inputs: Sequence[Value], output_types: Sequence[Type],
                 attrs: dict[str, Any] | None = None, meta: Meta | None = None):
        self.op = op
        self.inputs: list[Value] = []
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.meta = meta or Meta()
        self.blocks: list[Block] = []
        self.block: Block | None = None  # the block holding this node, once inserted
        self.prev: Node | None = None
        self.next: Node | None = None
        for v in inputs:
            self.add_input(v)
        self.outputs = [Value(t, self, i) for i, t in enumerate(output_types)]

    # -- inputs and outputs -------------------------------------------------------------
    def add_input(self, value: Value) -> None:
        if not isinstance(value, Value):
            raise TypeError(f"node input must be a Value, got {type(value).__name__}")
        value.uses.append((self, len(self.inputs)))
        self.inputs.append(value)

    def replace_input(self, index: int, value: Value) -> None:
        old = self.inputs[index]
        old.uses.remove((self, index))
        self.inputs[index] = value
        value.uses.append((self, index))

    def remove_input(self, index: int) -> None:
        """Drop one input; later inputs shift down and their uses are renumbered."""
        old = self.inputs.pop(index)
        old.uses.remove((self, index))
        for j in range(index, len(self.inputs)):
            uses = self.inputs[j].uses
            uses[uses.index((self, j + 1))] = (self, j)

    def drop_inputs(self) -> None:
        for i, v in enumerate(self.inputs):
            v.uses.remove((self, i))
        self.inputs = []

    def add_output(self, type: Type) -> Value:
        v = Value(type, self, len(self.outputs))
        self.outputs.append(v)
        return v

    def remove_output(self, index: int) -> None:
        """Drop an unused output; later outputs shift down (their ``index`` follows)."""
        v = self.outputs[index]
        if v.uses:
            raise DexportError(f"cannot remove output {index} of {self.op}: it is still used by {v.uses[0][0].op}",
                               op=self.op, scope=self.meta.scope, source=self.meta.source)
        del self.outputs[index]
        for j in range(index, len(self.outputs)):
            self.outputs[j].index = j

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise DexportError(f"{self.op} has {len(self.outputs)} outputs, not one", op=self.op,
                               scope=self.meta.scope, source=self.meta.source)
        return self.outputs[0]

    def add_block(self) -> "Block":
        b = Block(owner=self)
        self.blocks.append(b)
        return b

    # -- position in the graph ---------------------------------------------------------
    def insert_before(self, anchor: "Node") -> "Node":
        anchor.block._link(self, anchor.prev, anchor)
        return self

    def insert_after(self, anchor: "Node") -> "Node":
        if anchor.op == RETURN:
            raise DexportError("cannot insert after a block's return node", op=anchor.op)
        anchor.block._link(self, anchor, anchor.next)
        return self

    def move_before(self, anchor: "Node") -> None:
        self.block._unlink(self)
        self.insert_before(anchor)

    def erase(self) -> None:
        """Remove this node; its outputs must have no uses left."""
        for out in self.outputs:
            if out.uses:
                user = out.uses[0][0]
                raise DexportError(
                    f"cannot erase {self.op}: output {out.index} is still used by {user.op}",
                    op=self.op, scope=self.meta.scope, source=self.meta.source,
                    hint="replace the uses first (value.replace_all_uses_with)")
        for b in self.blocks:
            _drop_block_inputs(b)
        self.drop_inputs()
        if self.block is not None:
            self.block._unlink(self)

    def replace_all_uses_with(self, values: Sequence[Value]) -> None:
        if len(values) != len(self.outputs):
            raise DexportError(f"{self.op}: {len(values)} replacements for {len(self.outputs)} outputs",
                               op=self.op)
        for old, new in zip(self.outputs, values):
            old.replace_all_uses_with(new)

    @property
    def graph(self) -> "Graph | None":
        b = self.block
        while b is not None:
            if isinstance(b.owner, Graph):
                return b.owner
            b = b.owner.block
        return None

    def __repr__(self) -> str:
        return f"<Node {self.op} in={len(self.inputs)} out={len(self.outputs)}>"


class Block:
    """An ordered list of nodes with parameters and a return node."""
    __slots__ = ("owner", "params", "return_node", "_head", "_len")

    def __init__(self, owner: "Node | Graph"):
        self.owner = owner
        self.params: list[Value] = []
        self._head = Node("prim::Head", [], [])  # sentinel: _head.next is the first node
        self.return_node = Node(RETURN, [], [])
        self._head.block = self.return_node.block = self
        self._head.next = self.return_node
        self.return_node.prev = self._head
        self._len = 0

    def add_param(self, type: Type, name_hint: str | None = None) -> Value:
        v = Value(type, self, len(self.params), name_hint)
        self.params.append(v)
        return v

    def remove_param(self, index: int) -> None:
        v = self.params[index]
        if v.uses:
            raise DexportError(f"cannot remove block parameter {index}: it is still used by {v.uses[0][0].op}")
        del self.params[index]
        for j, p in enumerate(self.params):
            p.index = j

    @property
    def returns(self) -> list[Value]:
        return self.return_node.inputs

    def set_returns(self, values: Iterable[Value]) -> None:
        self.return_node.drop_inputs()
        for v in values:
            self.return_node.add_input(v)

    def append(self, node: Node) -> Node:
        self._link(node, self.return_node.prev, self.return_node)
        return node

    @property
    def nodes(self) -> Iterator[Node]:
        """The nodes in order (excluding the return node). Safe against erasing the current node."""
        n = self._head.next
        while n is not self.return_node:
            nxt = n.next
            yield n
            n = nxt

    def reversed_nodes(self) -> Iterator[Node]:
        n = self.return_node.prev
        while n is not self._head:
            prv = n.prev
            yield n
            n = prv

    def __len__(self) -> int:
        return self._len

    def _link(self, node: Node, prev: Node, nxt: Node) -> None:
        if node.block is not None:
            raise DexportError(f"{node.op} is already in a block; use move_before", op=node.op)
        node.block, node.prev, node.next = self, prev, nxt
        prev.next = node
        nxt.prev = node
        self._len += 1

    def _unlink(self, node: Node) -> None:
        node.prev.next = node.next
        node.next.prev = node.prev
        node.block = node.prev = node.next = None
        self._len -= 1


class Graph:
    """A whole program: the top block, the parameters/constants table, and the
    structured input/output schemas (``dexport.ir.schema``) that let
    ``graph(*inputs)`` take and return the model's own structures."""

    def __init__(self):
        self.block = Block(owner=self)
        self.params: dict[str, torch.Tensor] = {}
        self.input_schema = None   # a dexport.ir.schema.Schema, or None for flat tensors
        self.output_schema = None
        # True when int dims in the types were observed on example inputs (a trace)
        # rather than proven: passes must not treat them as facts about every input.
        self.example_shapes = False

    # -- inputs / outputs --------------------------------------------------------------
    @property
    def inputs(self) -> list[Value]:
        return self.block.params

    @property
    def outputs(self) -> list[Value]:
        return self.block.returns

    def add_input(self, type: Type, name_hint: str | None = None) -> Value:
        return self.block.add_param(type, name_hint)

    def set_outputs(self, values: Iterable[Value]) -> None:
        self.block.set_returns(values)

    # -- building ----------------------------------------------------------------------
    def create_node(self, op: str, inputs: Sequence[Value] = (), output_types: Sequence[Type] = (),
                    attrs: dict[str, Any] | None = None, meta: Meta | None = None,
                    *, before: Node | None = None, after: Node | None = None,
                    block: Block | None = None) -> Node:
        """Make a node and insert it before/after an anchor, or at the end of ``block``
        (default: the top block)."""
        node = Node(op, inputs, output_types, attrs, meta)
        if before is not None:
            node.insert_before(before)
        elif after is not None:
            node.insert_after(after)
        else:
            (self.block if block is None else block).append(node)
        return node

    def add_param(self, name: str, tensor: torch.Tensor, *, before: Node | None = None) -> Value:
        """Register ``tensor`` in the parameters table and return the value of a
        ``prim::Param`` node that reads it."""
        from dexport.ir.types import tensor_type_of
        self.params[name] = tensor
        anchor = before or self.block._head.next
        node = self.create_node(PARAM, (), [tensor_type_of(tensor)], {"name": name}, before=anchor)
        node.output.name_hint = name
        return node.output

    def unique_param_name(self, base: str) -> str:
        name, k = base, 0
        while name in self.params:
            k += 1
            name = f"{base}.{k}"
        return name

    # -- walking -----------------------------------------------------------------------
    def nodes(self) -> Iterator[Node]:
        """Every node of every block, in pre-order (a node before its nested blocks' nodes)."""
        stack: list[Iterator[Node]] = [self.block.nodes]
        while stack:
            for n in stack[-1]:
                yield n
                if n.blocks:
                    for b in reversed(n.blocks):
                        stack.append(b.nodes)
                    break
            else:
                stack.pop()

    def erase_nodes(self, nodes: Iterable[Node]) -> None:
        """Erase many nodes at once; their outputs may be used only by nodes erased
        with them. Cost: one sweep over the use lists of the values they read.
        (``Node.erase`` one at a time rescans a shared value's use list per reader,
        which is quadratic when, say, 100k dead nodes read one constant.)"""
        top: list[Node] = []
        gone: set[int] = set()        # ids of every erased node, nested ones and returns too
        readers: list[Node] = []

        def collect(n: Node) -> None:
            gone.add(id(n))
            readers.append(n)
            for b in n.blocks:
                for inner in b.nodes:
                    collect(inner)
                collect(b.return_node)

        for n in nodes:
            if id(n) not in gone:
                top.append(n)
                collect(n)
        for n in top:
            for out in n.outputs:
                for user, _ in out.uses:
                    if id(user) not in gone:
                        raise DexportError(
                            f"cannot erase {n.op}: output {out.index} is still used by {user.op}",
                            op=n.op, scope=n.meta.scope, source=n.meta.source,
                            hint="replace the uses first (value.replace_all_uses_with)")
        touched: dict[int, Value] = {}
        for r in readers:
            for v in r.inputs:
                touched.setdefault(id(v), v)
            r.inputs = []
        for v in touched.values():
            v.uses = [u for u in v.uses if id(u[0]) not in gone]
        for n in top:
            if n.block is not None:
                n.block._unlink(n)

    def find_nodes(self, op: str) -> list[Node]:
        return [n for n in self.nodes() if n.op == op]

    def __len__(self) -> int:
        return sum(1 for _ in self.nodes())

    # -- copying -----------------------------------------------------------------------
    def clone(self) -> "Graph":
        """A structurally independent copy; parameter tensors are shared, not copied."""
        g = Graph()
        g.params = dict(self.params)
        g.input_schema, g.output_schema = self.input_schema, self.output_schema
        g.example_shapes = self.example_shapes
        vmap: dict[Value, Value] = {}
        for p in self.inputs:
            vmap[p] = g.add_input(p.type, p.name_hint)
        _clone_block_body(self.block, g.block, vmap)
        return g

    # -- text, running -----------------------------------------------------------------
    def __str__(self) -> str:
        from dexport.ir.printer import print_graph
        return print_graph(self)

    def __call__(self, *inputs):
        """Run the graph with the interpreter on the model's structured inputs."""
        from dexport.ir.interpreter import run_structured
        return run_structured(self, inputs)


def _drop_block_inputs(block: Block) -> None:
    for n in block.reversed_nodes():
        for b in n.blocks:
            _drop_block_inputs(b)
        n.drop_inputs()
    block.return_node.drop_inputs()


def _clone_block_body(src: Block, dst: Block, vmap: dict[Value, Value]) -> None:
    for n in src.nodes:
        copy = Node(n.op, [vmap[v] for v in n.inputs], [o.type for o in n.outputs],
                    dict(n.attrs), n.meta.copy())
        for o, co in zip(n.outputs, copy.outputs):
            co.name_hint = o.name_hint
            vmap[o] = co
        for b in n.blocks:
            cb = copy.add_block()
            for p in b.params:
                vmap[p] = cb.add_param(p.type, p.name_hint)
            _clone_block_body(b, cb, vmap)
        dst.append(copy)
    dst.set_returns(vmap[v] for v in src.returns)
