"""ONNX lowerings of ATen and prim ops (standard ONNX only, default domain).

Rules every lowering here follows (see the API in ``dexport.backends.onnx``):

* torch semantics, not ONNX's: results are cast to the IR output dtype (torch's
  type promotion already decided it), integer division floors or truncates as
  the rounding mode says, negative dims are normalised with the IR rank, a slice
  end of INT64_MAX means "to the end", and empty tensors (0 detections) work:
  Reshape keeps literal zeros (``allowzero=1``) and sizes that torch infers are
  computed explicitly rather than left to ``-1``.
* Sizes are computed at run time (Shape/Gather); int dims in the IR types may be
  example sizes from a trace and are never emitted as numbers. Ranks and dtypes
  are facts and are used freely.
"""
from __future__ import annotations

import math

import torch

from dexport.backends.onnx import LoweringContext, lowering
from dexport.ir.graph import Node, Value
from dexport.ir.types import ScalarType, TensorType

INT64_MAX = 2 ** 63 - 1
INT64_MIN = -2 ** 63


def _dim(dim: int, rank: int) -> int:
    """A possibly negative dim as a non-negative one (a 0-d tensor takes 0 and -1)."""
    return dim + max(rank, 1) if dim < 0 else dim


def _first_dims(ctx: LoweringContext, name: str, start: int, end: int | None = None) -> str:
    """Shape(name)[start:end] as a 1-D int64 (Shape's own slicing attributes)."""
    attrs = {"start": start} if end is None else {"start": start, "end": end}
    return ctx.typed(ctx.op("Shape", name, **attrs), torch.int64)


def _reshape(ctx: LoweringContext, name: str, shape: str) -> str:
    # allowzero: a 0 in the target is a real 0 (torch), not "copy the input dim".
    return ctx.same_dtype(name, ctx.op("Reshape", name, shape, allowzero=1))


def _list_values(node: Node, i: int) -> list[Value]:
    """The IR values a list input was built from (for their types)."""
    producer = node.inputs[i].node
    if producer is None or producer.op not in ("prim::ListConstruct", "prim::TupleConstruct"):
        return []
    return list(producer.inputs)


def _value_rank(ctx: LoweringContext, value: Value) -> int:
    typ = value.type
    if isinstance(typ, ScalarType):
        return 0
    if isinstance(typ, TensorType) and typ.rank is not None:
        return typ.rank
    raise ctx.fail(f"a list element of {ctx.current.op} has no known rank ({typ})")


def _value_dtype(value: Value) -> torch.dtype | None:
    typ = value.type
    return typ.dtype if isinstance(typ, TensorType) else None


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


@lowering("prim::NumToTensor", "aten::ScalarImplicit", "aten::contiguous", "aten::detach",
          "aten::clone", "aten::alias", "aten::lift_fresh")
def _same_value(ctx: LoweringContext, node: Node) -> list:
    # IR scalars already are 0-d tensors of the dtype NumToTensor gives.
    return [ctx.env[node.inputs[0]]]


@lowering("aten::dropout", "aten::feature_dropout")
def _dropout(ctx: LoweringContext, node: Node) -> list:
    if ctx.const(node, 2):
        raise ctx.fail("dropout in training mode has no ONNX inference equivalent",
                       "export the model in eval() mode")
    return [ctx.env[node.inputs[0]]]


# --------------------------------------------------------------------------- casts, sizes

@lowering("aten::to.dtype", "aten::to.device", "aten::to.dtype_layout", "aten::to.other",
          "aten::type_as", "aten::Int.Tensor", "aten::Float.Tensor", "aten::Bool.Tensor",
          "aten::_to_copy")
def _to(ctx: LoweringContext, node: Node) -> list:
    return [ctx.input(node, 0, ctx.out_dtype(node))]


@lowering("aten::size.int")
def _size_int(ctx: LoweringContext, node: Node) -> list:
    return [ctx.dim(ctx.input(node, 0), _dim(ctx.const(node, 1), ctx.rank(node, 0)))]


@lowering("aten::size", "aten::_shape_as_tensor")
def _size(ctx: LoweringContext, node: Node) -> list:
    return [ctx.shape(ctx.input(node, 0))]


@lowering("aten::numel")
def _numel(ctx: LoweringContext, node: Node) -> list:
    return [ctx.typed(ctx.op("Size", ctx.input(node, 0)), torch.int64)]


@lowering("aten::dim")
def _rank(ctx: LoweringContext, node: Node) -> list:
    return [ctx.const_entry(ctx.rank(node, 0))]


# --------------------------------------------------------------------------- elementwise

def _unary(onnx_op: str, compute: torch.dtype | None = None):
    """``compute``: run in this dtype and cast back (log2 in double rounds exact
    powers of two to exact results, as torch's log2 gives them)."""
    def lower(ctx: LoweringContext, node: Node) -> list:
        dtype = ctx.out_dtype(node)
        x = ctx.input(node, 0, compute or dtype)
        return [ctx.cast(ctx.typed(ctx.op(onnx_op, x), compute or dtype), dtype)]
    return lower


for _aten, _onnx in {"relu": "Relu", "sigmoid": "Sigmoid", "exp": "Exp", "log": "Log",
                     "sqrt": "Sqrt", "neg": "Neg", "abs": "Abs", "floor": "Floor",
                     "ceil": "Ceil", "round": "Round", "tanh": "Tanh", "erf": "Erf",
                     "sin": "Sin", "cos": "Cos", "sign": "Sign",
                     "reciprocal": "Reciprocal", "tan": "Tan", "asin": "Asin",
                     "acos": "Acos", "atan": "Atan", "sinh": "Sinh", "cosh": "Cosh",
                     "asinh": "Asinh", "acosh": "Acosh", "atanh": "Atanh"}.items():
    lowering(f"aten::{_aten}")(_unary(_onnx))


@lowering("aten::rsqrt")
def _rsqrt(ctx: LoweringContext, node: Node) -> list:
    x = ctx.input(node, 0, ctx.out_dtype(node))
    return [ctx.op("Reciprocal", ctx.op("Sqrt", x))]


_LOG_BASES = {"aten::log2": 2.0, "aten::log10": 10.0}


@lowering(*_LOG_BASES)
def _log_base(ctx: LoweringContext, node: Node) -> list:
    dtype = ctx.out_dtype(node)
    ln = ctx.op("Log", ctx.input(node, 0, torch.float64))
    base = ctx.constant(math.log(_LOG_BASES[node.op]), torch.float64)
    return [ctx.cast(ctx.typed(ctx.op("Div", ln, base), torch.float64), dtype)]


def _expm1(ctx: LoweringContext, x: str, dtype: torch.dtype) -> str:
    """exp(x) - 1 without losing small x to rounding: (u - 1) * x / log(u) with
    u = exp(x) (Kahan), x itself where u rounds to 1, -1 where u - 1 does."""
    one = ctx.constant(1, dtype)
    u = ctx.op("Exp", x)
    um1 = ctx.op("Sub", u, one)
    exact = ctx.op("Div", ctx.op("Mul", um1, x), ctx.op("Log", u))
    inf = ctx.op("Equal", u, ctx.constant(math.inf, dtype))
    out = ctx.op("Where", inf, u, exact)  # inf * x / inf is nan
    out = ctx.op("Where", ctx.op("Equal", um1, ctx.constant(-1, dtype)), um1, out)
    return ctx.op("Where", ctx.op("Equal", u, one), x, out)


@lowering("aten::expm1")
def _expm1_op(ctx: LoweringContext, node: Node) -> list:
    dtype = ctx.out_dtype(node)
    return [_expm1(ctx, ctx.input(node, 0, dtype), dtype)]


@lowering("aten::log1p")
def _log1p(ctx: LoweringContext, node: Node) -> list:
    """log(1 + x) without losing small x: log(u) * x / (u - 1) with u = 1 + x
    (Goldberg), x itself where u rounds to 1, log(u) where u is inf."""
    dtype = ctx.out_dtype(node)
    x = ctx.input(node, 0, dtype)
    one = ctx.constant(1, dtype)
    u = ctx.op("Add", x, one)
    log_u = ctx.op("Log", u)
    exact = ctx.op("Div", ctx.op("Mul", log_u, x), ctx.op("Sub", u, one))
    out = ctx.op("Where", ctx.op("Equal", u, ctx.constant(math.inf, dtype)), log_u, exact)
    return [ctx.op("Where", ctx.op("Equal", u, one), x, out)]


@lowering("aten::elu")
def _elu(ctx: LoweringContext, node: Node) -> list:
    """scale * x for x > 0, else scale * alpha * expm1(input_scale * x)."""
    dtype = ctx.out_dtype(node)
    x = ctx.input(node, 0, dtype)
    alpha, scale, input_scale = (ctx.input(node, i, dtype) if len(node.inputs) > i
                                 else ctx.constant(1, dtype) for i in (1, 2, 3))
    neg = ctx.op("Mul", alpha, _expm1(ctx, ctx.op("Mul", x, input_scale), dtype))
    out = ctx.op("Where", ctx.op("Greater", x, ctx.constant(0, dtype)), x, neg)
    return [ctx.op("Mul", out, scale)]


@lowering("aten::trunc")
def _trunc(ctx: LoweringContext, node: Node) -> list:
    """ONNX (opset 17) has no Trunc: sign(x) * floor(|x|); integers are already whole."""
    dtype = ctx.out_dtype(node)
    x = ctx.input(node, 0, dtype)
    if not dtype.is_floating_point:
        return [ctx.same_dtype(x, ctx.op("Identity", x))]
    return [ctx.op("Mul", ctx.op("Sign", x), ctx.op("Floor", ctx.op("Abs", x)))]


@lowering("aten::isnan")
def _isnan(ctx: LoweringContext, node: Node) -> list:
    dtype = ctx.dtype(node, 0)
    x = ctx.input(node, 0)
    if dtype.is_floating_point:
        return [ctx.typed(ctx.op("IsNaN", x), torch.bool)]
    # integers and bools are never nan (x != x is all false, with x's shape)
    return [ctx.typed(ctx.op("Not", ctx.op("Equal", x, x)), torch.bool)]


def _sign_bit(ctx: LoweringContext, x: str, dtype: torch.dtype) -> str:
    """x < 0 or x is -0.0 (1 / -0.0 is -inf)."""
    zero = ctx.constant(0, dtype)
    return ctx.op("Or", ctx.op("Less", x, zero),
                  ctx.op("Less", ctx.op("Div", ctx.constant(1, dtype), x), zero))


@lowering("aten::atan2")
def _atan2(ctx: LoweringContext, node: Node) -> list:
    """ONNX has no Atan2: atan(y / x), moved by +-pi (the sign of y, -0.0 counted
    negative) where x is negative or -0.0; y where both are zero and x is +0.0.
    Deviation from torch: where both y and x are infinite the result is nan
    (torch gives +-pi/4 or +-3pi/4)."""
    dtype = ctx.out_dtype(node)
    y, x = ctx.input(node, 0, dtype), ctx.input(node, 1, dtype)
    pi = ctx.constant(math.pi, dtype)
    a = ctx.op("Atan", ctx.op("Div", y, x))
    y_neg = _sign_bit(ctx, y, dtype)
    shift = ctx.op("Where", y_neg, ctx.op("Neg", pi), pi)
    x_neg = _sign_bit(ctx, x, dtype)
    out = ctx.op("Where", x_neg, ctx.op("Add", a, shift), a)
    zero = ctx.constant(0, dtype)
    both_zero = ctx.op("And", ctx.op("Equal", y, zero), ctx.op("Equal", x, zero))
    at_zero = ctx.op("Where", x_neg, shift, y)
    return [ctx.op("Where", both_zero, at_zero, out)]


@lowering("aten::silu")
def _silu(ctx: LoweringContext, node: Node) -> list:
    x = ctx.input(node, 0, ctx.out_dtype(node))
    return [ctx.op("Mul", x, ctx.op("Sigmoid", x))]


@lowering("aten::logical_not", "aten::bitwise_not")
def _not(ctx: LoweringContext, node: Node) -> list:
    dtype = ctx.out_dtype(node)
    if dtype == torch.bool:
        return [ctx.op("Not", ctx.input(node, 0, torch.bool))]
    return [ctx.op("BitwiseNot", ctx.input(node, 0, dtype))]


def _alpha(ctx: LoweringContext, node: Node, name: str, dtype: torch.dtype, i: int = 2) -> str:
    """``alpha * name`` unless alpha is the constant 1."""
    if len(node.inputs) <= i or (ctx.is_const(node, i) and ctx.const(node, i) == 1):
        return name
    return ctx.op("Mul", name, ctx.input(node, i, dtype))


def _arith(onnx_op: str, bool_op: str | None = None):
    """add/sub/mul in the output dtype (torch's promotion, recorded in the IR type)."""
    def lower(ctx: LoweringContext, node: Node) -> list:
        dtype = ctx.out_dtype(node)
        a = ctx.input(node, 0, dtype)
        b = _alpha(ctx, node, ctx.input(node, 1, dtype), dtype)
        if dtype == torch.bool:
            if bool_op is None:
                raise ctx.fail(f"{node.op} on bool tensors")
            return [ctx.op(bool_op, a, b)]
        return [ctx.op(onnx_op, a, b)]
    return lower


lowering("aten::add.Tensor", "aten::add.Scalar", "aten::add.int", "aten::add.float")(_arith("Add", "Or"))
lowering("aten::sub.Tensor", "aten::sub.Scalar", "aten::sub.int", "aten::sub.float")(_arith("Sub"))
lowering("aten::mul.Tensor", "aten::mul.Scalar", "aten::mul.int", "aten::mul.float")(_arith("Mul", "And"))


@lowering("aten::rsub.Scalar", "aten::rsub.Tensor")
def _rsub(ctx: LoweringContext, node: Node) -> list:
    dtype = ctx.out_dtype(node)
    return [ctx.op("Sub", ctx.input(node, 1, dtype), _alpha(ctx, node, ctx.input(node, 0, dtype), dtype))]


def _divide(ctx: LoweringContext, node: Node, mode: str | None) -> str:
    dtype = ctx.out_dtype(node)
    a, b = ctx.input(node, 0, dtype), ctx.input(node, 1, dtype)
    floating = dtype.is_floating_point
    if mode is None or (mode == "trunc" and not floating):
        return ctx.op("Div", a, b)  # ONNX integer Div truncates, as C does
    if mode == "floor":
        if floating:
            return ctx.op("Floor", ctx.op("Div", a, b))
        # a - mod(a, b) is an exact multiple of b (mod with b's sign, as Python's)
        return ctx.op("Div", ctx.op("Sub", a, ctx.op("Mod", a, b, fmod=0)), b)
    if mode == "trunc":
        q = ctx.op("Div", a, b)
        return ctx.op("Mul", ctx.op("Sign", q), ctx.op("Floor", ctx.op("Abs", q)))
    raise ctx.fail(f"unknown rounding mode {mode!r}")


@lowering("aten::div.Tensor", "aten::div.Scalar", "aten::div.int", "aten::div.float",
          "aten::true_divide.Tensor")
def _div(ctx: LoweringContext, node: Node) -> list:
    return [_divide(ctx, node, None)]


@lowering("aten::div.Tensor_mode", "aten::div.Scalar_mode")
def _div_mode(ctx: LoweringContext, node: Node) -> list:
    return [_divide(ctx, node, ctx.const(node, 2))]


@lowering("aten::floor_divide", "aten::floor_divide.Scalar", "aten::floordiv.int")
def _floor_divide(ctx: LoweringContext, node: Node) -> list:
    return [_divide(ctx, node, "floor")]


@lowering("aten::remainder.Scalar", "aten::remainder.Tensor", "aten::remainder.int")
def _remainder(ctx: LoweringContext, node: Node) -> list:
    """Python's modulo: the result has the divisor's sign."""
    dtype = ctx.out_dtype(node)
    a, b = ctx.input(node, 0, dtype), ctx.input(node, 1, dtype)
    if not dtype.is_floating_point:
        return [ctx.op("Mod", a, b, fmod=0)]
    return [ctx.op("Sub", a, ctx.op("Mul", ctx.op("Floor", ctx.op("Div", a, b)), b))]


@lowering("aten::fmod.Scalar", "aten::fmod.Tensor")
def _fmod(ctx: LoweringContext, node: Node) -> list:
    """C's fmod: the result has the dividend's sign (ONNX Mod with fmod=1)."""
    dtype = ctx.out_dtype(node)
    return [ctx.op("Mod", ctx.input(node, 0, dtype), ctx.input(node, 1, dtype), fmod=1)]


@lowering("aten::pow.Tensor_Scalar", "aten::pow.Tensor_Tensor", "aten::pow.Scalar")
def _pow(ctx: LoweringContext, node: Node) -> list:
    dtype = ctx.out_dtype(node)
    return [ctx.op("Pow", ctx.input(node, 0, dtype), ctx.input(node, 1, dtype))]


@lowering("aten::minimum", "aten::maximum", "aten::min.other", "aten::max.other",
          "prim::min.int", "prim::max.int", "prim::min.float", "prim::max.float")
def _min_max(ctx: LoweringContext, node: Node) -> list:
    dtype = ctx.out_dtype(node)
    op = "Min" if node.op in ("aten::minimum", "aten::min.other", "prim::min.int", "prim::min.float") else "Max"
    return [ctx.op(op, ctx.input(node, 0, dtype), ctx.input(node, 1, dtype))]


@lowering("aten::clamp", "aten::clamp.Tensor", "aten::clamp_min", "aten::clamp_max",
          "aten::clamp_min.Tensor", "aten::clamp_max.Tensor")
def _clamp(ctx: LoweringContext, node: Node) -> list:
    """Max with the lower bound, then Min with the upper (torch: min > max gives max)."""
    dtype = ctx.out_dtype(node)
    x = ctx.input(node, 0, dtype)
    if node.op.startswith("aten::clamp_min"):
        bounds = [("Max", 1)]
    elif node.op.startswith("aten::clamp_max"):
        bounds = [("Min", 1)]
    else:
        bounds = [("Max", 1), ("Min", 2)]
    for op, i in bounds:
        if not ctx.is_none(node, i):
            x = ctx.op(op, x, ctx.input(node, i, dtype))
    return [x]


def _promoted(ctx: LoweringContext, node: Node, idxs: tuple[int, ...]) -> torch.dtype:
    """torch's result dtype for the given inputs (zero-dim tensors and Python scalars
    promote only across categories), from their IR types."""
    args = []
    for i in idxs:
        typ = node.inputs[i].type
        if isinstance(typ, ScalarType) and typ.kind in ("int", "float", "bool"):
            args.append({"int": 1, "float": 1.0, "bool": True}[typ.kind])
        elif isinstance(typ, ScalarType) and ctx.is_const(node, i):
            args.append(ctx.const(node, i))
        else:
            args.append(torch.zeros(() if ctx.rank(node, i) == 0 else (1,), dtype=ctx.dtype(node, i)))
    return torch.result_type(*args)


def _compare(onnx_op: str, negate: bool = False):
    def lower(ctx: LoweringContext, node: Node) -> list:
        dtype = _promoted(ctx, node, (0, 1))
        if dtype == torch.bool and onnx_op != "Equal":
            dtype = torch.int64  # ONNX orders numbers only
        out = ctx.op(onnx_op, ctx.input(node, 0, dtype), ctx.input(node, 1, dtype))
        return [ctx.op("Not", out) if negate else out]
    return lower


for _name, (_onnx, _neg) in {"eq": ("Equal", False), "ne": ("Equal", True), "lt": ("Less", False),
                             "le": ("LessOrEqual", False), "gt": ("Greater", False),
                             "ge": ("GreaterOrEqual", False)}.items():
    lowering(f"aten::{_name}.Tensor", f"aten::{_name}.Scalar", f"aten::{_name}.int",
             f"aten::{_name}.float")(_compare(_onnx, _neg))


def _logical(bool_op: str, bitwise_op: str | None, logical: bool):
    """``__and__`` / ``bitwise_and`` act bitwise on integers; ``logical_and`` first
    turns its operands into bools."""
    def lower(ctx: LoweringContext, node: Node) -> list:
        dtype = torch.bool if logical else ctx.out_dtype(node)
        a, b = ctx.input(node, 0, dtype), ctx.input(node, 1, dtype)
        if dtype == torch.bool:
            out = ctx.op(bool_op, a, b)
        elif bitwise_op is None:
            raise ctx.fail(f"{node.op} on {dtype} tensors")
        elif ctx.opset < 18:
            raise ctx.fail(f"{node.op} on {dtype} tensors needs ONNX opset 18 ({bitwise_op})",
                           "emit with opset=18 or later")
        else:
            out = ctx.op(bitwise_op, a, b)
        return [ctx.cast(ctx.typed(out, dtype), ctx.out_dtype(node))]
    return lower


lowering("aten::__and__.Tensor", "aten::bitwise_and.Tensor", "aten::bitwise_and.Scalar")(_logical("And", "BitwiseAnd", False))
lowering("aten::__or__.Tensor", "aten::bitwise_or.Tensor", "aten::bitwise_or.Scalar")(_logical("Or", "BitwiseOr", False))
lowering("aten::__xor__.Tensor", "aten::bitwise_xor.Tensor", "aten::bitwise_xor.Scalar")(_logical("Xor", "BitwiseXor", False))
lowering("aten::logical_and")(_logical("And", None, True))
lowering("aten::logical_or")(_logical("Or", None, True))
lowering("aten::logical_xor")(_logical("Xor", None, True))


@lowering("aten::where.self", "aten::where.ScalarOther", "aten::where.ScalarSelf", "aten::where.Scalar")
def _where(ctx: LoweringContext, node: Node) -> list:
    dtype = ctx.out_dtype(node)
    return [ctx.op("Where", ctx.input(node, 0, torch.bool), ctx.input(node, 1, dtype),
                   ctx.input(node, 2, dtype))]


@lowering("aten::masked_fill.Scalar", "aten::masked_fill.Tensor")
def _masked_fill(ctx: LoweringContext, node: Node) -> list:
    dtype = ctx.out_dtype(node)
    return [ctx.op("Where", ctx.input(node, 1, torch.bool), ctx.input(node, 2, dtype),
                   ctx.input(node, 0, dtype))]


# --------------------------------------------------------------------------- reductions

def _reduce_dims(ctx: LoweringContext, node: Node, i: int, rank: int) -> list[int] | None:
    """Reduction dims from a dim / dim-list input; None (or []) means every dim."""
    if len(node.inputs) <= i or ctx.is_none(node, i):
        return None
    dims = ctx.const(node, i)
    dims = [dims] if isinstance(dims, int) else list(dims)
    return [_dim(d, rank) for d in dims] or None


def _reduction(onnx_op: str, dim_index: int | None, keepdim_index: int | None):
    """sum/mean/prod/amax/amin: reduce in the output dtype (torch sums ints and bools
    as int64, recorded in the IR type)."""
    def lower(ctx: LoweringContext, node: Node) -> list:
        dtype = ctx.out_dtype(node)
        rank = ctx.rank(node, 0)
        dims = _reduce_dims(ctx, node, dim_index, rank) if dim_index is not None else None
        keep = bool(ctx.const(node, keepdim_index)) if keepdim_index is not None else False
        x = ctx.input(node, 0, dtype)
        if rank == 0:
            return [x]
        return [ctx.reduce(onnx_op, x, dims, keep)]
    return lower


lowering("aten::sum")(_reduction("ReduceSum", None, None))
lowering("aten::sum.dim_IntList")(_reduction("ReduceSum", 1, 2))
lowering("aten::mean")(_reduction("ReduceMean", None, None))
lowering("aten::mean.dim")(_reduction("ReduceMean", 1, 2))
lowering("aten::prod")(_reduction("ReduceProd", None, None))
lowering("aten::prod.dim_int")(_reduction("ReduceProd", 1, 2))
lowering("aten::amax")(_reduction("ReduceMax", 1, 2))
lowering("aten::amin")(_reduction("ReduceMin", 1, 2))
lowering("aten::max")(_reduction("ReduceMax", None, None))
lowering("aten::min")(_reduction("ReduceMin", None, None))


def _any_all(is_all: bool):
    """Counting (not ReduceMax) so that an empty reduction gives torch's False/True."""
    def lower(ctx: LoweringContext, node: Node) -> list:
        rank = ctx.rank(node, 0)
        dims = _reduce_dims(ctx, node, 1, rank) if len(node.inputs) > 1 else None
        keep = bool(ctx.const(node, 2)) if len(node.inputs) > 2 else False
        b = ctx.input(node, 0, torch.bool)
        if rank == 0:
            return [b]
        if is_all:
            b = ctx.op("Not", b)
        count = ctx.reduce("ReduceSum", ctx.cast(b, torch.int64), dims, keep)
        hit = ctx.op("Greater", count, ctx.int64(0))
        return [ctx.op("Not", hit) if is_all else hit]
    return lower


lowering("aten::any", "aten::any.dim", "aten::any.dims")(_any_all(False))
lowering("aten::all", "aten::all.dim", "aten::all.dims")(_any_all(True))


def _arg_reduce(onnx_op: str):
    def lower(ctx: LoweringContext, node: Node) -> list:
        x = ctx.input(node, 0)
        keep = int(bool(ctx.const(node, 2)))
        if ctx.is_none(node, 1):  # over the flattened tensor
            flat = _reshape(ctx, x, ctx.int64([-1]))
            out = ctx.op(onnx_op, flat, axis=0, keepdims=0)
            if keep:
                out = _reshape(ctx, out, ctx.constant([1] * ctx.rank(node, 0), torch.int64))
            return [out]
        axis = _dim(ctx.const(node, 1), ctx.rank(node, 0))
        return [ctx.op(onnx_op, x, axis=axis, keepdims=keep, select_last_index=0)]
    return lower


lowering("aten::argmax")(_arg_reduce("ArgMax"))
lowering("aten::argmin")(_arg_reduce("ArgMin"))


def _max_min_dim(reduce_op: str, arg_op: str):
    def lower(ctx: LoweringContext, node: Node) -> list:
        x = ctx.input(node, 0)
        axis = _dim(ctx.const(node, 1), ctx.rank(node, 0))
        keep = bool(ctx.const(node, 2))
        return [ctx.reduce(reduce_op, x, [axis], keep),
                ctx.op(arg_op, x, axis=axis, keepdims=int(keep), select_last_index=0)]
    return lower


lowering("aten::max.dim")(_max_min_dim("ReduceMax", "ArgMax"))
lowering("aten::min.dim")(_max_min_dim("ReduceMin", "ArgMin"))


@lowering("aten::cumsum")
def _cumsum(ctx: LoweringContext, node: Node) -> list:
    dtype = ctx.out_dtype(node)
    if ctx.rank(node, 0) == 0:  # the running sum of one element (ONNX CumSum wants rank >= 1)
        return [ctx.input(node, 0, dtype)]
    axis = _dim(ctx.const(node, 1), ctx.rank(node, 0))
    return [ctx.op("CumSum", ctx.input(node, 0, dtype), ctx.int64(axis))]


@lowering("aten::softmax.int", "aten::log_softmax.int", "aten::_softmax", "aten::_log_softmax")
def _softmax(ctx: LoweringContext, node: Node) -> list:
    dtype = ctx.out_dtype(node)
    rank = ctx.rank(node, 0)
    axis = _dim(ctx.const(node, 1), rank)
    op = "LogSoftmax" if "log_softmax" in node.op else "Softmax"
    if rank == 0:  # ONNX wants rank >= 1: softmax of one element, as a 1-element vector
        return [ctx.squeeze(ctx.op(op, ctx.unsqueeze(ctx.input(node, 0, dtype), [0]), axis=0), [0])]
    return [ctx.op(op, ctx.input(node, 0, dtype), axis=axis)]


@lowering("aten::bincount")
def _bincount(ctx: LoweringContext, node: Node) -> list:
    """Counts by comparing every element with 0..n-1, n = max(max(x) + 1, minlength);
    a -1 is appended before the max so that an empty input gives n = minlength."""
    dtype = ctx.out_dtype(node)
    x = ctx.input(node, 0, torch.int64)
    top = ctx.reduce("ReduceMax", ctx.op("Concat", x, ctx.int64([-1]), axis=0), None, False)
    n = ctx.op("Max", ctx.op("Add", top, ctx.int64(1)), ctx.input(node, 2, torch.int64))
    bins = ctx.op("Range", ctx.int64(0), n, ctx.int64(1))
    hits = ctx.cast(ctx.op("Equal", ctx.unsqueeze(x, [1]), ctx.unsqueeze(bins, [0])), dtype)
    if not ctx.is_none(node, 1):
        hits = ctx.op("Mul", hits, ctx.unsqueeze(ctx.input(node, 1, dtype), [1]))
    return [ctx.reduce("ReduceSum", hits, [0], False)]


# --------------------------------------------------------------------------- shapes

@lowering("aten::reshape", "aten::view", "aten::_reshape_alias")
def _reshape_op(ctx: LoweringContext, node: Node) -> list:
    return [_reshape(ctx, ctx.input(node, 0), ctx.input(node, 1, torch.int64))]


@lowering("aten::reshape_as", "aten::view_as")
def _reshape_as(ctx: LoweringContext, node: Node) -> list:
    return [_reshape(ctx, ctx.input(node, 0), ctx.shape(ctx.input(node, 1)))]


@lowering("aten::flatten.using_ints")
def _flatten(ctx: LoweringContext, node: Node) -> list:
    """The merged size is a product of run-time dims (not -1, which cannot be
    inferred for an empty tensor)."""
    x = ctx.input(node, 0)
    rank = ctx.rank(node, 0)
    if rank == 0:
        return [_reshape(ctx, x, ctx.int64([1]))]
    start, end = _dim(ctx.const(node, 1), rank), _dim(ctx.const(node, 2), rank)
    if start == end:
        return [x]
    merged = ctx.reduce("ReduceProd", _first_dims(ctx, x, start, end + 1), [0], True)
    return [_reshape_span(ctx, x, rank, start, end + 1, merged)]


@lowering("aten::unflatten.int")
def _unflatten(ctx: LoweringContext, node: Node) -> list:
    x = ctx.input(node, 0)
    rank = ctx.rank(node, 0)
    dim = _dim(ctx.const(node, 1), rank)
    if ctx.is_const(node, 2) and -1 in ctx.const(node, 2):
        sizes = list(ctx.const(node, 2))
        known = math.prod(s for s in sizes if s != -1)
        inferred = ctx.op("Div", _first_dims(ctx, x, dim, dim + 1), ctx.int64([known]))
        k = sizes.index(-1)
        parts = [p for p in (ctx.int64(sizes[:k]) if k else None, inferred,
                             ctx.int64(sizes[k + 1:]) if k + 1 < len(sizes) else None) if p]
        sizes_name = ctx.op("Concat", *parts, axis=0) if len(parts) > 1 else parts[0]
    else:
        sizes_name = ctx.input(node, 2, torch.int64)
    return [_reshape_span(ctx, x, rank, dim, dim + 1, sizes_name)]


def _reshape_span(ctx: LoweringContext, x: str, rank: int, start: int, end: int, middle: str) -> str:
    """``x`` reshaped with its dims [start, end) replaced by the 1-D int64 ``middle``
    (flatten merges them, unflatten splits one)."""
    parts = ([_first_dims(ctx, x, 0, start)] if start else []) + [middle] + \
            ([_first_dims(ctx, x, end)] if end < rank else [])
    shape = parts[0] if len(parts) == 1 else ctx.op("Concat", *parts, axis=0)
    return _reshape(ctx, x, shape)


@lowering("aten::permute")
def _permute(ctx: LoweringContext, node: Node) -> list:
    rank = ctx.rank(node, 0)
    perm = [_dim(d, rank) for d in ctx.const(node, 1)]
    x = ctx.input(node, 0)
    return [x if perm == list(range(rank)) else ctx.op("Transpose", x, perm=perm)]


@lowering("aten::transpose.int", "aten::t", "aten::numpy_T")
def _transpose(ctx: LoweringContext, node: Node) -> list:
    rank = ctx.rank(node, 0)
    x = ctx.input(node, 0)
    if rank < 2:  # swapping a 0-d or 1-d tensor's dims (0 and -1 are the same one) is no-op
        return [x]
    if node.op == "aten::transpose.int":
        a, b = _dim(ctx.const(node, 1), rank), _dim(ctx.const(node, 2), rank)
    else:
        a, b = (0, rank - 1) if rank >= 2 else (0, 0)
    if node.op == "aten::numpy_T":
        perm = list(reversed(range(rank)))
    else:
        perm = list(range(rank))
        perm[a], perm[b] = perm[b], perm[a]
    return [x if perm == list(range(rank)) else ctx.op("Transpose", x, perm=perm)]


@lowering("aten::expand")
def _expand(ctx: LoweringContext, node: Node) -> list:
    """Expand broadcasts, so torch's -1 ("keep this size") becomes 1."""
    x = ctx.input(node, 0)
    if ctx.is_const(node, 1):
        shape = ctx.int64([1 if s == -1 else s for s in ctx.const(node, 1)])
    else:
        items = ctx.items(node, 1, ctx.out_rank(node))
        shape = ctx.materialize(ctx.seq([ctx.const_entry(1) if _is_minus_one(ctx, e) else e
                                         for e in items]), torch.int64)
    return [ctx.same_dtype(x, ctx.op("Expand", x, shape))]


def _is_minus_one(ctx: LoweringContext, entry) -> bool:
    return ctx.entry_is_const(entry) and ctx.entry_value(entry) == -1


@lowering("aten::expand_as")
def _expand_as(ctx: LoweringContext, node: Node) -> list:
    x = ctx.input(node, 0)
    return [ctx.same_dtype(x, ctx.op("Expand", x, ctx.shape(ctx.input(node, 1))))]


@lowering("aten::repeat")
def _repeat(ctx: LoweringContext, node: Node) -> list:
    x = ctx.input(node, 0)
    rank = ctx.rank(node, 0)
    extra = ctx.out_rank(node) - rank
    if extra:
        x = ctx.unsqueeze(x, list(range(extra)))
    return [ctx.op("Tile", x, ctx.input(node, 1, torch.int64))]


@lowering("aten::squeeze.dim", "aten::squeeze.dims", "aten::squeeze")
def _squeeze(ctx: LoweringContext, node: Node) -> list:
    """torch squeezes only dims of size 1 (others are left alone); which dims went
    is read off the IR ranks the capture recorded."""
    x = ctx.input(node, 0)
    rank, out_rank = ctx.rank(node, 0), ctx.out_rank(node)
    if out_rank == rank:
        return [x]
    if node.op == "aten::squeeze":
        shape = node.inputs[0].type.shape
        dims = [d for d, s in enumerate(shape) if s == 1]
    else:
        dims = ctx.const(node, 1)
        dims = [_dim(d, rank) for d in ([dims] if isinstance(dims, int) else dims)]
        if len(dims) != rank - out_rank:
            shape = node.inputs[0].type.shape
            dims = [d for d in dims if shape[d] == 1]
    if len(dims) != rank - out_rank:
        raise ctx.fail(f"cannot tell which dims {node.op} removes",
                       "give the squeezed dims explicitly in the model")
    return [ctx.squeeze(x, dims)]


@lowering("aten::unsqueeze")
def _unsqueeze(ctx: LoweringContext, node: Node) -> list:
    dim = ctx.const(node, 1)
    return [ctx.unsqueeze(ctx.input(node, 0), [_dim(dim, ctx.rank(node, 0) + 1)])]


@lowering("aten::select.int")
def _select(ctx: LoweringContext, node: Node) -> list:
    axis = _dim(ctx.const(node, 1), ctx.rank(node, 0))
    x = ctx.input(node, 0)
    return [ctx.same_dtype(x, ctx.op("Gather", x, ctx.input(node, 2, torch.int64), axis=axis))]


def _as_1d(ctx: LoweringContext, node: Node, i: int, default: int) -> str:
    if ctx.is_none(node, i):
        return ctx.int64([default])
    if ctx.is_const(node, i):
        return ctx.int64([ctx.const(node, i)])
    return ctx.unsqueeze(ctx.input(node, i, torch.int64), [0])


@lowering("aten::slice.Tensor")
def _slice(ctx: LoweringContext, node: Node) -> list:
    x = ctx.input(node, 0)
    rank = ctx.rank(node, 0)
    axis = _dim(ctx.const(node, 1), rank)
    consts = [ctx.const(node, i) if ctx.is_const(node, i) else "?" for i in (2, 3, 4)]
    if consts[0] in (0, None) and consts[1] in (INT64_MAX, None) and consts[2] == 1:
        return [x]  # x[:, :] — the whole dim
    out = ctx.op("Slice", x, _as_1d(ctx, node, 2, 0), _as_1d(ctx, node, 3, INT64_MAX),
                 ctx.int64([axis]), _as_1d(ctx, node, 4, 1))
    return [ctx.same_dtype(x, out)]


def _scatter_along(ctx: LoweringContext, x: str, src: str, axis: int, rank: int, positions: str) -> str:
    """``x`` with the slices at ``positions`` (1-D int64) along ``axis`` replaced by ``src``."""
    shape = [1] * rank
    shape[axis] = -1
    index = ctx.op("Expand", _reshape(ctx, positions, ctx.int64(shape)), ctx.shape(src))
    return ctx.same_dtype(x, ctx.op("ScatterElements", x, index, src, axis=axis))


def _positions(ctx: LoweringContext, x: str, axis: int) -> str:
    return ctx.op("Range", ctx.int64(0), ctx.dim(x, axis), ctx.int64(1))


@lowering("aten::slice_scatter")
def _slice_scatter(ctx: LoweringContext, node: Node) -> list:
    """ScatterElements at the positions a Slice of 0..n-1 picks (its clamping and negative
    bounds are torch's)."""
    dtype = ctx.out_dtype(node)
    x, src = ctx.input(node, 0, dtype), ctx.input(node, 1, dtype)
    rank = ctx.rank(node, 0)
    axis = _dim(ctx.const(node, 2), rank)
    picked = ctx.op("Slice", _positions(ctx, x, axis), _as_1d(ctx, node, 3, 0), _as_1d(ctx, node, 4, INT64_MAX),
                    ctx.int64([0]), _as_1d(ctx, node, 5, 1))
    return [_scatter_along(ctx, x, src, axis, rank, picked)]


@lowering("aten::select_scatter")
def _select_scatter(ctx: LoweringContext, node: Node) -> list:
    dtype = ctx.out_dtype(node)
    x = ctx.input(node, 0, dtype)
    rank = ctx.rank(node, 0)
    axis = _dim(ctx.const(node, 2), rank)
    src = ctx.unsqueeze(ctx.input(node, 1, dtype), [axis])
    picked = ctx.op("Gather", _positions(ctx, x, axis), _as_1d(ctx, node, 3, 0), axis=0)
    return [_scatter_along(ctx, x, src, axis, rank, picked)]


@lowering("aten::narrow")
def _narrow(ctx: LoweringContext, node: Node) -> list:
    x = ctx.input(node, 0)
    axis = _dim(ctx.const(node, 1), ctx.rank(node, 0))
    start = _as_1d(ctx, node, 2, 0)
    end = ctx.op("Add", start, _as_1d(ctx, node, 3, 0))
    return [ctx.same_dtype(x, ctx.op("Slice", x, start, end, ctx.int64([axis])))]


@lowering("aten::flip")
def _flip(ctx: LoweringContext, node: Node) -> list:
    """A step -1 slice over each flipped dim (ONNX has no Flip)."""
    rank = ctx.rank(node, 0)
    dims = [_dim(d, rank) for d in ctx.const(node, 1)]
    x = ctx.input(node, 0)
    if not dims:
        return [x]
    n = len(dims)
    out = ctx.op("Slice", x, ctx.int64([-1] * n), ctx.int64([INT64_MIN] * n), ctx.int64(dims),
                 ctx.int64([-1] * n))
    return [ctx.same_dtype(x, out)]


@lowering("aten::cat", "aten::concat", "aten::concatenate")
def _cat(ctx: LoweringContext, node: Node) -> list:
    dtype = ctx.out_dtype(node)
    axis = _dim(ctx.const(node, 1), ctx.out_rank(node))
    parts = [ctx.cast(x, dtype) for x in ctx.inputs(node, 0)]
    return [parts[0] if len(parts) == 1 else ctx.op("Concat", *parts, axis=axis)]


@lowering("aten::stack")
def _stack(ctx: LoweringContext, node: Node) -> list:
    dtype = ctx.out_dtype(node)
    axis = _dim(ctx.const(node, 1), ctx.out_rank(node))
    parts = [ctx.unsqueeze(ctx.cast(x, dtype), [axis]) for x in ctx.inputs(node, 0)]
    return [parts[0] if len(parts) == 1 else ctx.op("Concat", *parts, axis=axis)]


@lowering("aten::unbind.int")
def _unbind(ctx: LoweringContext, node: Node) -> list:
    """One Gather per element. The element count is fixed by the graph itself (the
    ListUnpack that reads the list), never by a traced size."""
    x = ctx.input(node, 0)
    axis = _dim(ctx.const(node, 1), ctx.rank(node, 0))
    counts = {len(u.outputs) for u in node.outputs[0].users() if u.op == "prim::ListUnpack"}
    size = node.inputs[0].type.shape[axis]
    if len(counts) == 1:
        count = counts.pop()
    elif not node.graph.example_shapes and isinstance(size, int):
        count = size
    else:
        raise ctx.fail("aten::unbind over a dim whose size is not fixed",
                       "unpack the result into a fixed number of values in the model")
    return [ctx.seq([ctx.same_dtype(x, ctx.op("Gather", x, ctx.int64(k), axis=axis))
                     for k in range(count)])]


@lowering("aten::meshgrid.indexing", "aten::meshgrid")
def _meshgrid(ctx: LoweringContext, node: Node) -> list:
    tensors = ctx.inputs(node, 0)
    indexing = ctx.const(node, 1) if len(node.inputs) > 1 else "ij"
    n = len(tensors)
    order = list(range(n))
    if indexing == "xy" and n >= 2:
        order[0], order[1] = 1, 0
    # Output k varies along dim order[k]; all outputs share the shape of the sizes.
    sizes = [ctx.shape(tensors[k]) for k in (order.index(d) for d in range(n))]
    target = sizes[0] if n == 1 else ctx.op("Concat", *sizes, axis=0)
    out = []
    for k, t in enumerate(tensors):
        shape = [1] * n
        shape[order[k]] = -1
        column = _reshape(ctx, t, ctx.int64(shape))
        out.append(ctx.same_dtype(t, ctx.op("Expand", column, target)))
    return [ctx.seq(out)]


# --------------------------------------------------------------------------- creation

def _filled(ctx: LoweringContext, node: Node, shape: str, fill_index: int | None, fill: float) -> str:
    """A tensor of ``shape`` (1-D int64) filled with input ``fill_index`` (or ``fill``)."""
    dtype = ctx.out_dtype(node)
    if fill_index is not None and not ctx.is_const(node, fill_index):
        return ctx.op("Expand", ctx.input(node, fill_index, dtype), shape)
    value = ctx.const(node, fill_index) if fill_index is not None else fill
    proto = ctx.tensor_proto(torch.tensor([value], dtype=dtype))
    return ctx.op("ConstantOfShape", shape, value=proto)


def _fill_variant(ctx: LoweringContext, node: Node, shape: str, full_index: int) -> list:
    """The zeros / ones / full / empty flavours of one creation op: ``full`` reads its
    value from input ``full_index``, ``empty`` gives zeros."""
    if "full" in node.op:
        return [_filled(ctx, node, shape, full_index, 0)]
    return [_filled(ctx, node, shape, None, 1 if "ones" in node.op else 0)]


@lowering("aten::zeros_like", "aten::ones_like", "aten::full_like", "aten::empty_like")
def _like(ctx: LoweringContext, node: Node) -> list:
    return _fill_variant(ctx, node, ctx.shape(ctx.input(node, 0)), 1)


@lowering("aten::new_zeros", "aten::new_ones", "aten::new_full", "aten::new_empty")
def _new(ctx: LoweringContext, node: Node) -> list:
    return _fill_variant(ctx, node, ctx.input(node, 1, torch.int64), 2)


@lowering("aten::zeros", "aten::ones", "aten::full", "aten::empty.memory_format")
def _create(ctx: LoweringContext, node: Node) -> list:
    return _fill_variant(ctx, node, ctx.input(node, 0, torch.int64), 1)


@lowering("aten::arange", "aten::arange.start", "aten::arange.start_step")
def _arange(ctx: LoweringContext, node: Node) -> list:
    dtype = ctx.out_dtype(node)
    if node.op == "aten::arange":
        start, end, step = ctx.constant(0, dtype), ctx.input(node, 0, dtype), ctx.constant(1, dtype)
    elif node.op == "aten::arange.start":
        start, end, step = ctx.input(node, 0, dtype), ctx.input(node, 1, dtype), ctx.constant(1, dtype)
    else:
        start, end, step = (ctx.input(node, i, dtype) for i in (0, 1, 2))
    return [ctx.op("Range", start, end, step)]


# --------------------------------------------------------------------------- indexing

def _index_components(ctx: LoweringContext, node: Node) -> list[tuple[str, int] | None]:
    """The index list of index/index_put as (int64 index, rank) pairs, with every
    bool mask of rank m replaced by its m coordinate vectors (NonZero rows), as
    torch defines it."""
    names = ctx.inputs(node, 1)
    values = _list_values(node, 1)
    if len(values) != len(names):
        raise ctx.fail(f"the index list of {node.op} is not built by prim::ListConstruct",
                       "index with a literal list of tensors")
    out: list[tuple[str, int] | None] = []
    for name, value in zip(names, values):
        if name is None:
            out.append(None)
            continue
        rank = _value_rank(ctx, value)
        if _value_dtype(value) in (torch.bool, torch.uint8):
            coords = ctx.op("NonZero", ctx.cast(name, torch.bool))
            out.extend((ctx.typed(ctx.op("Gather", coords, ctx.int64(j), axis=0), torch.int64), 1)
                       for j in range(rank))
        else:
            out.append((ctx.cast(name, torch.int64), rank))
    return out


class _Advanced:
    """Advanced indexing laid out for GatherND/ScatterND: the indexed dims moved
    to the front (``perm``) and the index tensors broadcast and stacked on a last
    axis (``stacked``: shape B + [j])."""

    def __init__(self, ctx: LoweringContext, node: Node, x: str, rank: int):
        comps = _index_components(ctx, node)
        comps += [None] * (rank - len(comps))
        self.positions = [p for p, c in enumerate(comps) if c is not None]
        idx = [comps[p][0] for p in self.positions]
        self.b_rank = max(comps[p][1] for p in self.positions)
        self.rest = [d for d in range(rank) if d not in self.positions]
        self.perm = self.positions + self.rest
        self.adjacent = self.positions == list(range(self.positions[0], self.positions[-1] + 1))
        self.x = x if self.perm == list(range(rank)) else ctx.op("Transpose", x, perm=self.perm)
        if len(idx) > 1:
            total = idx[0]
            for i in idx[1:]:
                total = ctx.op("Add", total, i)  # only its broadcast shape is used
            shape = ctx.shape(total)
            idx = [ctx.op("Expand", i, shape) for i in idx]
        self.single = idx[0] if len(idx) == 1 else None
        self.stacked = ctx.op("Concat", *[ctx.unsqueeze(i, [-1]) for i in idx], axis=-1)

    def torch_perm(self) -> list[int] | None:
        """The permutation from GatherND's layout (B dims, then the other dims) to
        torch's, which puts B where the indexed dims were when they are adjacent."""
        p0 = self.positions[0]
        if not self.adjacent or p0 == 0:
            return None
        rb = self.b_rank
        return [rb + i for i in range(p0)] + list(range(rb)) + \
               [rb + i for i in range(p0, len(self.rest))]


@lowering("aten::index.Tensor", "aten::index.Tensor_hacked_twin")
def _index(ctx: LoweringContext, node: Node) -> list:
    x = ctx.input(node, 0)
    rank = ctx.rank(node, 0)
    names = ctx.inputs(node, 1)
    values = _list_values(node, 1)
    present = [k for k, n in enumerate(names) if n is not None]
    if len(present) == 1 and values:
        p = present[0]
        dtype = _value_dtype(values[p])
        if dtype not in (torch.bool, torch.uint8):
            # one integer index tensor: a plain Gather puts its dims at position p
            return [ctx.same_dtype(x, ctx.op("Gather", x, ctx.cast(names[p], torch.int64), axis=p))]
        if _value_rank(ctx, values[p]) == 1:
            coords = ctx.squeeze(ctx.op("NonZero", ctx.cast(names[p], torch.bool)), [0])
            return [ctx.same_dtype(x, ctx.op("Gather", x, coords, axis=p))]
    adv = _Advanced(ctx, node, x, rank)
    out = ctx.op("GatherND", adv.x, adv.stacked)
    perm = adv.torch_perm()
    if perm is not None:
        out = ctx.op("Transpose", out, perm=perm)
    return [ctx.same_dtype(x, out)]


@lowering("aten::index_put")
def _index_put(ctx: LoweringContext, node: Node) -> list:
    """ScatterND on the data with the indexed dims moved to the front; the values
    are broadcast to the shape of ``x[indices]`` in torch's layout first."""
    dtype = ctx.out_dtype(node)
    x = ctx.input(node, 0, dtype)
    rank = ctx.rank(node, 0)
    accumulate = bool(ctx.const(node, 3))
    adv = _Advanced(ctx, node, x, rank)
    b_shape = _first_dims(ctx, adv.stacked, 0, -1)
    rest_shape = _first_dims(ctx, adv.x, len(adv.positions))
    nd_shape = ctx.op("Concat", b_shape, rest_shape, axis=0)
    perm = adv.torch_perm()
    values = ctx.input(node, 2, dtype)
    if perm is None:
        updates = ctx.op("Expand", values, nd_shape)
    else:
        inverse = [perm.index(i) for i in range(len(perm))]
        torch_shape = ctx.op("Gather", nd_shape, ctx.int64(perm), axis=0)
        updates = ctx.op("Transpose", ctx.op("Expand", values, torch_shape), perm=inverse)
    attrs = {"reduction": "add"} if accumulate else {}
    out = ctx.op("ScatterND", adv.x, adv.stacked, updates, **attrs)
    if adv.perm != list(range(rank)):
        inverse = [adv.perm.index(i) for i in range(rank)]
        out = ctx.op("Transpose", out, perm=inverse)
    return [out]


@lowering("aten::gather")
def _gather(ctx: LoweringContext, node: Node) -> list:
    x = ctx.input(node, 0)
    axis = _dim(ctx.const(node, 1), ctx.rank(node, 0))
    out = ctx.op("GatherElements", x, ctx.input(node, 2, torch.int64), axis=axis)
    return [ctx.same_dtype(x, out)]


@lowering("aten::index_select")
def _index_select(ctx: LoweringContext, node: Node) -> list:
    x = ctx.input(node, 0)
    axis = _dim(ctx.const(node, 1), ctx.rank(node, 0))
    return [ctx.same_dtype(x, ctx.op("Gather", x, ctx.input(node, 2, torch.int64), axis=axis))]


@lowering("aten::scatter.src", "aten::scatter.value", "aten::scatter_add", "aten::scatter.reduce",
          "aten::scatter.value_reduce")
def _scatter(ctx: LoweringContext, node: Node) -> list:
    """ScatterElements. torch reads only the index-shaped corner of ``src``, so src
    is sliced to the index's shape (ONNX wants equal shapes)."""
    dtype = ctx.out_dtype(node)
    rank = ctx.rank(node, 0)
    x = ctx.input(node, 0, dtype)
    axis = _dim(ctx.const(node, 1), rank)
    index = ctx.input(node, 2, torch.int64)
    index_shape = ctx.shape(index)
    if node.op in ("aten::scatter.value", "aten::scatter.value_reduce"):
        updates = ctx.op("Expand", ctx.input(node, 3, dtype), index_shape)
    else:
        src = ctx.input(node, 3, dtype)
        updates = ctx.op("Slice", src, ctx.int64([0] * rank), index_shape, ctx.int64(list(range(rank))))
    attrs = {}
    if node.op == "aten::scatter_add":
        attrs["reduction"] = "add"
    elif node.op in ("aten::scatter.reduce", "aten::scatter.value_reduce"):
        reduce = ctx.const(node, 4)
        attrs["reduction"] = {"add": "add", "sum": "add", "multiply": "mul", "prod": "mul"}.get(reduce)
        if attrs["reduction"] is None:
            raise ctx.fail(f"scatter reduce={reduce!r} has no ONNX equivalent")
    return [ctx.op("ScatterElements", x, index, updates, axis=axis, **attrs)]


@lowering("aten::topk")
def _topk(ctx: LoweringContext, node: Node) -> list:
    """ONNX TopK puts equal values in index order, torch's CPU order for ties."""
    x = ctx.input(node, 0)
    axis = _dim(ctx.const(node, 2), ctx.rank(node, 0))
    k = _as_1d(ctx, node, 1, 0)
    values, indices = ctx.emit("TopK", [x, k], 2, axis=axis, largest=int(bool(ctx.const(node, 3))),
                               sorted=int(bool(ctx.const(node, 4))))
    return [values, indices]


def _full_topk(ctx: LoweringContext, node: Node, dim_i: int, desc_i: int) -> list[str]:
    """Sort as a full TopK; ties keep index order, which is what a stable sort gives."""
    x = ctx.input(node, 0)
    rank = ctx.rank(node, 0)
    if rank == 0:
        return [x, ctx.constant(0, torch.int64)]
    axis = _dim(ctx.const(node, dim_i), rank)
    k = _first_dims(ctx, x, axis, axis + 1)
    return ctx.emit("TopK", [x, k], 2, axis=axis, largest=int(bool(ctx.const(node, desc_i))), sorted=1)


@lowering("aten::sort", "aten::sort.stable")
def _sort(ctx: LoweringContext, node: Node) -> list:
    return _full_topk(ctx, node, *((2, 3) if node.op == "aten::sort.stable" else (1, 2)))


@lowering("aten::argsort", "aten::argsort.stable")
def _argsort(ctx: LoweringContext, node: Node) -> list:
    return _full_topk(ctx, node, *((2, 3) if node.op == "aten::argsort.stable" else (1, 2)))[1:]


@lowering("aten::nonzero")
def _nonzero(ctx: LoweringContext, node: Node) -> list:
    coords = ctx.op("NonZero", ctx.input(node, 0))
    return [ctx.op("Transpose", coords, perm=[1, 0])]


@lowering("aten::pad", "aten::constant_pad_nd")
def _pad(ctx: LoweringContext, node: Node) -> list:
    """torch lists (begin, end) pairs from the last dim backwards; ONNX wants all
    begins then all ends, first dim first. Entries may be run-time ints (padding
    to a size divisible by 32): the list is rearranged entry by entry."""
    x = ctx.input(node, 0)
    rank = ctx.rank(node, 0)
    if node.op == "aten::pad":
        mode = ctx.const(node, 2)
        value_index = 3
    else:
        mode, value_index = "constant", 2
    n = 2 * rank
    given = ctx.items(node, 1, n) if not ctx.is_const(node, 1) else \
        [ctx.const_entry(v) for v in ctx.const(node, 1)]
    if len(given) % 2 or len(given) > n:
        raise ctx.fail(f"pad list of length {len(given)} for a rank-{rank} tensor")
    zero = ctx.const_entry(0)
    begins, ends = [zero] * rank, [zero] * rank
    for k in range(len(given) // 2):
        begins[rank - 1 - k], ends[rank - 1 - k] = given[2 * k], given[2 * k + 1]
    pads = ctx.materialize(ctx.seq(begins + ends), torch.int64)
    onnx_mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge"}.get(mode)
    if onnx_mode is None:
        raise ctx.fail(f"pad mode {mode!r} has no ONNX equivalent here",
                       "use constant, reflect or replicate padding")
    inputs = [x, pads]
    if onnx_mode == "constant" and not ctx.is_none(node, value_index):
        inputs.append(ctx.input(node, value_index, ctx.dtype(node, 0)))
    return [ctx.same_dtype(x, ctx.op("Pad", *inputs, mode=onnx_mode))]


# --------------------------------------------------------------------------- neural network

def _pair(value, n: int) -> list[int]:
    value = list(value) if isinstance(value, (list, tuple)) else [value]
    return value * n if len(value) == 1 else value


@lowering("aten::_convolution", "aten::convolution", "aten::conv2d", "aten::conv1d")
def _conv(ctx: LoweringContext, node: Node) -> list:
    spatial = ctx.rank(node, 0) - 2
    stride, padding, dilation = (_pair(ctx.const(node, i), spatial) for i in (3, 4, 5))
    if node.op in ("aten::conv2d", "aten::conv1d"):
        transposed, output_padding, groups = False, [0] * spatial, ctx.const(node, 6)
    else:
        transposed = bool(ctx.const(node, 6))
        output_padding = _pair(ctx.const(node, 7), spatial)
        groups = ctx.const(node, 8)
    inputs = [ctx.input(node, 0), ctx.input(node, 1)]
    if not ctx.is_none(node, 2):
        inputs.append(ctx.input(node, 2))
    attrs = dict(strides=stride, pads=padding + padding, dilations=dilation, group=groups)
    if transposed:
        attrs["output_padding"] = output_padding
        return [ctx.op("ConvTranspose", *inputs, **attrs)]
    return [ctx.op("Conv", *inputs, **attrs)]


@lowering("aten::max_pool2d", "aten::max_pool1d")
def _max_pool(ctx: LoweringContext, node: Node) -> list:
    spatial = ctx.rank(node, 0) - 2
    kernel = _pair(ctx.const(node, 1), spatial)
    stride = _pair(ctx.const(node, 2), spatial) if ctx.const(node, 2) else kernel
    padding, dilation = _pair(ctx.const(node, 3), spatial), _pair(ctx.const(node, 4), spatial)
    return [ctx.op("MaxPool", ctx.input(node, 0), kernel_shape=kernel, strides=stride,
                   pads=padding + padding, dilations=dilation, ceil_mode=int(bool(ctx.const(node, 5))))]


@lowering("aten::avg_pool2d")
def _avg_pool(ctx: LoweringContext, node: Node) -> list:
    if len(node.inputs) > 6 and not ctx.is_none(node, 6):
        raise ctx.fail("avg_pool2d with divisor_override has no ONNX equivalent")
    kernel = _pair(ctx.const(node, 1), 2)
    stride = _pair(ctx.const(node, 2), 2) if ctx.const(node, 2) else kernel
    padding = _pair(ctx.const(node, 3), 2)
    return [ctx.op("AveragePool", ctx.input(node, 0), kernel_shape=kernel, strides=stride,
                   pads=padding + padding, ceil_mode=int(bool(ctx.const(node, 4))),
                   count_include_pad=int(bool(ctx.const(node, 5))))]


@lowering("aten::linear")
def _linear(ctx: LoweringContext, node: Node) -> list:
    x, w = ctx.input(node, 0), ctx.input(node, 1)
    has_bias = not ctx.is_none(node, 2)
    if ctx.rank(node, 0) == 2:
        inputs = [x, w] + ([ctx.input(node, 2)] if has_bias else [])
        return [ctx.op("Gemm", *inputs, transB=1)]
    out = ctx.op("MatMul", x, ctx.op("Transpose", w, perm=[1, 0]))
    return [ctx.op("Add", out, ctx.input(node, 2)) if has_bias else out]


@lowering("aten::matmul", "aten::mm", "aten::bmm")
def _matmul(ctx: LoweringContext, node: Node) -> list:
    dtype = ctx.out_dtype(node)
    return [ctx.op("MatMul", ctx.input(node, 0, dtype), ctx.input(node, 1, dtype))]


@lowering("aten::addmm")
def _addmm(ctx: LoweringContext, node: Node) -> list:
    beta, alpha = float(ctx.const(node, 3)), float(ctx.const(node, 4))
    return [ctx.op("Gemm", ctx.input(node, 1), ctx.input(node, 2), ctx.input(node, 0),
                   alpha=alpha, beta=beta)]


@lowering("aten::group_norm")
def _group_norm(ctx: LoweringContext, node: Node) -> list:
    """InstanceNormalization over (N, G, C/G * spatial), then the per-channel affine.
    (GroupNormalization-18 is avoided: opset 21 changed what its scale means.)"""
    x = ctx.input(node, 0)
    rank = ctx.rank(node, 0)
    dtype = ctx.dtype(node, 0)
    groups = ctx.const(node, 1)
    eps = float(ctx.const(node, 4))
    per_group = ctx.op("Div", ctx.reduce("ReduceProd", _first_dims(ctx, x, 1), [0], True),
                       ctx.int64([groups]))
    grouped_shape = ctx.op("Concat", _first_dims(ctx, x, 0, 1), ctx.int64([groups]), per_group, axis=0)
    grouped = _reshape(ctx, x, grouped_shape)
    normed = ctx.op("InstanceNormalization", grouped, ctx.constant([1.0] * groups, dtype),
                    ctx.constant([0.0] * groups, dtype), epsilon=eps)
    out = _reshape(ctx, normed, ctx.shape(x))
    channel_axes = list(range(1, rank - 1))  # (C,) -> (C, 1, ..., 1)
    if not ctx.is_none(node, 2):
        out = ctx.op("Mul", out, ctx.unsqueeze(ctx.input(node, 2, dtype), channel_axes))
    if not ctx.is_none(node, 3):
        out = ctx.op("Add", out, ctx.unsqueeze(ctx.input(node, 3, dtype), channel_axes))
    return [out]


@lowering("aten::batch_norm")
def _batch_norm(ctx: LoweringContext, node: Node) -> list:
    """Inference batch norm (running statistics) as BatchNormalization; an absent
    weight or bias is ones or zeros shaped like the running mean (affine=False)."""
    if ctx.const(node, 5) or ctx.is_none(node, 3) or ctx.is_none(node, 4):
        raise ctx.fail("batch_norm with batch statistics (training mode, or no running stats) "
                       "has no ONNX lowering", "export the model in eval mode (model.eval()) "
                       "with track_running_stats=True")
    x = ctx.input(node, 0)
    dtype = ctx.dtype(node, 0)
    mean, var = ctx.input(node, 3, dtype), ctx.input(node, 4, dtype)
    fill = {1: 1.0, 2: 0.0}
    scale, shift = (ctx.op("Expand", ctx.constant(fill[i], dtype), ctx.shape(mean)) if ctx.is_none(node, i)
                    else ctx.input(node, i, dtype) for i in (1, 2))
    eps = float(ctx.const(node, 7))
    if ctx.rank(node, 0) < 2:  # ONNX's op wants (N, C, ...); a 1-D input's one dim is its channels
        inv_std = ctx.op("Reciprocal", ctx.op("Sqrt", ctx.op("Add", var, ctx.constant(eps, dtype))))
        return [ctx.op("Add", ctx.op("Mul", ctx.op("Sub", x, mean), ctx.op("Mul", scale, inv_std)), shift)]
    return [ctx.op("BatchNormalization", x, scale, shift, mean, var, epsilon=eps)]


def _resize(ctx: LoweringContext, node: Node, size_index: int, scale_index: int, **attrs) -> str:
    """Resize from torch's output_size (sizes of the spatial dims, possibly run-time
    ints) or scale_factors (constants)."""
    x = ctx.input(node, 0)
    rank = ctx.rank(node, 0)
    if not ctx.is_none(node, size_index):
        sizes = ctx.op("Concat", _first_dims(ctx, x, 0, 2), ctx.input(node, size_index, torch.int64), axis=0)
        return ctx.op("Resize", x, "", "", sizes, **attrs)
    scales = [1.0, 1.0] + [float(s) for s in _pair(ctx.const(node, scale_index), rank - 2)]
    return ctx.op("Resize", x, "", ctx.constant(scales, torch.float32), **attrs)


@lowering("aten::upsample_nearest2d.vec", "aten::upsample_nearest1d.vec")
def _upsample_nearest(ctx: LoweringContext, node: Node) -> list:
    # torch: src = floor(dst * in / out) (or dst / scale) — ONNX's asymmetric + floor.
    return [_resize(ctx, node, 1, 2, mode="nearest", coordinate_transformation_mode="asymmetric",
                    nearest_mode="floor")]


@lowering("aten::upsample_bilinear2d.vec", "aten::upsample_linear1d.vec")
def _upsample_linear(ctx: LoweringContext, node: Node) -> list:
    align = bool(ctx.const(node, 2))
    return [_resize(ctx, node, 1, 3, mode="linear",
                    coordinate_transformation_mode="align_corners" if align else "half_pixel")]


@lowering("aten::grid_sampler", "aten::grid_sampler_2d")
def _grid_sample(ctx: LoweringContext, node: Node) -> list:
    interpolation, padding = ctx.const(node, 2), ctx.const(node, 3)
    modes = ("linear", "nearest", "cubic") if ctx.opset >= 20 else ("bilinear", "nearest", "bicubic")
    return [ctx.op("GridSample", ctx.input(node, 0), ctx.input(node, 1, ctx.dtype(node, 0)),
                   mode=modes[interpolation], padding_mode=("zeros", "border", "reflection")[padding],
                   align_corners=int(bool(ctx.const(node, 4))))]


# --------------------------------------------------------------------------- core ATen closure (issue 11)
# Ops the decompositions of composites produce, and composites ONNX has one op for.

@lowering("aten::Float.Scalar", "aten::Float.int", "aten::Int.float")
def _number_cast(ctx: LoweringContext, node: Node) -> list:
    # Float <-> int of a size: ONNX Cast truncates toward zero, as Python's int() does.
    return [ctx.input(node, 0, ctx.out_dtype(node))]


def _split_outputs(ctx: LoweringContext, node: Node, x: str, axis: int, sizes: str) -> list:
    """ONNX Split by a sizes tensor; the element count is the graph's own (the
    ListUnpack reading the list), never a traced size."""
    counts = {len(u.outputs) for u in node.outputs[0].users() if u.op == "prim::ListUnpack"}
    if len(counts) != 1:
        raise ctx.fail(f"{node.op} whose result is not unpacked into a fixed number of values",
                       "unpack the result into a fixed number of values in the model")
    parts = ctx.emit("Split", [x, sizes], num_outputs=counts.pop(), axis=axis)
    return [ctx.seq([ctx.same_dtype(x, p) for p in parts])]


@lowering("aten::split_with_sizes")
def _split_with_sizes(ctx: LoweringContext, node: Node) -> list:
    x = ctx.input(node, 0)
    return _split_outputs(ctx, node, x, _dim(ctx.const(node, 2), ctx.rank(node, 0)), ctx.input(node, 1, torch.int64))


@lowering("aten::upsample_bicubic2d.vec")
def _upsample_bicubic(ctx: LoweringContext, node: Node) -> list:
    # torch's bicubic is Keys' kernel with a = -0.75, edge taps clamped (ONNX's default).
    align = bool(ctx.const(node, 2))
    return [_resize(ctx, node, 1, 3, mode="cubic", cubic_coeff_a=-0.75,
                    coordinate_transformation_mode="align_corners" if align else "half_pixel")]


@lowering("aten::layer_norm")
def _layer_norm(ctx: LoweringContext, node: Node) -> list:
    x, rank = ctx.input(node, 0), ctx.rank(node, 0)
    axis = rank - len(ctx.const(node, 1))
    dtype = ctx.dtype(node, 0)
    width = _first_dims(ctx, x, axis)  # the normalized dims, for a missing weight or bias
    weight = ctx.input(node, 2, dtype) if not ctx.is_none(node, 2) else ctx.op("Expand", ctx.constant(1.0, dtype), width)
    inputs = [x, weight] + ([ctx.input(node, 3, dtype)] if not ctx.is_none(node, 3) else [])
    return [ctx.op("LayerNormalization", *inputs, axis=axis, epsilon=float(ctx.const(node, 4)))]


@lowering("aten::gelu")
def _gelu(ctx: LoweringContext, node: Node) -> list:
    x, dtype = ctx.input(node, 0), ctx.dtype(node, 0)
    c = lambda v: ctx.constant(v, dtype)  # noqa: E731
    if ctx.const(node, 1) == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        inner = ctx.op("Mul", c(0.7978845608028654), ctx.op("Add", x, ctx.op("Mul", c(0.044715), ctx.op("Mul", x, ctx.op("Mul", x, x)))))
        core = ctx.op("Tanh", inner)
    else:  # 0.5 x (1 + erf(x / sqrt 2))
        core = ctx.op("Erf", ctx.op("Mul", x, c(0.7071067811865476)))
    return [ctx.op("Mul", ctx.op("Mul", x, c(0.5)), ctx.op("Add", core, c(1.0)))]


@lowering("aten::pixel_shuffle")
def _pixel_shuffle(ctx: LoweringContext, node: Node) -> list:
    # torch splits the channels as (C, r, r): ONNX's DepthToSpace in "CRD" order.
    if ctx.rank(node, 0) != 4:
        ctx.fail("pixel_shuffle is lowered for 4-D (N, C*r*r, H, W) inputs only",
                 hint="reshape the input to 4-D around the call")
    return [ctx.op("DepthToSpace", ctx.input(node, 0), blocksize=int(ctx.const(node, 1)), mode="CRD")]


@lowering("aten::scaled_dot_product_attention")
def _scaled_dot_product_attention(ctx: LoweringContext, node: Node) -> list:
    """softmax(q k^T * scale + bias) v, as torch's math kernel computes it. The default
    scale 1/sqrt(E) comes from q's run-time last dim; ``is_causal`` keeps key j <= query
    i; a bool mask keeps True, a float mask is added. Grouped-query attention repeats
    each key/value head over its group of query heads (repeat_interleave on dim -3)."""
    rank = ctx.rank(node, 0)
    if rank < 2:
        raise ctx.fail("scaled_dot_product_attention of a rank < 2 query")
    dropout_p = ctx.const(node, 4)
    if dropout_p:
        raise ctx.fail(f"scaled_dot_product_attention with dropout_p={dropout_p} drops at random "
                       "on every call; ONNX inference has no equivalent",
                       "pass dropout_p=0.0 at inference (e.g. `self.p if self.training else 0.0`)")
    dtype = ctx.out_dtype(node)
    q, k, v = (ctx.input(node, i, dtype) for i in range(3))
    k_rank, v_rank = ctx.rank(node, 1), ctx.rank(node, 2)  # q, k, v broadcast over leading dims
    if len(node.inputs) > 7 and ctx.const(node, 7):  # enable_gqa
        if min(rank, k_rank, v_rank) < 3:
            raise ctx.fail("scaled_dot_product_attention with enable_gqa needs a head dim (-3)")
        group = ctx.op("Div", ctx.dim(q, rank - 3), ctx.dim(k, k_rank - 3))
        k, v = (_repeat_interleave_heads(ctx, k, k_rank, group), _repeat_interleave_heads(ctx, v, v_rank, group))
    scale = ctx.const(node, 6) if len(node.inputs) > 6 else None
    if scale is None:
        scale = ctx.op("Reciprocal", ctx.op("Sqrt", ctx.cast(ctx.dim(q, rank - 1), dtype)))
    else:
        scale = ctx.constant(float(scale), dtype)
    perm = list(range(k_rank - 2)) + [k_rank - 1, k_rank - 2]
    # scaled before the product, as torch's kernels do (keeps the float error of large scores down)
    scores = ctx.op("MatMul", ctx.op("Mul", q, scale), ctx.op("Transpose", k, perm=perm))
    minus_inf = lambda: ctx.constant(float("-inf"), dtype)  # noqa: E731 (only where masked)
    if ctx.const(node, 5):  # is_causal: query i sees keys 0..i
        one, zero = ctx.int64(1), ctx.int64(0)
        rows = ctx.unsqueeze(ctx.op("Range", zero, ctx.dim(q, rank - 2), one), [1])
        cols = ctx.unsqueeze(ctx.op("Range", zero, ctx.dim(k, k_rank - 2), one), [0])
        scores = ctx.op("Where", ctx.op("LessOrEqual", cols, rows), scores, minus_inf())
    if not ctx.is_none(node, 3):
        if ctx.dtype(node, 3) == torch.bool:
            scores = ctx.op("Where", ctx.input(node, 3), scores, minus_inf())
        else:
            scores = ctx.op("Add", scores, ctx.input(node, 3, dtype))
    weights = ctx.op("Softmax", scores, axis=-1)
    return [ctx.op("MatMul", weights, v)]


def _repeat_interleave_heads(ctx: LoweringContext, x: str, rank: int, group: str) -> str:
    """(..., H, S, E) -> (..., H * group, S, E), each head ``group`` times in a row."""
    spread = ctx.unsqueeze(x, [rank - 2])  # (..., H, 1, S, E)
    sizes = ctx.op("Concat", _first_dims(ctx, x, 0, rank - 2), ctx.unsqueeze(group, [0]),
                   _first_dims(ctx, x, rank - 2), axis=0)
    expanded = ctx.op("Expand", spread, sizes)
    heads = ctx.op("Mul", ctx.dim(x, rank - 3), group)
    merged = ctx.op("Concat", _first_dims(ctx, x, 0, rank - 3), ctx.unsqueeze(heads, [0]),
                    _first_dims(ctx, x, rank - 2), axis=0)
    return _reshape(ctx, expanded, merged)
