"""ONNX lowerings of ATen and prim ops (standard ONNX only, default domain).

Rules every lowering here follows (see the API in ``dexport.backends.onnx``):

* torch semantics, not ONNX's: results are cast to the IR output dtype (torch's
  type promotion already decided it), integer division floors or truncates as
  the rounding mode says, negative dims are normalised with the IR rank, a slice
  end of INT64_MAX means "to the end", and empty tensors (0 detections) work.
* Sizes are computed at run time (Shape/Gather); int dims in the IR types may be
  example sizes from a trace and are never emitted as numbers.
"""
from __future__ import annotations

import torch

from dexport.backends.onnx import LoweringContext, lowering
from dexport.ir.graph import Node

INT64_MAX = 2 ** 63 - 1


# --------------------------------------------------------------------------- structure

@lowering("prim::Constant")
def _constant(ctx: LoweringContext, node: Node) -> list:
    return [ctx.const_entry(node.attrs["value"])]


@lowering("prim::Param")
def _param(ctx: LoweringContext, node: Node) -> list:
    name = node.attrs["name"]
    return [ctx.lazy(lambda: ctx.param(name))]


@lowering("prim::ListConstruct", "prim::TupleConstruct")
def _construct(ctx: LoweringContext, node: Node) -> list:
    return [ctx.seq([ctx.env[v] for v in node.inputs])]


@lowering("prim::ListUnpack", "prim::TupleUnpack")
def _unpack(ctx: LoweringContext, node: Node) -> list:
    items = ctx.items(node, 0, len(node.outputs))
    if len(items) != len(node.outputs):
        raise ctx.fail(f"{node.op} of {len(items)} elements into {len(node.outputs)} outputs")
    return items


@lowering("prim::NumToTensor", "aten::ScalarImplicit")
def _same_value(ctx: LoweringContext, node: Node) -> list:
    # IR scalars already are 0-d tensors of the dtype NumToTensor gives.
    return [ctx.env[node.inputs[0]]]


# --------------------------------------------------------------------------- elementwise

def _unary(onnx_op: str):
    def lower(ctx: LoweringContext, node: Node) -> list:
        return [ctx.op(onnx_op, ctx.input(node, 0, ctx.out_dtype(node)))]
    return lower


for _aten, _onnx in {"relu": "Relu", "sigmoid": "Sigmoid", "exp": "Exp", "log": "Log",
                     "sqrt": "Sqrt", "neg": "Neg", "abs": "Abs", "floor": "Floor",
                     "ceil": "Ceil", "tanh": "Tanh"}.items():
    lowering(f"aten::{_aten}")(_unary(_onnx))
