"""``canonicalize``: remove ops that provably return their input unchanged.

Rules (each a pattern rewrite, see ``dexport.passes.rewrite``):

* views to the same shape: ``aten::view`` / ``aten::reshape`` / ``aten::expand``
  whose size resolves to the input's shape (a ``-1`` may stand for a symbolic
  dim), or whose input and output types are the same static shape;
* identities: ``aten::detach``, ``aten::alias``, ``aten::lift_fresh``,
  ``aten::clone``, ``aten::contiguous``; ``aten::to`` / ``aten::type_as`` to the
  input's own dtype; ``aten::dropout`` and friends in eval mode or with p=0;
* arithmetic: ``x * 1``, ``x + 0``, ``x - 0`` where the constant's shape
  broadcasts into ``x``'s and type promotion keeps ``x``'s dtype (``x + 0``
  turns -0.0 into 0.0, which compares equal; every compiler takes that).

Shape-based rules trust int dims only where they are facts: in a traced graph
(``graph.example_shapes``) they were observed on one input, so a reshape that was a
no-op there may not be on another image, and such rules refuse.

Rules that drop a copy (clone, contiguous, to, dropout, arithmetic) are not
used when the graph mutates tensors in place: there the copy can matter.
Matched constants left unused are for ``dce``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Number
from typing import Any

import torch

from dexport.ir.graph import CONSTANT, Graph, Value
from dexport.ir.types import TensorType
from dexport.passes.base import Pass, register_pass
from dexport.passes.effects import graph_mutates
from dexport.passes.rewrite import Const, Match, Op, Rewriter, Rule, Var


def _tensor_type(v: Value) -> TensorType | None:
    return v.type if isinstance(v.type, TensorType) else None


def _constant(v: Value) -> tuple[bool, Any]:
    node = v.node
    if node is not None and node.op == CONSTANT:
        return True, node.attrs.get("value")
    return False, None


class IdentityRule(Rule):
    copies = False  # True: the op makes a new tensor, so removing it drops a copy

    def rewrite(self, match: Match, graph: Graph) -> Value:
        return match["x"]


# --------------------------------------------------------------------------- views

class SameShapeView(IdentityRule):
    pattern = Op(("aten::view", "aten::reshape", "aten::_unsafe_view"), Var("x"), Var("size"))

    def check(self, match):
        x, out = _tensor_type(match["x"]), _tensor_type(match.root.output)
        if x is None or x.shape is None:
            return "input rank unknown"
        if _example_shapes(match):
            return "the input's dims are examples from a trace, not facts (run fix-batch-dim first)"
        known, size = _constant(match["size"])
        if known and isinstance(size, (list, tuple)):
            return self.check_size(x.shape, list(size))
        if x.is_static and out is not None and out.shape == x.shape:
            return None
        return "size is not a constant and the types do not prove the same static shape"

    def check_size(self, shape, size) -> str | None:
        if len(size) != len(shape):
            return f"rank changes from {len(shape)} to {len(size)}"
        if size.count(-1) > 1:
            return "more than one -1"
        for dim, want in zip(shape, size):
            if want != -1 and want != dim:
                return f"size {size} differs from input shape {list(shape)}"
        return None


class SameShapeExpand(SameShapeView):
    pattern = Op("aten::expand", Var("x"), Var("size"), Var())

    def check_size(self, shape, size):
        if len(size) != len(shape):
            return f"rank changes from {len(shape)} to {len(size)}"
        for dim, want in zip(shape, size):  # expand: every -1 keeps its dim
            if want != -1 and want != dim:
                return f"size {size} differs from input shape {list(shape)}"
        return None


# --------------------------------------------------------------------------- identities

class AliasIdentity(IdentityRule):
    pattern = Op(("aten::detach", "aten::alias", "aten::lift_fresh"), Var("x"))


class CopyIdentity(IdentityRule):
    pattern = Op(("aten::clone", "aten::contiguous"), Var("x"), Var())
    copies = True


def _same_dtype(x: Value, dtype: Any) -> str | None:
    t = _tensor_type(x)
    if t is None or t.dtype is None:
        return "input dtype unknown"
    return None if dtype == t.dtype else f"casts {t.dtype} to {dtype}"


class ToSameDtype(IdentityRule):
    # aten::to.dtype(self, dtype, non_blocking, copy, memory_format)
    pattern = Op("aten::to.dtype", Var("x"), Const("dtype"), Var(), Var(), Var())
    copies = True

    def check(self, match):
        return _same_dtype(match["x"], match["dtype"])


class ToSameDtypeLayout(IdentityRule):
    # aten::to.dtype_layout(self, dtype, layout, device, pin_memory, non_blocking, copy, memory_format)
    pattern = Op("aten::to.dtype_layout", Var("x"), Const("dtype"), Const("layout"), Const("device"),
                 Const("pin_memory"), Var(), Var(), Var())
    copies = True

    def check(self, match):
        if match["layout"] not in (None, torch.strided):
            return f"changes the layout to {match['layout']}"
        if match["device"] is not None:
            return "moves to a device (tensor types do not record devices)"
        if match["pin_memory"]:
            return "pins memory"
        return None if match["dtype"] is None else _same_dtype(match["x"], match["dtype"])


class TypeAsSame(IdentityRule):
    pattern = Op("aten::type_as", Var("x"), Var("other"))
    copies = True

    def check(self, match):
        other = _tensor_type(match["other"])
        if other is None or other.dtype is None:
            return "dtype of `other` unknown"
        return _same_dtype(match["x"], other.dtype)


class EvalDropout(IdentityRule):
    pattern = Op(("aten::dropout", "aten::feature_dropout", "aten::alpha_dropout",
                  "aten::feature_alpha_dropout"), Var("x"), Const("p"), Const("train"))
    copies = True

    def check(self, match):
        if match["train"] is False or match["p"] == 0:
            return None
        return "training mode with p > 0"


# --------------------------------------------------------------------------- arithmetic

def _example_shapes(match: Match) -> bool:
    graph = match.root.graph
    return graph is not None and graph.example_shapes


def _neutral_ok(x: Value, constant: Any, neutral: int, example_shapes: bool) -> str | None:
    """Whether ``x (op) constant`` is ``x`` for a constant that is all ``neutral``:
    the constant must broadcast into x's shape and keep x's dtype. With example
    shapes only x's rank is a fact, so only constants whose dims are all 1 qualify."""
    t = _tensor_type(x)
    if t is None or t.dtype is None:
        return "input dtype unknown"
    if isinstance(constant, torch.Tensor):
        if not bool((constant == neutral).all()):
            return f"constant is not all {neutral}"
        if example_shapes and any(c != 1 for c in constant.shape):
            return f"constant shape {list(constant.shape)} may broadcast the input (its dims are examples)"
        if t.shape is None:
            if constant.dim() != 0:
                return "input rank unknown"
        else:
            if constant.dim() > len(t.shape):
                return "the constant has a higher rank than the input"
            for dim, c in zip(reversed(t.shape), reversed(constant.shape)):
                if c != 1 and c != dim:
                    return f"constant shape {list(constant.shape)} broadcasts the input"
    elif isinstance(constant, Number) and not isinstance(constant, bool):
        if constant != neutral:
            return f"constant is {constant}, not {neutral}"
    else:
        return "not a number or tensor constant"
    ranks = [0, 1] if t.shape is None else [len(t.shape)]
    for rank in ranks:
        dummy = torch.empty((0,) * min(rank, 1), dtype=t.dtype)
        if torch.result_type(dummy, constant) != t.dtype:
            return f"type promotion changes {t.dtype} to {torch.result_type(dummy, constant)}"
    return None


class MulByOne(IdentityRule):
    pattern = Op(("aten::mul.Tensor", "aten::mul.Scalar"), Var("x"), Const("c"))
    copies = True

    def check(self, match):
        return _neutral_ok(match["x"], match["c"], 1, _example_shapes(match))


class OneTimes(MulByOne):
    pattern = Op("aten::mul.Tensor", Const("c"), Var("x"))


class AddZero(IdentityRule):
    """x + alpha*0 and x - alpha*0, for a finite alpha."""
    pattern = Op(("aten::add.Tensor", "aten::add.Scalar", "aten::sub.Tensor", "aten::sub.Scalar"),
                 Var("x"), Const("c"), Const("alpha"))
    copies = True

    def check(self, match):
        alpha = match["alpha"]
        if not isinstance(alpha, Number) or isinstance(alpha, bool) or not math.isfinite(alpha):
            return f"alpha {alpha!r} is not a finite number"
        return _neutral_ok(match["x"], match["c"], 0, _example_shapes(match))


class ZeroPlus(IdentityRule):
    pattern = Op("aten::add.Tensor", Const("c"), Var("x"), Const("alpha", lambda a: a == 1 and a is not True))
    copies = True

    def check(self, match):
        return _neutral_ok(match["x"], match["c"], 0, _example_shapes(match))


# --------------------------------------------------------------------------- TorchScript leftovers

from dexport.passes.scripted import SCRIPTED_RULES, forward_invariant_carried  # noqa: E402  (rules of scripted code's helpers)

RULES: tuple[IdentityRule, ...] = (
    SameShapeView(), SameShapeExpand(), AliasIdentity(), CopyIdentity(), ToSameDtype(),
    ToSameDtypeLayout(), TypeAsSame(), EvalDropout(), MulByOne(), OneTimes(), AddZero(), ZeroPlus(),
    *SCRIPTED_RULES,
)


@register_pass
class Canonicalize(Pass):
    """Applies ``RULES`` to a fixpoint. With ``debug=true`` the rewriter keeps the
    reason every candidate was rejected: ``pass_.rewriter.report()``."""
    name = "canonicalize"

    @dataclass(frozen=True)
    class Options:
        debug: bool = False

    def run(self, graph: Graph) -> bool:
        mutates = graph_mutates(graph)
        rules = [r for r in RULES if not (mutates and r.copies)]
        self.rewriter = Rewriter(rules, debug=self.options.debug)
        changed = False
        # Rules that fold an If can make a carried value invariant, and the other way round.
        while True:
            forwarded = forward_invariant_carried(graph)
            rewrites = self.rewriter.apply(graph)
            changed |= bool(forwarded or rewrites)
            if not rewrites:
                return changed
