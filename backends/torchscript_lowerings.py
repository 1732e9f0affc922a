"""TorchScript lowerings of the prim ops, of the few aten ops written as Python syntax,
and of every ``dexport::*`` op that ``dexport.backends.torchscript_detection`` implements
(see ``dexport.backends.torchscript_emit`` for what a lowering returns). Every other
aten op is emitted generically, as a ``torch.ops.aten.<name>(...)`` call."""
from __future__ import annotations

from dexport.backends.torchscript import lowering
from dexport.backends.torchscript_detection import FUNCTIONS
from dexport.backends.torchscript_emit import EmitContext, annotation, literal
from dexport.ir.graph import Node
from dexport.ir.types import ListType, OptionalType, ScalarType, TensorType, TupleType


@lowering("prim::Constant")
def _constant(ctx: EmitContext, node: Node):
    value, out = node.attrs["value"], node.output
    text = None if hasattr(value, "shape") else literal(value, out.type)
    if text is None:
        if not hasattr(value, "shape"):
            raise ctx.fail(f"the constant {type(value).__name__} cannot be written in TorchScript source")
        text = ctx.buffer(f"const_{node.meta.scope.rsplit('.', 1)[-1]}", value)
    ctx.env[out] = text


@lowering("prim::Param")
def _param(ctx: EmitContext, node: Node):
    name = node.attrs["name"]
    if name not in ctx.param_attrs:
        ctx.param_attrs[name] = ctx.buffer(name, ctx.graph.params[name])
    ctx.env[node.output] = ctx.param_attrs[name]


def _plain_elem(typ) -> bool:
    return isinstance(typ, TensorType) or (isinstance(typ, ScalarType) and typ.kind in ("int", "float", "bool"))


@lowering("prim::ListConstruct")
def _list(ctx: EmitContext, node: Node):
    items = ", ".join(ctx.expr(v) for v in node.inputs)
    typ = node.output.type
    if node.inputs and isinstance(typ, ListType) and _plain_elem(typ.elem):
        ctx.env[node.output] = f"[{items}]"  # inline: TorchScript infers the element type
        return None
    if annotation(typ) is None:
        raise ctx.fail(f"a list of type {typ} has no TorchScript annotation",
                       "capture with example inputs so the list's element type is known")
    return f"[{items}]"  # bound with its annotation (empty lists, lists of optionals)


@lowering("prim::ListUnpack")
def _list_unpack(ctx: EmitContext, node: Node):
    seq = ctx.expr(node.inputs[0])
    for k, out in enumerate(node.outputs):
        name = ctx.value_name(node, k)
        ctx.statement(f"{name} = {seq}[{k}]")
        ctx.env[out] = name


@lowering("prim::TupleConstruct")
def _tuple(ctx: EmitContext, node: Node):
    items = [ctx.expr(v) for v in node.inputs]
    ctx.env[node.output] = f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"


@lowering("prim::TupleUnpack")
def _tuple_unpack(ctx: EmitContext, node: Node):
    if len(node.outputs) == 1:
        return f"{ctx.expr(node.inputs[0])}[0]"
    return ctx.expr(node.inputs[0])


@lowering("prim::NumToTensor")
def _num_to_tensor(ctx: EmitContext, node: Node):
    return f"torch.ops.prim.NumToTensor({ctx.expr(node.inputs[0])})"


@lowering("prim::unchecked_cast")
def _unchecked_cast(ctx: EmitContext, node: Node):
    if isinstance(node.inputs[0].type, OptionalType):
        return f"torch.jit._unwrap_optional({ctx.expr(node.inputs[0])})"
    ctx.env[node.output] = ctx.expr(node.inputs[0])


def _placeholder(ctx: EmitContext, typ) -> str:
    """A value of type ``typ`` that stands for "not assigned yet" (never read)."""
    if isinstance(typ, TensorType):
        return "torch.empty(0)"
    if isinstance(typ, OptionalType):
        return "None"
    if isinstance(typ, ScalarType) and typ.kind in ("int", "float", "bool"):
        return {"int": "0", "float": "0.0", "bool": "False"}[typ.kind]
    if isinstance(typ, ListType) and annotation(typ):
        return f"torch.jit.annotate({annotation(typ)}, [])"
    if isinstance(typ, TupleType):
        return "(" + "".join(_placeholder(ctx, t) + ", " for t in typ.elems) + ")"
    raise ctx.fail(f"no TorchScript placeholder for an uninitialized {typ}")


@lowering("prim::Uninitialized")
def _uninitialized(ctx: EmitContext, node: Node):
    return _placeholder(ctx, node.output.type)


# aten ops that are Python syntax in TorchScript: the source template of each.
_SYNTAX = {
    "aten::__is__": "{0} is {1}",
    "aten::__isnot__": "{0} is not {1}",
    "aten::__getitem__.t": "{0}[{1}]",
    "aten::len.t": "len({0})",
    "prim::min.int": "min({0}, {1})",
    "prim::max.int": "max({0}, {1})",
    "prim::min.float": "min({0}, {1})",
    "prim::max.float": "max({0}, {1})",
}


@lowering(*_SYNTAX)
def _syntax(ctx: EmitContext, node: Node):
    return _SYNTAX[node.op].format(*(ctx.expr(v) for v in node.inputs))


@lowering("aten::Int.Tensor", "aten::Float.Tensor", "aten::Bool.Tensor")
def _to_number(ctx: EmitContext, node: Node):
    kind = node.op.removeprefix("aten::").partition(".")[0].lower()
    return f"{kind}({ctx.expr(node.inputs[0])})"


# --------------------------------------------------------------------------- control flow

def _declare(ctx: EmitContext, node: Node, inits: list[str] | None = None) -> list[str]:
    """Names for ``node``'s outputs; Optional-typed ones (and all, for a loop) declared
    with their annotation first, so TorchScript types them as the IR does."""
    names = []
    for k, out in enumerate(node.outputs):
        name = ctx.value_name(node, k)
        ann = annotation(out.type)
        init = inits[k] if inits is not None else ("None" if isinstance(out.type, OptionalType) else None)
        if init is not None:
            ctx.statement(f"{name}: {ann} = {init}" if ann and isinstance(out.type, (OptionalType, ListType))
                          else f"{name} = {init}")
        names.append(name)
        ctx.env[out] = name
    return names


@lowering("prim::If")
def _if(ctx: EmitContext, node: Node):
    cond = ctx.expr(node.inputs[0])
    names = _declare(ctx, node)
    then_block, else_block = node.blocks
    for head, block in ((f"if {cond}:", then_block), ("else:", else_block)):
        ctx.statement(head)
        ctx.emit_block(block, names)


_MAX_TRIP = 9223372036854775807  # TorchScript's trip count of a while loop


@lowering("prim::Loop")
def _loop(ctx: EmitContext, node: Node):
    trip, cond = ctx.expr(node.inputs[0]), ctx.expr(node.inputs[1])
    body = node.blocks[0]
    names = _declare(ctx, node, [ctx.expr(v) for v in node.inputs[2:]])
    counter = ctx.names.take("loop_i")
    ctx.env[body.params[0]] = counter
    for param, name in zip(body.params[1:], names):
        ctx.env[param] = name
    body_cond = body.returns[0]
    always = cond == "True" and body_cond.node is not None and body_cond.node.op == "prim::Constant" \
        and body_cond.node.attrs["value"] is True
    if always:
        ctx.statement(f"for {counter} in range({trip}):")
        ctx.emit_block(body, names, body.returns[1:])
        return None
    keep = ctx.names.take("loop_cond")
    ctx.statement(f"{keep} = {cond}")
    ctx.statement(f"{counter} = 0")
    bounded = trip != str(_MAX_TRIP)
    ctx.statement(f"while {keep} and {counter} < {trip}:" if bounded else f"while {keep}:")
    ctx.emit_block(body, [keep, *names])
    ctx.depth += 1
    ctx.line(f"{counter} = {counter} + 1")
    ctx.depth -= 1
    return None


# --------------------------------------------------------------------------- detection ops

def _call_function(ctx: EmitContext, node: Node):
    fn = ctx.functions[node.op]
    ctx.used_functions[node.op] = fn
    args = ", ".join(ctx.expr(v) for v in node.inputs)
    return f"{fn.__name__}({args})"


# Every dexport op with a TorchScript function calls it.
lowering(*sorted(FUNCTIONS))(_call_function)

__all__: list[str] = []
