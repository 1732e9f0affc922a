"""``staticize-instances``: scalar replacement of records (Instances, Boxes, ...).

A scripted graph builds its records with the struct dialect (``struct::construct``,
the functional ``struct::set``, ``struct::get``; ``dexport.frontends.jit_importer``
makes them from TorchScript's objects). Every record value whose field set is known
becomes its fields: a ``struct::get`` reads the field's value directly, construct
and set disappear, a record leaving a ``prim::If`` becomes one If output per field,
and a loop-carried record one carried value per field. ``x is None`` tests on fields
are decided on the way (a field either holds a value or the None it was declared
with), and an If they decide is inlined, so the static ``Instances``' "is this field
set?" branches vanish. Records the graph returns become their fields, and the
graph's output schema rebuilds them (``RecordSchema``: registered kinds such as
Instances come back as the user's class).

A field set on one path and not on another (``if c: inst.pred_masks = m``) has no
static form: the pass stops with a ``PassError`` naming both paths' source lines.
A record stored in a list (``results.append(inst)``) stays a record there: it is
rebuilt from its fields with one ``struct::construct`` where the list needs it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dexport.ir.errors import PassError
from dexport.ir.graph import CONSTANT, RETURN, Block, Graph, Node, Value, copy_block_before
from dexport.ir.ops import unify_types
from dexport.ir.schema import ConstSchema, DictSchema, RecordSchema, Schema, SequenceSchema, TensorSchema
from dexport.ir.types import ANY, BOOL, NONE, OptionalType, RecordType
from dexport.passes.base import Pass, register_pass

_STRUCT_OPS = ("struct::construct", "struct::set", "struct::get")


@dataclass
class _Field:
    value: Value
    source: str   # where the field got this value ("" when unknown)


class _Fields(dict):
    """A record value's fields: name -> _Field, in declaration order; ``kind`` and the
    node that made the record (for error messages)."""

    def __init__(self, kind: str, items=(), origin: Node | None = None):
        super().__init__(items)
        self.kind = kind
        self.origin = origin


def _is_none_const(v: Value) -> bool:
    n = v.node
    return n is not None and n.op == CONSTANT and n.attrs.get("value") is None


def _where(node: Node | None) -> str:
    if node is None:
        return "?"
    return node.meta.source or "<unknown line>"


@register_pass
class StaticizeInstances(Pass):
    """Replaces records with a statically known field set by their fields (see the
    module docstring); afterwards no ``struct::*`` op reads or builds such a record."""
    name = "staticize-instances"
    establishes = ("static-records",)

    def run(self, graph: Graph) -> bool:
        self.graph = graph
        self.env: dict[Value, _Fields] = {}
        self.changed = False
        self.dead_if_slots: list[tuple[Node, int]] = []
        self.dead_loop_slots: list[tuple[Node, int]] = []
        self._walk(graph.block)
        if not self.env:
            return self.changed
        self._outputs(graph)
        self._materialize_remaining(graph)
        self._drop_slots()
        self._erase_dead_structs(graph.block)
        return self.changed

    # ----------------------------------------------------------------- the walk

    def _walk(self, block: Block) -> None:
        node = block._head.next
        while node is not block.return_node:
            nxt = node.next
            restart = self._visit(node)
            node = restart if restart is not None else nxt

    def _visit(self, node: Node) -> Node | None:
        op = node.op
        if op == "struct::construct" and node.output in self.env:
            pass  # a record the pass knows by its fields already (_record_key)
        elif op == "struct::construct":
            self.env[node.output] = _Fields(node.attrs["kind"],
                                            ((f, _Field(v, _where(node))) for f, v in
                                             zip(node.attrs["fields"], node.inputs)), node)
        elif op == "struct::set" and node.inputs[0] in self.env:
            old = self.env[node.inputs[0]]
            new = _Fields(old.kind, old, old.origin)
            value = node.inputs[1]
            # the setter's line, else the line that computed the value
            source = node.meta.source or (value.node.meta.source if value.node is not None else "")
            new[node.attrs["field"]] = _Field(value, source or "<unknown line>")
            self.env[node.output] = new
            self.changed = True  # the set goes
        elif op == "struct::get" and node.inputs[0] in self.env:
            fields = self.env[node.inputs[0]]
            name = node.attrs["field"]
            if name not in fields:
                raise PassError(f"struct::get of the field {name!r}, which the record {fields.kind} "
                                f"does not have (fields: {list(fields)})", op=op, scope=node.meta.scope,
                                source=node.meta.source, hint="set the field before reading it")
            node.output.replace_all_uses_with(fields[name].value)
            node.erase()
            self.changed = True
        elif op == "prim::unchecked_cast" and node.inputs[0] in self.env:
            node.output.replace_all_uses_with(node.inputs[0])
            node.erase()
        elif op in ("aten::__is__", "aten::__isnot__"):
            a, b = (self._noneness(v) for v in node.inputs)
            if a is not None and b is not None:
                same = a and b
                return self._replace_by_constant(node, same if op == "aten::__is__" else not same)
        elif op in ("aten::eq.str", "aten::ne.str") and all(
                v.node is not None and v.node.op == CONSTANT for v in node.inputs):
            # the static Instances' set(name, value) picks its field by name
            a, b = (v.node.attrs["value"] for v in node.inputs)
            return self._replace_by_constant(node, (a == b) == (op == "aten::eq.str"))
        elif op == "aten::__not__":
            c = self._static_bool(node.inputs[0])
            if c is not None:
                return self._replace_by_constant(node, not c)
        elif op == "prim::If":
            return self._if(node)
        elif op == "prim::Loop":
            self._loop(node)
        return None

    def _replace_by_constant(self, node: Node, value: bool) -> Node | None:
        const = self.graph.create_node(CONSTANT, [], [BOOL], {"value": value}, node.meta.copy(),
                                       before=node)
        node.output.replace_all_uses_with(const.output)
        node.erase()
        return None

    def _noneness(self, v: Value) -> bool | None:
        """True: certainly None; False: certainly not None; None: not known."""
        if _is_none_const(v) or v.type == NONE:
            return True
        if v in self.env:
            return False
        if isinstance(v.type, OptionalType) or v.type == ANY:
            return None
        return False

    def _static_bool(self, v: Value) -> bool | None:
        n = v.node
        if n is not None and n.op == CONSTANT and isinstance(n.attrs.get("value"), bool):
            return n.attrs["value"]
        return None

    # ----------------------------------------------------------------- control flow

    def _if(self, node: Node) -> Node | None:
        cond = self._static_bool(node.inputs[0])
        if cond is not None and any(self._is_record_flow(b) for b in node.blocks):
            # decided by a field's presence: inline the taken branch, then walk it
            before = node.prev
            results = copy_block_before(node.blocks[0 if cond else 1], node, {})
            node.replace_all_uses_with(results)
            first = before.next
            node.erase()
            self.changed = True
            return first if first is not node else None
        for b in node.blocks:
            self._walk(b)
        for i, out in enumerate(list(node.outputs)):
            returns = [b.returns[i] for b in node.blocks]
            if not any(r in self.env for r in returns):
                continue
            live = [(b, r) for b, r in zip(node.blocks, returns) if not _raises(b)]
            if not live:  # every path raises: the record is never read; keep its field names
                live = [(node.blocks[0], returns[0])] if returns[0] in self.env else \
                    [(node.blocks[1], returns[1])]
            for b, r in live:
                if r not in self.env:
                    raise PassError(f"an If returns a record on one path and {r.type} on the other",
                                    op="prim::If", scope=node.meta.scope, source=node.meta.source,
                                    hint="return the same kind of record on every path")
            self.env[out] = self._merge_if(node, live)
            self.dead_if_slots.append((node, i))
            self.changed = True
        return None

    def _is_record_flow(self, block: Block) -> bool:
        """Whether a block touches records (so an If around it is the pass's to decide)."""
        for n in block.nodes:
            if n.op in _STRUCT_OPS or any(v in self.env for v in n.inputs):
                return True
            if any(self._is_record_flow(b) for b in n.blocks):
                return True
        return any(v in self.env for v in block.returns)

    def _merge_if(self, node: Node, live: list[tuple[Block, Value]]) -> _Fields:
        maps = [self.env[r] for _, r in live]
        first = maps[0]
        merged = _Fields(first.kind, (), first.origin)
        if len(live) == 1:  # the other path raises: the record is this path's
            merged.update(first)
            return merged
        names = list(first) + [n for m in maps[1:] for n in m if n not in first]
        for name in names:
            fields = [m.get(name) for m in maps]
            nones = [f is None or self._noneness(f.value) is True for f in fields]
            if all(nones):  # None on every path: one None before the If
                none = self.graph.create_node(CONSTANT, [], [NONE], {"value": None}, node.meta.copy(),
                                              before=node)
                merged[name] = _Field(none.output, "")
                continue
            if any(nones):
                raise self._path_error(first.kind, name, node, live, fields, nones)
            values = [f.value for f in fields]
            if all(v is values[0] for v in values):
                merged[name] = fields[0]
                continue
            out = node.add_output(unify_types([v.type for v in values]))
            for (b, _), v in zip(live, values):
                b.set_returns(list(b.returns) + [v])
            for b in node.blocks:
                if all(b is not lb for lb, _ in live):  # a raising path: any value of the type
                    b.set_returns(list(b.returns) + [self._placeholder(b, out.type, node)])
            if all(v in self.env for v in values):
                # a record in a record (Boxes in Instances): its fields leave the If too
                self.env[out] = self._merge_if(node, [(b, v) for (b, _), v in zip(live, values)])
                self.dead_if_slots.append((node, out.index))
            merged[name] = _Field(out, _where(node))
        return merged

    def _placeholder(self, block: Block, typ, node: Node) -> Value:
        n = self.graph.create_node("prim::Uninitialized", [], [typ], None, node.meta.copy(), block=block)
        return n.output

    def _path_error(self, kind, name, node, live, fields, nones) -> PassError:
        paths = []
        for (b, _), f, none in zip(live, fields, nones):
            branch = "then" if b is node.blocks[0] else "else"
            where = _first_source(b) or _where(node)
            state = "leaves it unset" if none else f"sets it at {f.source}"
            paths.append(f"the {branch} branch (from {where}) {state}")
        return PassError(f"the {kind} field {name!r} is set on one path and not on the other: "
                         + "; ".join(paths), op="prim::If", scope=node.meta.scope, source=node.meta.source,
                         hint=f"set {name!r} on both paths (an empty tensor where there is nothing), so the "
                              "record has the same fields whichever path runs")

    def _loop(self, node: Node) -> None:
        body = node.blocks[0]
        carried = list(node.inputs[2:])
        plans = []
        for j, init in enumerate(carried):
            if init not in self.env:
                continue
            fields = self.env[init]
            leaves: list[Value] = []
            self.env[body.params[1 + j]] = self._carry_in(node, body, fields, leaves)
            plans.append((j, fields, len(leaves)))
        self._walk(body)
        for j, fields, _ in plans:
            end = body.returns[1 + j]
            if end not in self.env:
                raise PassError(f"a loop carries a {fields.kind} record in but not out", op="prim::Loop",
                                scope=node.meta.scope, source=node.meta.source,
                                hint="keep the loop variable a record on every trip")
            returns: list[Value] = []
            self._carry_back(node, fields, self.env[end], returns)
            body.set_returns(list(body.returns) + returns)
        for j, fields, _ in plans:
            self.env[node.outputs[j]] = self._carry_out(node, fields)
            self.dead_loop_slots.append((node, j))
            self.changed = True

    def _present(self, fields: _Fields) -> list[str]:
        return [n for n, f in fields.items() if self._noneness(f.value) is not True]

    def _carry_in(self, node: Node, body: Block, fields: _Fields, leaves: list[Value]) -> _Fields:
        """The record's fields inside the loop body: each present field a new carried
        value (a record in the record: its own fields, recursively)."""
        inner = _Fields(fields.kind, fields, fields.origin)
        for name in self._present(fields):
            value = fields[name].value
            if value in self.env:
                inner[name] = _Field(self._record_key(self._carry_in(node, body, self.env[value], leaves),
                                                      before=body._head.next), _where(node))
            else:
                node.add_input(value)
                inner[name] = _Field(body.add_param(value.type), _where(node))
                leaves.append(value)
        return inner

    def _carry_back(self, node: Node, init: _Fields, end: _Fields, returns: list[Value]) -> None:
        """The body's returns for the carried fields; a field whose presence changes on a
        trip is an error."""
        present = self._present(init)
        for name, f in end.items():
            set_in_body = self._noneness(f.value) is not True
            if set_in_body != (name in present):
                before = "set" if name in present else "unset"
                raise PassError(
                    f"the {init.kind} field {name!r} is {before} before the loop (at "
                    f"{init[name].source if name in init else '?'}) and "
                    f"{'set' if set_in_body else 'unset'} after a trip (at {f.source}): its presence "
                    "depends on the number of trips", op="prim::Loop", scope=node.meta.scope,
                    source=node.meta.source,
                    hint=f"set {name!r} before the loop, so every trip sees the same fields")
        for name in present:
            value = end[name].value
            if init[name].value in self.env:
                if value not in self.env:
                    raise PassError(f"the {init.kind} field {name!r} holds a record before the loop and "
                                    f"{value.type} after a trip", op="prim::Loop", scope=node.meta.scope,
                                    source=node.meta.source, hint="keep the field's type on every trip")
                self._carry_back(node, self.env[init[name].value], self.env[value], returns)
            else:
                returns.append(value)

    def _carry_out(self, node: Node, init: _Fields) -> _Fields:
        """The record after the loop: its present fields are new loop outputs."""
        out = _Fields(init.kind, init, init.origin)
        for name in self._present(init):
            value = init[name].value
            if value in self.env:
                out[name] = _Field(self._record_key(self._carry_out(node, self.env[value]), before=node.next),
                                   _where(node))
            else:
                out[name] = _Field(node.add_output(value.type), _where(node))
        return out

    def _record_key(self, fields: _Fields, before: Node) -> Value:
        """A value standing for a record known only by its fields (erased once unused)."""
        key = self.graph.create_node("struct::construct", [], [RecordType(fields.kind, ())],
                                     {"kind": fields.kind, "fields": []}, before=before).output
        self.env[key] = fields
        return key

    # ----------------------------------------------------------------- outputs and leftovers

    def _outputs(self, graph: Graph) -> None:
        outputs = list(graph.outputs)
        if not any(self._holds_record(v) for v in outputs):
            return
        flat: list[Value] = []
        schemas: list[Schema] = []
        for v in outputs:
            schemas.append(self._flatten_output(v, flat))
        graph.set_outputs(flat)
        self.changed = True
        for v in outputs:
            _erase_unused_packing(v)
        old = graph.output_schema
        if old is None:
            graph.output_schema = schemas[0] if len(schemas) == 1 else SequenceSchema("tuple", tuple(schemas))
        else:
            it = iter(schemas)
            graph.output_schema = _replace_leaves(old, it)

    def _holds_record(self, v: Value) -> bool:
        n = v.node
        return v in self.env or (n is not None and n.op in ("prim::TupleConstruct", "prim::ListConstruct")
                                 and any(self._holds_record(x) for x in n.inputs))

    def _flatten_output(self, v: Value, flat: list[Value]) -> Schema:
        if v in self.env:
            fields = self.env[v]
            names, values = [], []
            for name, f in fields.items():
                if self._noneness(f.value) is True:
                    continue  # an unset field: the rebuilt record does not have it
                names.append(name)
                values.append(self._flatten_output(f.value, flat))
            return RecordSchema(fields.kind, tuple(names), tuple(values))
        n = v.node
        if n is not None and n.op == CONSTANT and not hasattr(n.attrs["value"], "shape"):
            value = n.attrs["value"]
            if isinstance(value, (tuple, list)):
                return SequenceSchema("tuple" if isinstance(value, tuple) else "list",
                                      tuple(ConstSchema(x) for x in value))
            return ConstSchema(value)
        if n is not None and n.op in ("prim::TupleConstruct", "prim::ListConstruct"):
            kind = "tuple" if n.op == "prim::TupleConstruct" else "list"
            return SequenceSchema(kind, tuple(self._flatten_output(x, flat) for x in n.inputs))
        flat.append(v)
        return TensorSchema()

    def _materialize_remaining(self, graph: Graph) -> None:
        """Rebuild a record, with one struct::construct, for each use the pass did not
        replace (a list append, a call)."""
        built: dict[Value, Value] = {}

        def materialized(v: Value) -> Value:
            if v in built:
                return built[v]
            producer = v.node
            if producer is not None and producer.op == "struct::construct" and producer.attrs["fields"] == list(
                    self.env[v]):  # already built from its fields: keep it (its record fields built too)
                for index, x in enumerate(list(producer.inputs)):
                    if x in self.env:
                        producer.replace_input(index, materialized(x))
                built[v] = v
                return v
            self.changed = True
            fields = self.env[v]
            inputs = [materialized(f.value) if f.value in self.env else f.value for f in fields.values()]
            typ = RecordType(fields.kind, tuple((n, i.type) for n, i in zip(fields, inputs)))
            if producer is None:   # a block parameter
                block = v.producer
                anchor = block._head.next
                new = graph.create_node("struct::construct", inputs, [typ],
                                        {"kind": fields.kind, "fields": list(fields)}, before=anchor)
            else:
                new = graph.create_node("struct::construct", inputs, [typ],
                                        {"kind": fields.kind, "fields": list(fields)},
                                        producer.meta.copy(), before=producer.next)
            built[v] = new.output
            return new.output

        for v in list(self.env):
            for user, index in list(v.uses):
                if user.op in ("struct::set", "struct::construct") and user.outputs[0] in self.env:
                    continue  # itself replaced
                if _is_slot_use(user, index, self.dead_if_slots, self.dead_loop_slots, v):
                    continue
                user.replace_input(index, materialized(v))

    def _drop_slots(self) -> None:
        """Remove the record slots of Ifs and loops: first the values returned into
        them, then the record chains left without a reader, then the slots."""
        by_if: dict[Node, list[int]] = {}
        for n, i in self.dead_if_slots:
            by_if.setdefault(n, []).append(i)
        by_loop: dict[Node, list[int]] = {}
        for n, j in self.dead_loop_slots:
            by_loop.setdefault(n, []).append(j)
        for n, indices in by_if.items():
            for b in n.blocks:
                b.set_returns([v for k, v in enumerate(b.returns) if k not in indices])
        for n, indices in by_loop.items():
            body = n.blocks[0]
            body.set_returns([v for k, v in enumerate(body.returns) if k - 1 not in indices])
        self._erase_dead_structs(self.graph.block)
        for n, indices in by_if.items():
            for i in sorted(indices, reverse=True):
                n.remove_output(i)
        for n, indices in by_loop.items():
            for j in sorted(indices, reverse=True):
                n.blocks[0].remove_param(1 + j)
                n.remove_input(2 + j)
                n.remove_output(j)

    def _erase_dead_structs(self, block: Block) -> None:
        for n in list(block.reversed_nodes()):
            for b in n.blocks:
                self._erase_dead_structs(b)
            if n.op in ("struct::construct", "struct::set") and not n.output.uses:
                n.erase()


def _is_slot_use(user: Node, index: int, if_slots, loop_slots, v: Value) -> bool:
    """Whether ``v``'s use is a record slot the pass removes (If branch return, loop
    carried input or body return)."""
    if user.op == RETURN:
        block = user.block
        owner = block.owner
        if isinstance(owner, Node):
            if owner.op == "prim::If" and (owner, index) in if_slots:
                return True
            if owner.op == "prim::Loop" and index >= 1 and (owner, index - 1) in loop_slots:
                return True
    if user.op == "prim::Loop" and index >= 2 and (user, index - 2) in loop_slots:
        return True
    return False


def _erase_unused_packing(v: Value) -> None:
    """Erase the tuple/list packing of a flattened output (and the packings inside it)."""
    n = v.node
    if n is not None and n.op in ("prim::TupleConstruct", "prim::ListConstruct") and not v.uses:
        inputs = list(n.inputs)
        n.erase()
        for x in inputs:
            _erase_unused_packing(x)


def _raises(block: Block) -> bool:
    return any(n.op == "prim::RaiseException" for n in block.nodes)


def _first_source(block: Block) -> str:
    for n in block.nodes:
        if n.meta.source:
            return n.meta.source
    return ""


def _replace_leaves(schema: Schema, replacements) -> Schema:
    """``schema`` with its tensor leaves replaced, in order, by ``replacements``."""
    if isinstance(schema, TensorSchema):
        return next(replacements)
    if isinstance(schema, SequenceSchema):
        return SequenceSchema(schema.kind, tuple(_replace_leaves(s, replacements) for s in schema.items))
    if isinstance(schema, DictSchema):
        return DictSchema(schema.keys, tuple(_replace_leaves(s, replacements) for s in schema.values))
    if isinstance(schema, RecordSchema):
        return RecordSchema(schema.kind, schema.fields,
                            tuple(_replace_leaves(s, replacements) for s in schema.values))
    return schema


__all__ = ["StaticizeInstances"]
