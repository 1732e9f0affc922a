"""ONNX lowerings of control flow left in a graph (TorchScript's ``prim::If`` /
``prim::Loop`` from scripted code called inside a trace) and of the TorchScript list
helpers their bodies use.

List helpers: ``__getitem__.t``, ``len.t``, ``slice.t`` and ``add.t`` (concatenation) work
on a list's elements where the list is built element by element, else on its 1-D tensor
form (a size list); Python's bool operators and ``torch.tensor(scalar)`` lower too.

``prim::If`` becomes ONNX ``If`` and ``prim::Loop`` ONNX ``Loop``; each IR block becomes
a subgraph lowered with the same context. Subgraphs read outer values by their ONNX
names, as ONNX allows; every subgraph output is an Identity made inside it, with the
dtype of the value it returns (a loop-carried value has its own type's dtype, else its
initial value's; the two branches of an If the first branch's), and no shape, since shapes may change
from trip to trip. A loop body gets the ``cond`` input ONNX requires besides the trip
number and carried values.
"""
from __future__ import annotations

from typing import Sequence

import onnx
import torch
from onnx import helper

from dexport.backends.onnx import TORCH_TO_ONNX, LoweringContext, _dtype_of_type, _Lazy, _Seq, lowering
from dexport.ir.graph import Block, Node

I64, BOOL = torch.int64, torch.bool
INT64_MAX = 2**63 - 1


def _info(name: str, dtype: torch.dtype | None, rank: int | None = None) -> onnx.ValueInfoProto:
    if dtype is None:
        return helper.make_empty_tensor_value_info(name)
    shape = None if rank is None else [None] * rank
    return helper.make_tensor_value_info(name, TORCH_TO_ONNX[dtype], shape)


def _subgraph(ctx: LoweringContext, block: Block, inputs: Sequence[tuple[str, torch.dtype | None, int | None]],
              params_as: Sequence[str], out_dtypes: Sequence[torch.dtype | None], base: str) -> onnx.GraphProto:
    """Lower ``block`` into its own ONNX graph. ``inputs``: the subgraph's declared
    inputs (name, dtype, rank); ``params_as``: the ONNX name each block parameter
    reads; ``out_dtypes``: the dtype each return must have (None: its own)."""
    outer_nodes, ctx.nodes = ctx.nodes, []
    try:
        for param, name in zip(block.params, params_as):
            ctx.env[param] = name
        ctx.lower_block_nodes(block.nodes)
        outputs = []
        for value, dtype in zip(block.returns, out_dtypes):
            inner = ctx.materialize(ctx.env[value], dtype)
            out = ctx.fresh(f"{base}_out")
            ctx.nodes.append(helper.make_node("Identity", [inner], [out], name=out))
            outputs.append(_info(out, dtype or ctx.dtypes.get(inner)))
        body_nodes = ctx.nodes
    finally:
        ctx.nodes = outer_nodes
    _forget_inner_names(ctx, {o for n in body_nodes for o in n.output})
    return helper.make_graph(body_nodes, ctx.fresh(base), [_info(*i) for i in inputs], outputs)


def _forget_inner_names(ctx: LoweringContext, inner: set[str]) -> None:
    """Entries first made inside a subgraph (a parameter's initializer read, a list's
    Concat) hold names the outer graph cannot see: make them again on the next read."""
    for entry in ctx.env.values():
        if isinstance(entry, _Lazy) and entry.name in inner:
            entry.name = None
        elif isinstance(entry, _Seq):
            for key in [k for k, name in entry.tensors.items() if name in inner]:
                del entry.tensors[key]


def _entry_dtype(ctx: LoweringContext, node: Node, i: int) -> torch.dtype | None:
    entry = ctx.env[node.inputs[i]]
    name = entry if isinstance(entry, str) else None
    return ctx.dtypes.get(name) if name is not None else _dtype_of_type(node.inputs[i].type)


@lowering("prim::If")
def _lower_if(ctx: LoweringContext, node: Node) -> list:
    cond = ctx.input(node, 0, BOOL)
    then_block, else_block = node.blocks
    # Both branches must give one dtype per output: the IR's where known, else the
    # then-branch's (the else-branch is cast to it).
    wanted = [_dtype_of_type(v.type) for v in node.outputs]
    then_g = _subgraph(ctx, then_block, [], [], wanted, "then")
    wanted = [w or _from_onnx(o.type.tensor_type.elem_type) for w, o in zip(wanted, then_g.output)]
    else_g = _subgraph(ctx, else_block, [], [], wanted, "else")
    if not node.outputs:
        return []
    names = ctx.emit("If", [cond], len(node.outputs), then_branch=then_g, else_branch=else_g)
    return [ctx.typed(n, d) for n, d in zip(names, wanted)]


def _from_onnx(elem_type: int) -> torch.dtype | None:
    return next((t for t, e in TORCH_TO_ONNX.items() if e == elem_type), None)


@lowering("prim::Loop")
def _lower_loop(ctx: LoweringContext, node: Node) -> list:
    trip = ctx.input(node, 0, I64)
    cond = ctx.input(node, 1, BOOL)
    carried, dtypes = [], []
    for i in range(2, len(node.inputs)):
        # The carried value's own type first: the initial value may be a placeholder.
        dtype = (_dtype_of_type(node.outputs[i - 2].type) or _dtype_of_type(node.inputs[i].type)
                 or _entry_dtype(ctx, node, i))
        carried.append(ctx.input(node, i, dtype))
        dtypes.append(dtype or ctx.dtypes.get(carried[-1]))
    body = node.blocks[0]
    it, cond_in = ctx.fresh("loop_iter"), ctx.fresh("loop_cond")
    carried_in = [ctx.fresh("loop_carried") for _ in carried]
    for name, dtype in zip(carried_in, dtypes):
        ctx.typed(name, dtype)
    ctx.typed(it, I64)
    graph = _subgraph(ctx, body, [(it, I64, 0), (cond_in, BOOL, 0), *[(n, d, None) for n, d in zip(carried_in, dtypes)]],
                      [it, *carried_in], [BOOL, *dtypes], "loop_body")
    names = ctx.emit("Loop", [trip, cond, *carried], len(node.outputs), body=graph)
    return [ctx.typed(n, d) for n, d in zip(names, dtypes)]


@lowering("prim::Uninitialized")
def _lower_uninitialized(ctx: LoweringContext, node: Node) -> list:
    """TorchScript's placeholder for a value no path has set yet (an early return's
    result before the return): never read, so a 0-d zero, made in whatever dtype the If
    or Loop slot it fills wants."""
    return [ctx.const_entry(0)]


# --------------------------------------------------------------------------- list helpers

@lowering("aten::__getitem__.t")
def _lower_getitem(ctx: LoweringContext, node: Node) -> list:
    """list[k]: the element itself for a list of known elements and a constant k,
    else a Gather from the list's 1-D tensor form (``aten::size`` gives one)."""
    entry = ctx.env[node.inputs[0]]
    if isinstance(entry, _Seq) and ctx.is_const(node, 1):
        return [entry.items[ctx.const(node, 1)]]
    listed = ctx.input(node, 0)
    return [ctx.same_dtype(listed, ctx.op("Gather", listed, ctx.input(node, 1, I64), axis=0))]


@lowering("aten::len.t")
def _lower_len(ctx: LoweringContext, node: Node) -> list:
    entry = ctx.env[node.inputs[0]]
    if isinstance(entry, _Seq):
        return [ctx.const_entry(len(entry.items))]
    return [ctx.typed(ctx.op("Size", ctx.input(node, 0)), I64)]


@lowering("aten::slice.t")
def _lower_slice_list(ctx: LoweringContext, node: Node) -> list:
    """list[start:end:step]: the elements themselves for a list of known elements and
    constant bounds, else a Slice of the list's 1-D tensor form."""
    entry = ctx.env[node.inputs[0]]
    if isinstance(entry, _Seq) and all(ctx.is_const(node, i) for i in (1, 2, 3)):
        return [ctx.seq(entry.items[ctx.const(node, 1):ctx.const(node, 2):ctx.const(node, 3)])]
    listed = ctx.input(node, 0)

    def bound(i: int, default: int) -> str:
        if ctx.is_none(node, i):
            return ctx.int64([default])
        return ctx.unsqueeze(ctx.input(node, i, I64), [0])
    out = ctx.op("Slice", listed, bound(1, 0), bound(2, INT64_MAX), ctx.int64([0]), bound(3, 1))
    return [ctx.same_dtype(listed, out)]


@lowering("aten::add.t")
def _lower_list_concat(ctx: LoweringContext, node: Node) -> list:
    """a + b of two lists: one list (one Concat of their 1-D tensor forms when either is dynamic)."""
    a, b = ctx.env[node.inputs[0]], ctx.env[node.inputs[1]]
    if isinstance(a, _Seq) and isinstance(b, _Seq):
        return [ctx.seq(a.items + b.items)]
    first = ctx.input(node, 0)
    return [ctx.same_dtype(first, ctx.op("Concat", first, ctx.input(node, 1, ctx.dtypes.get(first)), axis=0))]


def _bool_op(op_type: str):
    def lower(ctx: LoweringContext, node: Node) -> list:
        return [ctx.typed(ctx.op(op_type, *[ctx.input(node, i, BOOL) for i in range(len(node.inputs))]), BOOL)]
    return lower


# Python's and / or / != / not on bools in scripted code (also on the scalars of 0-d bool tensors).
lowering("aten::__and__.bool")(_bool_op("And"))
lowering("aten::__or__.bool")(_bool_op("Or"))
lowering("aten::__xor__.bool", "aten::ne.bool")(_bool_op("Xor"))
lowering("aten::__not__")(_bool_op("Not"))


@lowering("aten::tensor.int", "aten::tensor.float", "aten::tensor.bool")
def _lower_scalar_tensor(ctx: LoweringContext, node: Node) -> list:
    """torch.tensor(n) of a scalar: the 0-d tensor the IR scalar already is, in its dtype."""
    default = {"aten::tensor.int": I64, "aten::tensor.float": torch.float32, "aten::tensor.bool": BOOL}[node.op]
    dtype = ctx.const(node, 1) if not ctx.is_none(node, 1) else default
    return [ctx.typed(ctx.input(node, 0, dtype), dtype)]


__all__: list[str] = []
