"""Canonicalize rules for what TorchScript leaves in a traced graph when scripted code
runs inside the trace: dtype queries, list indexing and lengths, ``is None`` tests and
int round trips through 0-d tensors. Each folds only what the IR proves (a tensor
type's dtype, a list built element by element, an input that can never be None);
what stays is lowered by the ONNX backend (``dexport.backends.onnx_control_flow``).
``fold-constants`` finishes chains whose inputs all became constants.
"""
from __future__ import annotations

from typing import Any

from dexport.ir.graph import CONSTANT, Graph, Node, Value
from dexport.ir.ops import type_of_constant
from dexport.ir.types import ANY, NONE, OptionalType, TensorType
from dexport.passes.rewrite import Const, Match, Op, Rule, Var


def _constant_value(graph: Graph, root: Node, value: Any, type_=None) -> Value:
    return graph.create_node(CONSTANT, [], [type_ or type_of_constant(value)], {"value": value},
                             root.meta.copy(), before=root).output


def _built_list(value: Value) -> Node | None:
    """The ``prim::ListConstruct`` that built ``value`` when nothing else can change it
    (a list also read by ``aten::append.t`` and friends is mutable)."""
    node = value.node
    if node is None or node.op != "prim::ListConstruct":
        return None
    if any(user.op not in _LIST_READERS for user in value.users()):
        return None
    return node


# Ops that read a list without changing it (any other user may mutate it).
_LIST_READERS = frozenset({
    "aten::__getitem__.t", "aten::len.t", "aten::slice.t", "aten::list.t", "aten::stack", "aten::cat",
    "aten::zeros", "aten::ones", "aten::full", "aten::view", "aten::reshape", "aten::expand",
    "aten::mean.dim", "aten::sum.dim_IntList", "aten::permute", "prim::ListUnpack",
})


class ScriptedRule(Rule):
    copies = False


class DtypeOfTyped(ScriptedRule):
    """``prim::dtype(x)`` where x's type records its dtype."""
    pattern = Op("prim::dtype", Var("x"))

    def check(self, match: Match) -> str | None:
        t = match["x"].type
        return None if isinstance(t, TensorType) and t.dtype is not None else "input dtype unknown"

    def rewrite(self, match: Match, graph: Graph) -> Value:
        dtype = match["x"].type.dtype
        # Scripted code's tensors are untyped; a factory or cast reading this dtype
        # makes tensors of it, which the lowerings need to know.
        for user, index in match.root.output.uses:
            out = user.outputs[0] if len(user.outputs) == 1 else None
            if (user.op in _DTYPE_ARGUMENT and _DTYPE_ARGUMENT[user.op] == index and out is not None
                    and isinstance(out.type, TensorType) and out.type.dtype is None):
                out.type = TensorType(dtype, out.type.shape)
        return _constant_value(graph, match.root, dtype)


# Ops whose output dtype is their argument at this index.
_DTYPE_ARGUMENT = {"aten::zeros": 1, "aten::ones": 1, "aten::empty.memory_format": 1, "aten::full": 2,
                   "aten::to.dtype": 1, "aten::zeros_like": 1, "aten::ones_like": 1}


class GetItemOfBuiltList(ScriptedRule):
    """``[a, b, c][k]`` for a constant k: the element."""
    pattern = Op("aten::__getitem__.t", Var("seq"), Const("k", lambda k: isinstance(k, int)))

    def check(self, match: Match) -> str | None:
        built = _built_list(match["seq"])
        if built is None:
            return "the list is not built element by element, or is mutated"
        n = len(built.inputs)
        return None if -n <= match["k"] < n else f"index {match['k']} out of range for {n} elements"

    def rewrite(self, match: Match, graph: Graph) -> Value:
        return _built_list(match["seq"]).inputs[match["k"]]


class LenOfBuiltList(ScriptedRule):
    pattern = Op("aten::len.t", Var("seq"))

    def check(self, match: Match) -> str | None:
        return None if _built_list(match["seq"]) is not None else "the list's length is not known"

    def rewrite(self, match: Match, graph: Graph) -> Value:
        return _constant_value(graph, match.root, len(_built_list(match["seq"]).inputs))


class IsNone(ScriptedRule):
    """``x is None`` / ``x is not None`` where the types decide it."""
    pattern = Op(("aten::__is__", "aten::__isnot__"), Var("x"), Var("y"))

    def check(self, match: Match) -> str | None:
        return None if self._answer(match) is not None else "the types do not decide it"

    @staticmethod
    def _answer(match: Match) -> bool | None:
        x, y = match["x"].type, match["y"].type
        if y != NONE:
            return None
        if x == NONE:
            return True
        return None if isinstance(x, OptionalType) or x == ANY else False

    def rewrite(self, match: Match, graph: Graph) -> Value:
        answer = self._answer(match)
        return _constant_value(graph, match.root, answer if match.root.op == "aten::__is__" else not answer)


class IntOfNumToTensor(ScriptedRule):
    """``int(tensor(n))``: n itself (TorchScript wraps ints in 0-d tensors across calls)."""
    pattern = Op(("aten::Int.Tensor", "aten::IntImplicit", "aten::ScalarImplicit", "aten::Float.Tensor"),
                 Op("prim::NumToTensor", Var("n")))

    def check(self, match: Match) -> str | None:
        kind = {"aten::Int.Tensor": "int", "aten::IntImplicit": "int", "aten::Float.Tensor": "float"}
        want = kind.get(match.root.op)
        got = getattr(match["n"].type, "kind", None)
        return None if want is None or got == want else f"converts {got} to {want}"

    def rewrite(self, match: Match, graph: Graph) -> Value:
        return match["n"]


class UncheckedCastOfKnown(ScriptedRule):
    """``prim::unchecked_cast(x)`` (Optional refinement) where x is not Optional."""
    pattern = Op("prim::unchecked_cast", Var("x"))

    def check(self, match: Match) -> str | None:
        return "the input is Optional" if isinstance(match["x"].type, OptionalType) else None

    def rewrite(self, match: Match, graph: Graph) -> Value:
        return match["x"]


SCRIPTED_RULES: tuple[Rule, ...] = (DtypeOfTyped(), GetItemOfBuiltList(), LenOfBuiltList(), IsNone(),
                                    IntOfNumToTensor(), UncheckedCastOfKnown())
