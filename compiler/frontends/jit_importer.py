"""The jit-graph importer: an inlined TorchScript graph (``torch._C.Graph``, from
``torch.jit.trace`` or ``torch.jit.script``) converted node by node into the IR.

Shared by the frontends that go through TorchScript. What the conversion keeps, and why:

* parameters and buffers (``prim::GetAttr`` chains) become ``prim::Param``
  nodes named by their qualified names in the user's model
  (``backbone.res2.0.conv1.weight``), so passes and backends can refer to them;
  a tensor reached under two names (tied weights) is stored once;
* constants become attributes; tensor constants with more than a few elements
  go to ``graph.params`` as ``_const.N`` so the text form stays small; an int
  constant that only feeds ``ScalarType``/``Layout``/``MemoryFormat`` arguments
  becomes the torch object it stands for (``torch.float32``), as it reads;
* nested blocks (``prim::If``/``prim::Loop`` bodies) become IR blocks;
* every node records the module scope that ran it (``layer1.0.conv1``) and the
  source line the frontend picks for it (``source_of``);
* a scripted graph's objects (TorchScript classes such as the static ``Instances``
  of ``dexport.scripting_with_instances``, and ``Boxes``) become struct-dialect
  records, functionally: ``prim::CreateObject`` a field-less ``struct::construct``,
  ``prim::SetAttr`` a ``struct::set`` giving the record's next value (later reads use
  it), ``prim::GetAttr`` a ``struct::get``. A record an If branch or a loop body sets
  leaves it as an extra output (loop-carried value), so every path sees its own
  value. ``prim::isinstance`` is decided from the static type. Non-tensor module
  attributes (flags, sizes) read by scripted code become constants.
"""
from __future__ import annotations

import re
from typing import Any, Callable

import torch

from dexport.ir.errors import CaptureError
from dexport.ir.graph import CONSTANT, PARAM, SMALL_TENSOR_NUMEL, Block, Graph, Meta, Node, Value
from dexport.ir.dialects.struct import struct_set_type
from dexport.ir.ops import has_op, ir_type_from_jit, registered_ops, type_of_constant
from dexport.ir.types import ANY, BOOL, RecordType


# The integer codes TorchScript uses for these enums, as the torch objects they mean.
_DTYPE_CODES = {torch.ops.prim.dtype(torch.empty(0, dtype=d)): d
                for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64,
                          torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8,
                          torch.bool, torch.complex64, torch.complex128)}
_ENUM_CODES = {
    "ScalarType": _DTYPE_CODES,
    "Layout": {0: torch.strided, 1: torch.sparse_coo},
    "MemoryFormat": {0: torch.contiguous_format, 1: torch.preserve_format,
                     2: torch.channels_last, 3: torch.channels_last_3d},
}



# "body(Sequential).0(Sub).conv(Conv2d).SELF(Conv2d)" -> body, 0, conv (SELF is the method's
# own module, UNKNOWN_INSTANCE a free function such as F.batch_norm).
_HIERARCHY_PART = re.compile(r"(?:^|\.)(?!SELF\(|UNKNOWN_INSTANCE\()([A-Za-z0-9_]+)\([^()]*\)")


def _plain_constant(obj: Any) -> bool:
    """A number, string, bool, None, or a list/tuple of them: a module attribute that
    scripted code may read and the export may freeze."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return True
    return isinstance(obj, (list, tuple)) and all(_plain_constant(x) for x in obj)


class JitImporter:
    """Converts one inlined TorchScript graph whose first input is ``root`` (the module
    its ``prim::GetAttr`` chains start from) into an IR graph. ``prefix``: the name of
    the user's model under ``root`` (dropped from scopes and parameter names);
    ``source_of(stack_text)``: the source location to record for a node's Python stack
    (the frontend knows which frames are the user's); ``example_shapes``: whether the
    graph's int dims are only the example's (a trace) rather than proven;
    ``scripted``: the graph is a whole compiled program (``torch.jit.script``): the
    module scopes come from its inlined call stacks, and non-tensor module attributes
    (ints, flags, lists of names, which scripted code reads) become constants rather
    than an error."""

    def __init__(self, root: torch.nn.Module, prefix: str, source_of: Callable[[str], str], *,
                 example_shapes: bool = True, scripted: bool = False):
        self.root = root
        self.prefix = prefix
        self.source_of = source_of
        self.graph = Graph()
        self.graph.example_shapes = example_shapes
        self.values: dict[int, Value] = {}          # JIT value unique() -> IR value
        self.objects: dict[int, tuple[Any, str]] = {}  # JIT module value -> (object, path)
        self.params_by_tensor: dict[int, Value] = {}
        self.first_body_node: Node | None = None    # Param nodes go before it
        self.num_consts = 0
        self.schemas: dict[str, Any] = {}
        self.owned_ops = set(registered_ops())  # structural ops keep their plain names
        self.escaped: set[int] = set()              # objects stored into lists, tuples, calls
        # An object read from another's attribute (inst.pred_boxes) or refined from an
        # Optional: (the object it was read from, attribute name or None for "the same").
        self.alias_of: dict[int, tuple[Any, str | None]] = {}
        self.scripted = scripted

    def convert(self, jit_graph, bind_inputs: Callable[[Graph], list[Value]] | None = None) -> Graph:
        """``bind_inputs(graph)``: the IR values that stand for the jit graph's inputs
        after ``self`` (adding graph inputs and nodes as it likes); default: one graph
        input each, typed as TorchScript types it."""
        g = self.graph
        jit_inputs = list(jit_graph.inputs())
        self.objects[jit_inputs[0].unique()] = (self.root, "")
        bound = (bind_inputs(g) if bind_inputs is not None
                 else [g.add_input(ir_type_from_jit(v.type())) for v in jit_inputs[1:]])
        for v, value in zip(jit_inputs[1:], bound):
            self.values[v.unique()] = value
        self.first_body_node = next(iter(g.block.nodes), None)  # nodes bind_inputs added
        self._convert_block(jit_graph.block(), g.block)
        self._check_ops()
        return g

    def _convert_block(self, jit_block, block: Block) -> None:
        for node in jit_block.nodes():
            kind = node.kind()
            if kind == "prim::GetAttr":
                self._get_attr(node, block)
            elif kind == "prim::Constant":
                self._constant(node, block)
            elif kind == "prim::SetAttr":
                self._set_attr(node, block)
            elif kind == "prim::CreateObject":
                self._create_object(node, block)
            elif kind == "prim::isinstance":
                self._isinstance(node, block)
            else:
                self._op(node, block)
        returns = list(jit_block.outputs())
        self._note_escapes(returns)
        block.set_returns([self.values[v.unique()] for v in returns])

    def _meta(self, node) -> Meta:
        return Meta(self._scope(node), self.source_of(node.sourceRange()))

    def _scope(self, node) -> str:
        scope_name = node.scopeName()
        if self.scripted:  # the inlined call stack names the modules
            return ".".join(_HIERARCHY_PART.findall(node.getModuleHierarchy()))
        # "__module.model.layer1/__module.model.layer1.0" -> "layer1.0"
        path = scope_name.rsplit("/", 1)[-1]
        path = path[len("__module"):].lstrip(".") if path.startswith("__module") else path
        if path == self.prefix:
            return ""
        return path[len(self.prefix) + 1:] if path.startswith(self.prefix + ".") else path

    def _append(self, block: Block, op: str, inputs, types, attrs=None, meta=None) -> Node:
        node = self.graph.create_node(op, inputs, types, attrs, meta, block=block)
        if block is self.graph.block and self.first_body_node is None:
            self.first_body_node = node
        return node

    def _add_param(self, name: str, tensor: torch.Tensor, meta: Meta) -> Value:
        """A prim::Param at the top of the graph (in first-use order), so every block can read it."""
        self.graph.params[name] = tensor
        node = self.graph.create_node(PARAM, (), [type_of_constant(tensor)], {"name": name}, meta,
                                      before=self.first_body_node)
        node.output.name_hint = name
        return node.output

    def _get_attr(self, node, block: Block) -> None:
        if node.input().unique() not in self.objects:
            self._get_field(node, block)
            return
        parent, parent_path = self.objects[node.input().unique()]
        name = node.s("name")
        obj = getattr(parent, name)
        path = f"{parent_path}.{name}" if parent_path else name
        out = node.output()
        if isinstance(obj, torch.nn.Module):
            self.objects[out.unique()] = (obj, path)
            return
        if not isinstance(obj, torch.Tensor) and self.scripted and _plain_constant(obj):
            self.values[out.unique()] = self._append(
                block, CONSTANT, [], [ir_type_from_jit(out.type())], {"value": obj}, self._meta(node)).output
            return
        if not isinstance(obj, torch.Tensor):
            raise CaptureError(f"the trace reads the non-tensor attribute {path!r}",
                               op="prim::GetAttr", scope=self._scope(node),
                               hint="keep only parameters, buffers and submodules as module attributes "
                                    "read by forward")
        key = id(obj)
        if key not in self.params_by_tensor:
            param_name = path[len(self.prefix) + 1:] if path.startswith(self.prefix + ".") else path
            self.params_by_tensor[key] = self._add_param(param_name, obj.detach(), Meta())
        self.values[out.unique()] = self.params_by_tensor[key]

    # ----------------------------------------------------------------- objects as records

    def _record_names(self, jit_type) -> tuple[str, dict[str, str]]:
        """(record kind, attribute -> field name) of a TorchScript class: what the class
        declares in ``__dexport_record__`` (the static Instances), else the kind the
        schemas register it under (Boxes) or its own name, with its attribute names."""
        cls = torch.jit._state._get_python_class(jit_type.qualified_name())
        declared = getattr(cls, "__dexport_record__", None)
        if declared is not None:
            return declared["kind"], dict(declared["fields"])
        from dexport.ir.schema import _RECORDS_BY_CLASS
        rec = _RECORDS_BY_CLASS.get(cls)
        kind = rec.kind if rec is not None else jit_type.qualified_name().replace("__torch__.", "")
        return kind, {}

    def _field_name(self, jit_value, attr: str) -> str:
        return self._record_names(jit_value.type())[1].get(attr, attr)

    def _create_object(self, node, block: Block) -> None:
        kind, _ = self._record_names(node.output().type())
        new = self._append(block, "struct::construct", [], [RecordType(kind, ())],
                           {"kind": kind, "fields": []}, self._meta(node))
        self.values[node.output().unique()] = new.output

    def _set_attr(self, node, block: Block) -> None:
        obj, value = node.inputs()
        if obj.unique() in self.objects:
            raise CaptureError(f"the scripted code assigns the module attribute {node.s('name')!r}",
                               op="prim::SetAttr", scope=self._scope(node),
                               source=self.source_of(node.sourceRange()),
                               hint="keep module state out of inference (compute it into a local), "
                                    "or move that code into a method decorated @torch.jit.unused")
        if obj.unique() in self.escaped:
            raise CaptureError(f"the scripted code sets {node.s('name')!r} of an object after storing "
                               "it in a list, tuple or call, which dexport cannot follow",
                               op="prim::SetAttr", scope=self._scope(node),
                               source=self.source_of(node.sourceRange()),
                               hint="set every field before appending the object to a list")
        self._note_escapes([value])
        record = self.values[obj.unique()]
        new = self._append(block, "struct::set", [record, self.values[value.unique()]],
                           [ANY], {"field": self._field_name(obj, node.s("name"))}, self._meta(node))
        new.output.type = struct_set_type(new)
        self.values[obj.unique()] = new.output   # later reads of the object see the new record
        # inst.pred_boxes.clip(...) changes inst too: its field gets the new record
        while obj.unique() in self.alias_of:
            parent, attr = self.alias_of[obj.unique()]
            if attr is None:
                self.values[parent.unique()] = self.values[obj.unique()]
            else:
                up = self._append(block, "struct::set", [self.values[parent.unique()], self.values[obj.unique()]],
                                  [ANY], {"field": self._field_name(parent, attr)}, self._meta(node))
                up.output.type = struct_set_type(up)
                self.values[parent.unique()] = up.output
            obj = parent

    def _get_field(self, node, block: Block) -> None:
        obj = node.input()
        new = self._append(block, "struct::get", [self.values[obj.unique()]],
                           [ir_type_from_jit(node.output().type())],
                           {"field": self._field_name(obj, node.s("name"))}, self._meta(node))
        self.values[node.output().unique()] = new.output
        if self._is_object(node.output()):
            self.alias_of[node.output().unique()] = (obj, node.s("name"))

    def _isinstance(self, node, block: Block) -> None:
        value_type = node.input().type()
        types = node.tys("types")
        result = any(value_type.isSubtypeOf(t) for t in types)
        if not result:
            if any(t.isSubtypeOf(value_type) for t in types):
                raise CaptureError("the scripted code tests isinstance() of a value whose type is only "
                                   f"known at run time ({value_type})", op="prim::isinstance",
                                   scope=self._scope(node),
                                   source=self.source_of(node.sourceRange()),
                                   hint="give the value a static type (annotate it) so the test is decided "
                                        "at export")
        self.values[node.output().unique()] = self._append(block, CONSTANT, [], [BOOL], {"value": result},
                                                           self._meta(node)).output

    def _is_object(self, jit_value) -> bool:
        """A TorchScript class instance (or an Optional one) that is not a module."""
        t = jit_value.type()
        if isinstance(t, torch.OptionalType):
            t = t.getElementType()
        return isinstance(t, torch.ClassType) and jit_value.unique() not in self.objects

    def _note_escapes(self, jit_values) -> None:
        for v in jit_values:
            if self._is_object(v):
                self.escaped.add(v.unique())

    def _outer_objects_set_in(self, node) -> list:
        """The objects defined outside ``node`` that a prim::SetAttr in its blocks changes
        (first-set order)."""
        inner: set[int] = set()
        found: dict[int, Any] = {}
        aliases = {k: parent for k, (parent, _) in self.alias_of.items()}

        def walk(jit_block):
            for p in jit_block.inputs():
                inner.add(p.unique())
            for n in jit_block.nodes():
                if n.kind() in ("prim::GetAttr", "prim::unchecked_cast") and self._is_object(n.output()) \
                        and n.inputsAt(0).unique() not in self.objects:
                    aliases[n.output().unique()] = n.inputsAt(0)
                if n.kind() == "prim::If":
                    for i, o in enumerate(n.outputs()):
                        source = _only_live_return(n, i)
                        if source is not None and self._is_object(o):
                            aliases[o.unique()] = source
                if n.kind() == "prim::SetAttr":
                    obj = n.inputsAt(0)
                    while obj is not None:  # the object and those it was read from
                        if obj.unique() not in inner and obj.unique() not in self.objects:
                            found.setdefault(obj.unique(), obj)
                        obj = aliases.get(obj.unique())
                for b in n.blocks():
                    walk(b)
                for o in n.outputs():
                    inner.add(o.unique())

        for b in node.blocks():
            walk(b)
        return list(found.values())

    def _constant(self, node, block: Block) -> None:
        out = node.output()
        value = out.toIValue()
        meta = self._meta(node)
        if isinstance(value, torch.Tensor):
            value = value.detach()
            if value.numel() > SMALL_TENSOR_NUMEL:
                name = self.graph.unique_param_name(f"_const.{self.num_consts}")
                self.num_consts += 1
                self.values[out.unique()] = self._add_param(name, value, meta)
                return
            typ = type_of_constant(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            value = self._enum_value(out, value)
            typ = type_of_constant(value)
        else:
            typ = ir_type_from_jit(out.type())
        self.values[out.unique()] = self._append(block, CONSTANT, [], [typ], {"value": value}, meta).output

    def _enum_value(self, out, value: int):
        """The torch object an int constant stands for, when every use reads it as one."""
        kinds = set()
        for use in out.uses():
            schema = self._schema(use.user)
            if schema is None:
                return value
            kinds.add(str(schema.arguments[use.offset].real_type).replace("Optional[", "").rstrip("]"))
        if len(kinds) == 1:
            return _ENUM_CODES.get(kinds.pop(), {}).get(value, value)
        return value

    def _schema(self, node):
        text = node.schema()
        if text == "(no schema)":
            return None
        if text not in self.schemas:
            self.schemas[text] = torch._C.parse_schema(text)
        return self.schemas[text]

    def _op(self, node, block: Block) -> None:
        kind = node.kind()
        if kind == "prim::PythonOp":
            raise CaptureError(f"the model calls the Python function {node.pyname()}, which a trace "
                               "records as an opaque call", op=kind, scope=self._scope(node),
                               source=self.source_of(node.sourceRange()),
                               hint="write it with torch ops, or register it as a custom op "
                                    "(torch.library.custom_op) so it becomes one graph node")
        if node.attributeNames():
            raise CaptureError(f"the trace holds {kind} with attributes {node.attributeNames()}, "
                               "which dexport does not convert", op=kind,
                               scope=self._scope(node),
                               source=self.source_of(node.sourceRange()),
                               hint="please report this op with the model that produced it")
        schema = self._schema(node)
        op = kind
        if schema is not None and schema.name == kind and kind not in self.owned_ops:
            op = f"{kind}.{schema.overload_name}" if schema.overload_name else kind
        if kind == "prim::unchecked_cast" and self._is_object(node.input()):
            self.alias_of[node.output().unique()] = (node.input(), None)
        else:
            self._note_escapes(node.inputs())
        inputs = [self.values[v.unique()] for v in node.inputs()]
        types = [ir_type_from_jit(v.type()) for v in node.outputs()]
        mutated = self._outer_objects_set_in(node) if node.blocks() else []
        if mutated and kind not in ("prim::If", "prim::Loop"):
            raise CaptureError(f"{kind} sets fields of an object made outside it", op=kind,
                               scope=self._scope(node), source=self.source_of(node.sourceRange()),
                               hint="please report this op with the model that produced it")
        outer = [self.values[o.unique()] for o in mutated]
        if kind == "prim::Loop":   # the objects' records become loop-carried values
            inputs += outer
        new = self._append(block, op, inputs, types, meta=self._meta(node))
        for jit_block in node.blocks():
            sub = new.add_block()
            for p in jit_block.inputs():
                self.values[p.unique()] = sub.add_param(ir_type_from_jit(p.type()))
            if kind == "prim::Loop":
                for o, record in zip(mutated, outer):
                    self.values[o.unique()] = sub.add_param(record.type)
            self._convert_block(jit_block, sub)
            # each path hands on the object's record as it left it
            sub.set_returns(list(sub.returns) + [self.values[o.unique()] for o in mutated])
            for o, record in zip(mutated, outer):
                self.values[o.unique()] = record
        for jit_out, value in zip(node.outputs(), new.outputs):
            self.values[jit_out.unique()] = value
        if kind == "prim::If":  # `x if x is not None else raise`: the output is x itself
            for i, o in enumerate(node.outputs()):
                source = _only_live_return(node, i)
                if source is not None and self._is_object(o):
                    self.alias_of[o.unique()] = (source, None)
        for o, record in zip(mutated, outer):
            out = new.add_output(_record_merge_type(record.type, [b.returns[len(b.returns) - len(mutated) +
                                                                       mutated.index(o)].type
                                                                  for b in new.blocks]))
            self.values[o.unique()] = out

    def _check_ops(self) -> None:
        """Every op must be known to the registry; list all unknown ones at once."""
        missing: dict[str, Node] = {}
        for node in self.graph.nodes():
            if node.op not in missing and not has_op(node.op):
                missing[node.op] = node
        if missing:
            lines = [f"{op}  # {n.meta.scope or '<top level>'} @ {n.meta.source}" for op, n in missing.items()]
            raise CaptureError(
                f"the captured graph uses {len(missing)} op(s) that neither torch nor dexport defines",
                context="\n".join(lines),
                hint="replace them in the model with ATen ops, or register them "
                     "(torch.library for kernels, dexport.ir.ops.register_op for dexport-owned ops)")


def _only_live_return(if_node, i: int):
    """The i-th value the one branch of a jit If that does not raise returns (None when
    both or neither raise)."""
    live = [b for b in if_node.blocks()
            if not any(n.kind() == "prim::RaiseException" for n in b.nodes())]
    return list(live[0].outputs())[i] if len(live) == 1 else None


def _record_merge_type(outer, branch_types):
    """The type of a record after an If or a loop: the paths' common type, else the
    outer one (the staticize-instances pass reports paths that disagree)."""
    return branch_types[0] if all(t == branch_types[0] for t in branch_types) else outer


__all__ = ["JitImporter"]
