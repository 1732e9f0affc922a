"""Value / Node / Block / Graph: the in-memory IR.

Invariants (checked by ``dexport.ir.verify``):

* Every Value has exactly one producer: a Node (``value.producer``, output
  number ``value.index``) or a Block (a block parameter).
* ``value.uses`` lists every ``(node, input_index)`` that reads the value, in
  the order the uses were made. ``node.inputs`` is a tuple and ``value.uses`` a
  read-only view: both change only through the methods in this module
  (``Node.replace_input``, ``Value.replace_all_uses_with``, ...), so they cannot
  drift out of sync. A use list is an insertion-ordered dict underneath, so
  adding or dropping one use is O(1) however many uses the value has.
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
# Tensors of at most this many elements are kept inline as prim::Constant values
# (readable in the IR text, foldable); larger ones go to graph.params.
SMALL_TENSOR_NUMEL = 16


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


class Uses:
    """The uses of one value, ``(node, input_index)`` pairs in the order they were
    made: iterate, ``len``, ``in``, compare with a list. Read-only; the Node and
    Value methods change it. Indexing walks from the nearer end (``uses[0]`` and
    ``uses[-1]`` are O(1))."""
    __slots__ = ("_d",)

    def __init__(self):
        self._d: dict[tuple[Node, int], None] = {}

    def __iter__(self) -> Iterator[tuple["Node", int]]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __bool__(self) -> bool:
        return bool(self._d)

    def __contains__(self, use) -> bool:
        return use in self._d

    def __getitem__(self, i: int) -> tuple["Node", int]:
        n = len(self._d)
        if not -n <= i < n:
            raise IndexError("use index out of range")
        i %= n
        it = iter(self._d) if i < n // 2 + 1 else reversed(self._d)
        for _ in range(i if i < n // 2 + 1 else n - 1 - i):
            next(it)
        return next(it)

    def __eq__(self, other) -> bool:
        if isinstance(other, Uses):
            return list(self._d) == list(other._d)
        if isinstance(other, (list, tuple)):
            return list(self._d) == list(other)
        return NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        return f"Uses({list(self._d)!r})"


class Value:
    __slots__ = ("type", "producer", "index", "_uses", "name_hint")

    def __init__(self, type: Type, producer: "Node | Block", index: int, name_hint: str | None = None):
        self.type = type
        self.producer = producer
        self.index = index
        self._uses = Uses()
        self.name_hint = name_hint

    @property
    def uses(self) -> Uses:
        """Every ``(node, input_index)`` reading this value, in the order the uses were made."""
        return self._uses

    @property
    def node(self) -> "Node | None":
        """The producing node, or None for a block parameter."""
        return self.producer if isinstance(self.producer, Node) else None

    def replace_all_uses_with(self, new: "Value") -> None:
        """Make every reader of this value read ``new`` instead. Cost: O(uses), plus
        one rebuild of each distinct user's input tuple."""
        if new is self:
            return
        slots: dict[Node, list[int]] = {}
        added = new._uses._d
        for use in self._uses._d:
            slots.setdefault(use[0], []).append(use[1])
            added[use] = None
        for user, indices in slots.items():
            inputs = list(user._inputs)
            for i in indices:
                inputs[i] = new
            user._inputs = tuple(inputs)
        self._uses._d = {}

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
    __slots__ = ("op", "_inputs", "outputs", "attrs", "blocks", "meta", "block", "prev", "next")

    def __init__(self, op: str, inputs: Sequence[Value], output_types: Sequence[Type],
                 attrs: dict[str, Any] | None = None, meta: Meta | None = None):
        self.op = op
        self._inputs: tuple[Value, ...] = ()
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.meta = meta or Meta()
        self.blocks: list[Block] = []
        self.block: Block | None = None  # the block holding this node, once inserted
        self.prev: Node | None = None
        self.next: Node | None = None
        self.set_inputs(inputs)
        self.outputs = [Value(t, self, i) for i, t in enumerate(output_types)]

    # -- inputs and outputs -------------------------------------------------------------
    @property
    def inputs(self) -> tuple[Value, ...]:
        """The input values, read-only: change them with ``replace_input``,
        ``add_input``, ``remove_input``, ``set_inputs`` or ``Value.replace_all_uses_with``."""
        return self._inputs

    def set_inputs(self, values: Iterable[Value]) -> None:
        """Replace all inputs at once (the old ones lose these uses)."""
        if self._inputs:
            self.drop_inputs()
        values = tuple(values)
        for i, v in enumerate(values):
            if not isinstance(v, Value):
                raise TypeError(f"node input must be a Value, got {type(v).__name__}")
            v._uses._d[(self, i)] = None
        self._inputs = values

    def add_input(self, value: Value) -> None:
        if not isinstance(value, Value):
            raise TypeError(f"node input must be a Value, got {type(value).__name__}")
        value._uses._d[(self, len(self._inputs))] = None
        self._inputs += (value,)

    def replace_input(self, index: int, value: Value) -> None:
        """Read ``value`` as input ``index``. O(1) in the use lists; the input tuple
        is rebuilt (O(number of inputs))."""
        if not isinstance(value, Value):
            raise TypeError(f"node input must be a Value, got {type(value).__name__}")
        inputs = self._inputs
        index = range(len(inputs))[index]  # negative indices, and the IndexError
        del inputs[index]._uses._d[(self, index)]
        self._inputs = inputs[:index] + (value,) + inputs[index + 1:]
        value._uses._d[(self, index)] = None

    def remove_input(self, index: int) -> None:
        """Drop one input; later inputs shift down and their uses are renumbered
        (each keeping its place in its value's use list)."""
        inputs = self._inputs
        index = range(len(inputs))[index]
        del inputs[index]._uses._d[(self, index)]
        self._inputs = inputs[:index] + inputs[index + 1:]
        for j in range(index, len(self._inputs)):
            uses = self._inputs[j]._uses
            old, new = (self, j + 1), (self, j)
            uses._d = {new if u == old else u: None for u in uses._d}

    def drop_inputs(self) -> None:
        for i, v in enumerate(self._inputs):
            del v._uses._d[(self, i)]
        self._inputs = ()

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
    def returns(self) -> tuple[Value, ...]:
        return self.return_node.inputs

    def set_returns(self, values: Iterable[Value]) -> None:
        self.return_node.set_inputs(values)

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
    def outputs(self) -> tuple[Value, ...]:
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
        with them (``Node.erase`` one at a time would refuse a node whose reader is
        erased later). Cost: linear in the erased nodes and their inputs."""
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
        for r in readers:
            r.drop_inputs()
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
        dst.append(_copy_node(n, vmap))
    dst.set_returns(vmap[v] for v in src.returns)


def _copy_node(n: Node, vmap: dict[Value, Value]) -> Node:
    """A copy of ``n`` (nested blocks too) reading ``vmap``'s values; its outputs go into ``vmap``."""
    copy = Node(n.op, [vmap[v] for v in n.inputs], [o.type for o in n.outputs], dict(n.attrs), n.meta.copy())
    for o, co in zip(n.outputs, copy.outputs):
        co.name_hint = o.name_hint
        vmap[o] = co
    for b in n.blocks:
        cb = copy.add_block()
        for p in b.params:
            vmap[p] = cb.add_param(p.type, p.name_hint)
        _clone_block_body(b, cb, vmap)
    return copy


class _OuterValues(dict):
    """A value map in which a value defined outside the copied block maps to itself."""

    def __missing__(self, value: Value) -> Value:
        return value


def copy_block_before(block: Block, anchor: Node, args: dict[Value, Value]) -> list[Value]:
    """Insert a copy of ``block``'s nodes before ``anchor`` (in ``anchor``'s block),
    its parameters reading ``args[param]``, and return what the copy returns. The
    copies read outer values as the block did (inlining a branch, unrolling a loop)."""
    vmap = _OuterValues(args)
    for n in block.nodes:
        _copy_node(n, vmap).insert_before(anchor)
    return [vmap[v] for v in block.returns]
