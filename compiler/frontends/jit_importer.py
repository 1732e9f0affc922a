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
  source line the frontend picks for it (``source_of``).
"""
from __future__ import annotations

import re
from typing import Any, Callable

import torch

from dexport.ir.errors import CaptureError
from dexport.ir.graph import CONSTANT, PARAM, SMALL_TENSOR_NUMEL, Block, Graph, Meta, Node, Value
from dexport.ir.ops import has_op, ir_type_from_jit, registered_ops, type_of_constant


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
            else:
                self._op(node, block)
        block.set_returns([self.values[v.unique()] for v in jit_block.outputs()])

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
        inputs = [self.values[v.unique()] for v in node.inputs()]
        types = [ir_type_from_jit(v.type()) for v in node.outputs()]
        new = self._append(block, op, inputs, types, meta=self._meta(node))
        for jit_block in node.blocks():
            sub = new.add_block()
            for p in jit_block.inputs():
                self.values[p.unique()] = sub.add_param(ir_type_from_jit(p.type()))
            self._convert_block(jit_block, sub)
        for jit_out, value in zip(node.outputs(), new.outputs):
            self.values[jit_out.unique()] = value

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


__all__ = ["JitImporter"]
