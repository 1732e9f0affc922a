"""Canonicalize rules for what TorchScript leaves in a traced graph when scripted code
runs inside the trace: dtype, rank and device queries, list indexing and lengths,
``is None`` tests and int round trips through 0-d tensors. Each folds only what the IR proves (a tensor
type's dtype, a list built element by element, an input that can never be None);
what stays is lowered by the ONNX backend (``dexport.backends.onnx_control_flow``).
``fold-constants`` finishes chains whose inputs all became constants.

Control flow the constants decide goes too (``CONTROL_FLOW_RULES``, also run by
``fold-constants`` once it has folded conditions): a ``prim::If`` with a constant
condition becomes a copy of its taken branch, and a ``prim::Loop`` with a constant
trip count of at most ``MAX_UNROLL_TRIPS`` whose condition stays a constant true is
unrolled into that many copies of its body (so no ONNX ``Loop`` is emitted for
``for i in range(3)``). A loop that may stop early (``break``, an early ``return``)
is kept.
"""
from __future__ import annotations

from typing import Any

import torch

from dexport.ir.graph import CONSTANT, Block, Graph, Node, Value, copy_block_before
from dexport.ir.ops import get_op, type_of_constant
from dexport.ir.types import ANY, INT, NONE, OptionalType, TensorType, TupleType
from dexport.passes.rewrite import Const, Match, Op, Rewriter, Rule, Var

MAX_UNROLL_TRIPS = 8      # a constant loop of more trips stays an ONNX Loop
MAX_UNROLLED_NODES = 512  # nor is a loop unrolled into more nodes than this


def _constant_value(graph: Graph, root: Node, value: Any, type_=None) -> Value:
    return graph.create_node(CONSTANT, [], [type_ or type_of_constant(value)], {"value": value},
                             root.meta.copy(), before=root).output


def _built_list(value: Value) -> Node | None:
    """The ``prim::ListConstruct`` that built ``value`` when nothing else can change it
    (a list also read by ``aten::append.t`` and friends is mutable)."""
    node = value.node
    if node is None or node.op != "prim::ListConstruct":
        return None
    if any(not reads_list(user, value) and not _only_extends_with(user, value) for user in value.users()):
        return None
    return node


def reads_list(user: Node, value: Value) -> bool:
    """Whether ``user`` only reads the list ``value``: a list op that does not change
    it, or a torch op whose schema does not write the argument (ATen takes ``int[]``,
    ``float[]`` and ``Tensor[]`` arguments by value)."""
    if user.op in _LIST_READERS:
        return True
    try:
        schema = get_op(user.op).schema
    except Exception:
        return False
    if schema is None:
        return False
    args = schema.arguments
    return all(i < len(args) and (args[i].alias_info is None or not args[i].alias_info.is_write)
               and not str(args[i].type).startswith("t[]")
               for i, v in enumerate(user.inputs) if v is value)


def _only_extends_with(user: Node, value: Value) -> bool:
    """``other.extend(value)``: reads ``value`` without changing it."""
    return user.op == "aten::extend.t" and user.inputs[0] is not value and user.inputs[1] is value


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
    """``[a, b, c][k]`` for a constant k: the element (also of a constant list, such as
    the literal ``["boxes", "scores"]`` a scripted loop runs over: torch's generic list
    kernels cannot be called from Python, so fold-constants cannot)."""
    pattern = Op("aten::__getitem__.t", Var("seq"), Const("k", lambda k: isinstance(k, int)))

    def check(self, match: Match) -> str | None:
        items = _list_items(match["seq"])
        if items is None:
            return "the list is not built element by element, or is mutated"
        n = len(items)
        return None if -n <= match["k"] < n else f"index {match['k']} out of range for {n} elements"

    def rewrite(self, match: Match, graph: Graph) -> Value:
        built = _built_list(match["seq"])
        if built is not None:
            return built.inputs[match["k"]]
        value = _constant_of(match["seq"])[1][match["k"]]
        return _constant_value(graph, match.root, value)


def _list_items(value: Value) -> list | None:
    """The elements (values, or constants of a constant list) of a list nothing changes."""
    built = _built_list(value)
    if built is not None:
        return list(built.inputs)
    known, constant = _constant_of(value)
    if known and isinstance(constant, list) and all(user.op in _LIST_READERS for user in value.users()):
        return constant
    return None


def _constant_of(value: Value) -> tuple[bool, Any]:
    node = value.node
    return (True, node.attrs.get("value")) if node is not None and node.op == CONSTANT else (False, None)


def _built_dict(value: Value, reader: Node) -> dict | None:
    """key -> value of the dict ``value`` as ``reader`` sees it: built by a
    ``prim::DictConstruct`` with constant keys, plus the writes of constant keys in
    the top block above the reader. None when anything else may have changed it
    above the reader (a write inside a branch, an unknown key) or it escapes into an
    op that is neither a reader nor a writer."""
    node = value.node
    if node is None or node.op != "prim::DictConstruct":
        return None
    keys = [_constant_of(k) for k in node.inputs[0::2]]
    if not all(known for known, _ in keys):
        return None
    entries = dict(zip((k for _, k in keys), node.inputs[1::2]))
    users = value.users()
    writers = [u for u in users if u.op in _DICT_WRITERS]
    if any(u.op not in _DICT_READERS and u.op not in _DICT_WRITERS for u in users):
        return None
    if not writers:
        return entries
    top = node.block
    if reader.block is not top:
        return None
    position = {n: i for i, n in enumerate(top.nodes)}
    above = []
    for w in writers:
        ancestor = w
        while ancestor.block is not top and isinstance(ancestor.block.owner, Node):
            ancestor = ancestor.block.owner
        if ancestor.block is not top:
            return None
        if position[ancestor] < position[reader]:
            known, key = _constant_of(w.inputs[1])
            if w is not ancestor or not known or w.inputs[0] is not value:
                return None
            above.append((position[w], key, w.inputs[2]))
    for _, key, item in sorted(above, key=lambda t: t[0]):
        entries[key] = item
    return entries


_DICT_READERS = frozenset({"aten::__getitem__.Dict_str", "aten::__getitem__.Dict_int",
                           "aten::items.str", "aten::items.int", "aten::keys.str", "aten::keys.int",
                           "aten::values.str", "aten::values.int",
                           "aten::len.Dict_str", "aten::len.Dict_int",
                           "aten::__contains__.str", "aten::__contains__.int"})


class GetItemOfBuiltDict(ScriptedRule):
    """``{"a": x, "b": y}["a"]``: the value (scripted code's dict outputs)."""
    pattern = Op(("aten::__getitem__.Dict_str", "aten::__getitem__.Dict_int"), Var("d"), Const("k"))

    def check(self, match: Match) -> str | None:
        built = _built_dict(match["d"], match.root)
        if built is None:
            return "the dict is not built with constant keys, or is written in a branch"
        return None if match["k"] in built else f"no key {match['k']!r} in the dict"

    def rewrite(self, match: Match, graph: Graph) -> Value:
        return _built_dict(match["d"], match.root)[match["k"]]


class ViewOfBuiltDict(ScriptedRule):
    """``d.items()`` / ``d.keys()`` / ``d.values()`` of a built dict: a list built of
    them in insertion order (so that ``for k, v in d.items()`` unrolls)."""
    pattern = Op(("aten::items.str", "aten::items.int", "aten::keys.str", "aten::keys.int",
                  "aten::values.str", "aten::values.int"), Var("d"))

    def check(self, match: Match) -> str | None:
        return None if _built_dict(match["d"], match.root) is not None else "the dict is not built with constant keys"

    def rewrite(self, match: Match, graph: Graph) -> Value:
        root = match.root
        entries = _built_dict(match["d"], root)
        keys = [_constant_value(graph, root, k) for k in entries]
        values = list(entries.values())
        kind = root.op.split("::")[1].split(".")[0]
        if kind == "keys":
            elements = list(keys)
        elif kind == "values":
            elements = list(values)
        else:
            elements = [graph.create_node("prim::TupleConstruct", [k, v], [TupleType((k.type, v.type))],
                                          meta=root.meta.copy(), before=root).output for k, v in zip(keys, values)]
        return graph.create_node("prim::ListConstruct", elements, [root.output.type], meta=root.meta.copy(),
                                 before=root).output


class ContainsOfBuiltDict(ScriptedRule):
    """``"a" in {"a": x}``: a constant."""
    pattern = Op(("aten::__contains__.str", "aten::__contains__.int"), Var("d"), Const("k"))

    def check(self, match: Match) -> str | None:
        return None if _built_dict(match["d"], match.root) is not None else "the dict's keys are not known"

    def rewrite(self, match: Match, graph: Graph) -> Value:
        return _constant_value(graph, match.root, match["k"] in _built_dict(match["d"], match.root))


class TupleIndexOfBuiltTuple(ScriptedRule):
    """``(a, b)[1]`` for a constant index: the item."""
    pattern = Op("prim::TupleIndex", Var("tup"), Const("i", lambda i: isinstance(i, int)))

    def check(self, match: Match) -> str | None:
        built = match["tup"].node
        if built is None or built.op != "prim::TupleConstruct":
            return "the tuple is not built here"
        n = len(built.inputs)
        return None if -n <= match["i"] < n else f"index {match['i']} out of range for {n} items"

    def rewrite(self, match: Match, graph: Graph) -> Value:
        return match["tup"].node.inputs[match["i"]]


class LenOfBuiltList(ScriptedRule):
    pattern = Op("aten::len.t", Var("seq"))

    def check(self, match: Match) -> str | None:
        return None if _list_items(match["seq"]) is not None else "the list's length is not known"

    def rewrite(self, match: Match, graph: Graph) -> Value:
        return _constant_value(graph, match.root, len(_list_items(match["seq"])))


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


class IntOfTensorInt(ScriptedRule):
    """``int(torch.tensor(n))``: n itself (an int tensor made from an int, read back)."""
    pattern = Op(("aten::Int.Tensor", "aten::IntImplicit"),
                 Op("aten::tensor.int", Var("n"), Var("dtype"), Var(), Var()))

    def check(self, match: Match) -> str | None:
        dtype = match["dtype"].node
        ok = dtype is not None and dtype.op == CONSTANT and dtype.attrs.get("value") in (None, torch.int64)
        return None if ok else "the tensor is not int64"

    def rewrite(self, match: Match, graph: Graph) -> Value:
        return match["n"]


class NarrowAtTensorStart(ScriptedRule):
    """``x.narrow(dim, start, length)`` with a 0-d tensor start (scripted code's
    ``torch.tensor(k)``): the int overload, reading ``int(start)``."""
    pattern = Op("aten::narrow.Tensor", Var("x"), Var("dim"), Var("start"), Var("length"))

    def rewrite(self, match: Match, graph: Graph) -> Value:
        root = match.root
        start = graph.create_node("aten::Int.Tensor", [match["start"]], [INT], meta=root.meta.copy(),
                                  before=root).output
        return graph.create_node("aten::narrow", [match["x"], match["dim"], start, match["length"]],
                                 [root.output.type], meta=root.meta.copy(), before=root).output


class DimOfTyped(ScriptedRule):
    """``x.dim()`` where x's type records its rank (a fact even in a trace)."""
    pattern = Op("aten::dim", Var("x"))

    def check(self, match: Match) -> str | None:
        t = match["x"].type
        return None if isinstance(t, TensorType) and t.rank is not None else "input rank unknown"

    def rewrite(self, match: Match, graph: Graph) -> Value:
        return _constant_value(graph, match.root, match["x"].type.rank)


class DeviceOfTensor(ScriptedRule):
    """``x.device`` in scripted code: the device the model was traced on, as the trace
    itself records ``device=`` arguments (ONNX has no devices)."""
    pattern = Op("prim::device", Var("x"))

    def rewrite(self, match: Match, graph: Graph) -> Value:
        device = next((t.device for t in graph.params.values()), torch.device("cpu"))
        return _constant_value(graph, match.root, device)


# --------------------------------------------------------------------------- control flow

class _Leading(Op):
    """An ``Op`` pattern that matches its inputs against the node's first inputs only
    (a loop's carried values come after its trip count and condition)."""

    def match_node(self, node: Node, match: Match) -> str | None:
        if node.op not in self.ops or not node.blocks:
            return f"expected {' or '.join(self.ops)} with blocks, got {node.op}"
        if len(node.inputs) < len(self.inputs):
            return f"{node.op} has {len(node.inputs)} inputs, fewer than {len(self.inputs)}"
        for i, (pattern, value) in enumerate(zip(self.inputs, node.inputs)):
            reason = pattern.match_value(value, match)
            if reason is not None:
                return f"{node.op} input {i}: {reason}"
        return None


class InlineConstantIf(ScriptedRule):
    """``prim::If`` on a constant condition: its taken branch, inlined."""
    pattern = _Leading("prim::If", Const("cond", lambda c: isinstance(c, bool)))

    def check(self, match: Match) -> str | None:
        return None if len(match.root.blocks) == 2 else "not a two-branch If"

    def rewrite(self, match: Match, graph: Graph) -> list[Value]:
        return copy_block_before(match.root.blocks[0 if match["cond"] else 1], match.root, {})


class UnrollConstantLoop(ScriptedRule):
    """``prim::Loop`` with a small constant trip count that never stops early: its
    body copied once per trip, each copy reading the trip number as a constant and the
    previous copy's carried values."""
    pattern = _Leading("prim::Loop", Const("trips", lambda n: isinstance(n, int) and not isinstance(n, bool)),
                       Const("cond", lambda c: c is True))

    def check(self, match: Match) -> str | None:
        trips, body = match["trips"], match.root.blocks[0]
        if not 0 <= trips <= MAX_UNROLL_TRIPS:
            return f"{trips} trips (unrolled up to {MAX_UNROLL_TRIPS})"
        if not _is_constant(body.returns[0], True):
            return "the loop may stop early (its condition is computed in the body)"
        size = _size(body)
        if trips * size > MAX_UNROLLED_NODES:
            return f"{trips} trips of {size} nodes is more than {MAX_UNROLLED_NODES} nodes unrolled"
        return None

    def rewrite(self, match: Match, graph: Graph) -> list[Value]:
        loop = match.root
        body = loop.blocks[0]
        carried = list(loop.inputs[2:])
        for trip in range(match["trips"]):
            args = dict(zip(body.params, [_constant_value(graph, loop, trip), *carried]))
            carried = copy_block_before(body, loop, args)[1:]
        return carried


def _is_constant(value: Value, want: Any) -> bool:
    node = value.node
    return node is not None and node.op == CONSTANT and node.attrs.get("value") is want


def _size(block: Block) -> int:
    return sum(1 + sum(_size(b) for b in n.blocks) for n in block.nodes)


def forward_invariant_carried(graph: Graph) -> int:
    """A loop-carried value that every trip hands back unchanged (TorchScript carries an
    Optional argument refined inside the loop) is its initial value: the body and the
    loop's readers read that instead (``dce`` then drops the carried slot), so ``is None``
    tests on it fold. Returns the number forwarded."""
    forwarded = 0
    for loop in graph.find_nodes("prim::Loop"):
        if not loop.blocks:
            continue
        body = loop.blocks[0]
        for initial, param, result, out in zip(loop.inputs[2:], body.params[1:], body.returns[1:], loop.outputs):
            if (param.uses or out.uses) and result is not initial and _same_as(result, param):
                param.replace_all_uses_with(initial)
                out.replace_all_uses_with(initial)
                forwarded += 1
    return forwarded


def _same_as(value: Value, param: Value) -> bool:
    """Whether ``value`` is ``param`` on every path (through refinements and If branches)."""
    if value is param:
        return True
    node = value.node
    if node is None:
        return False
    if node.op == "prim::unchecked_cast":
        return _same_as(node.inputs[0], param)
    if node.op == "prim::If" and len(node.blocks) == 2:
        return all(_same_as(b.returns[value.index], param) for b in node.blocks)
    return False


_LIST_WRITERS = frozenset({"aten::append.t", "aten::_set_item.t", "aten::extend.t"})


_GROWERS = frozenset({"aten::append.t", "aten::extend.t"})


def fold_list_lengths(graph: Graph) -> int:
    """``len(rows)`` in the top block for a list built there by appends, when nothing
    else changes its length (writes by index, also inside loops, do not): the number
    of elements built plus the appends above it. This is what decides a loop such as
    ``for i in range(len(rows) - 2, -1, -1): rows[i] = ...``, which can then be
    unrolled, after which ``functional_lists`` rewrites the writes."""
    folded = 0
    position = {n: i for i, n in enumerate(graph.block.nodes)}
    for node in [n for n in graph.block.nodes if n.op == "aten::len.t"]:
        built = node.inputs[0].node
        if built is None or built.op != "prim::ListConstruct" or built.block is not graph.block:
            continue
        users = built.output.users()
        if any(not reads_list(u, built.output) and u.op != "aten::_set_item.t"
               and not (u.op in _GROWERS and u.block is graph.block and u.inputs[0] is built.output
                        and (u.op == "aten::append.t" or _built_list(u.inputs[1]) is not None))
               for u in users):
            continue
        growers = [u for u in users if u.op in _GROWERS]
        if any(position[u] > position[node] for u in growers):
            continue  # the length changes after this read: keep it simple, fold only when all are above
        length = len(built.inputs) + sum(1 if u.op == "aten::append.t" else len(_built_list(u.inputs[1]).inputs)
                                         for u in growers)
        node.output.replace_all_uses_with(_constant_value(graph, node, length))
        node.erase()
        folded += 1
    return folded


def functional_lists(graph: Graph) -> int:
    """Lists that scripted code builds or edits in the top block (``rows = []`` then
    ``rows.append(r)``, as an unrolled loop leaves them; ``s = list(x.shape)`` then
    ``s[0] = 1``) become one ``prim::ListConstruct`` per state read: each reader gets
    the elements as they are at its place. Only lists whose every user is in the top
    block and is an append, a set of a constant index or a reader that does not change
    them (``_LIST_READERS``) are rewritten. Returns the number of writes removed."""
    for copy in [n for n in graph.block.nodes if n.op == "aten::list.t"]:
        elements = _elements_of(graph, copy.inputs[0], copy)
        if elements is not None and _edited_in_top_block(graph, copy.output):
            built = graph.create_node("prim::ListConstruct", elements, [copy.output.type],
                                      meta=copy.meta.copy(), before=copy)
            copy.output.replace_all_uses_with(built.output)
            copy.erase()
    removed = 0
    for built in [n for n in graph.block.nodes if n.op == "prim::ListConstruct"]:
        if not any(u.op in _LIST_WRITERS for u in built.output.users()):
            continue
        if not _edited_in_top_block(graph, built.output):
            continue
        elements, current, writes = list(built.inputs), built.output, []
        node = built.next
        while node is not None and node is not graph.block.return_node:
            if node.op in _LIST_WRITERS and node.inputs[0] is built.output:
                if node.op == "aten::append.t":
                    elements.append(node.inputs[1])
                elif node.op == "aten::extend.t":
                    elements.extend(_built_list(node.inputs[1]).inputs)
                else:
                    index = node.inputs[1].node.attrs["value"]
                    if not -len(elements) <= index < len(elements):
                        writes = []  # the run raises IndexError there: the writes stay
                        break
                    elements[index] = node.inputs[2]
                current = None  # the next reader needs a list of the new elements
                writes.append(node)
            elif any(v is built.output for v in node.inputs):
                if current is None:
                    current = graph.create_node("prim::ListConstruct", elements, [built.output.type],
                                                meta=node.meta.copy(), before=node).output
                for i, v in enumerate(node.inputs):
                    if v is built.output:
                        node.replace_input(i, current)
            node = node.next
        graph.erase_nodes(writes)
        removed += len(writes)
    return removed


_DICT_WRITERS = frozenset({"aten::_set_item.str", "aten::_set_item.int"})


def functional_dicts(graph: Graph) -> int:
    """Dicts that scripted code builds and fills in the top block with constant keys
    (``out = {}`` then ``out["boxes"] = b``, what an inlined branch leaves) become one
    ``prim::DictConstruct`` per state read, as ``functional_lists`` does for lists.
    Returns the number of writes removed."""
    removed = 0
    for built in [n for n in graph.block.nodes if n.op == "prim::DictConstruct"]:
        users = built.output.users()
        if not any(u.op in _DICT_WRITERS for u in users):
            continue
        if any(u.block is not graph.block or (u.op not in _DICT_READERS and u.op not in _DICT_WRITERS)
               or (u.op in _DICT_WRITERS and (u.inputs[0] is not built.output or not _constant_of(u.inputs[1])[0]))
               or not all(_constant_of(k)[0] for k in built.inputs[0::2]) for u in users):
            continue
        entries = {_constant_of(k)[1]: (k, v) for k, v in zip(built.inputs[0::2], built.inputs[1::2])}
        current, writes = built.output, []
        node = built.next
        while node is not None and node is not graph.block.return_node:
            if node.op in _DICT_WRITERS and node.inputs[0] is built.output:
                entries[_constant_of(node.inputs[1])[1]] = (node.inputs[1], node.inputs[2])
                current = None
                writes.append(node)
            elif any(v is built.output for v in node.inputs):
                if current is None:
                    current = graph.create_node("prim::DictConstruct", [x for kv in entries.values() for x in kv],
                                                [built.output.type], meta=node.meta.copy(), before=node).output
                for i, v in enumerate(node.inputs):
                    if v is built.output:
                        node.replace_input(i, current)
            node = node.next
        graph.erase_nodes(writes)
        removed += len(writes)
    return removed


def _edited_in_top_block(graph: Graph, listed: Value) -> bool:
    """Whether every user of ``listed`` is a top-block writer (an append, a set of a
    constant index, its result unused) or a reader that leaves it as it is."""
    for user in listed.users():
        if user.block is not graph.block:
            return False
        if user.op in _LIST_WRITERS:
            if user.inputs[0] is not listed or any(o.uses for o in user.outputs):
                return False
            if user.op == "aten::_set_item.t" and not _is_int_constant(user.inputs[1]):
                return False
            if user.op == "aten::extend.t" and _built_list(user.inputs[1]) is None:
                return False
        elif not reads_list(user, listed):
            return False
    return True


def _elements_of(graph: Graph, listed: Value, before: Node) -> list[Value] | None:
    """Element values of a list: those of a built list, or a size list's dims one by one."""
    node = listed.node
    if node is not None and node.op == "prim::ListConstruct":
        return list(node.inputs)
    if node is not None and node.op == "aten::size" and len(node.inputs) == 1:
        t = node.inputs[0].type
        if isinstance(t, TensorType) and t.rank is not None:
            return [graph.create_node("aten::size.int", [node.inputs[0], _constant_value(graph, before, d)], [INT],
                                      meta=before.meta.copy(), before=before).output for d in range(t.rank)]
    return None


def _is_int_constant(value: Value) -> bool:
    node = value.node
    return (node is not None and node.op == CONSTANT and isinstance(node.attrs.get("value"), int)
            and not isinstance(node.attrs.get("value"), bool))


CONTROL_FLOW_RULES: tuple[Rule, ...] = (InlineConstantIf(), UnrollConstantLoop())


def fold_control_flow(graph: Graph) -> int:
    """Inline every If and unroll every loop the constants decide; the number of them."""
    return Rewriter(CONTROL_FLOW_RULES).apply(graph)


def fold_tuple_indexing(graph: Graph) -> int:
    """``(a, b)[1]`` -> ``b`` and ``x, y = (a, b)`` -> ``a, b`` everywhere: exact whatever
    happens to the items later (a
    tuple holds references), and it leaves a dict returned in a tuple read only by
    ``__getitem__`` nodes, which ``functional_dicts`` then rewrites (the tuples left
    unread go, so they do not count as the dict's users)."""
    count = Rewriter((TupleIndexOfBuiltTuple(),)).apply(graph)
    for unpack in [n for n in graph.nodes() if n.op == "prim::TupleUnpack"]:
        built = unpack.inputs[0].node
        if built is not None and built.op == "prim::TupleConstruct" and len(built.inputs) == len(unpack.outputs):
            unpack.replace_all_uses_with(list(built.inputs))
            unpack.erase()
            count += 1
    if count:
        graph.erase_nodes([n for n in graph.nodes() if n.op == "prim::TupleConstruct" and not n.output.uses])
    return count


SCRIPTED_RULES: tuple[Rule, ...] = (DtypeOfTyped(), GetItemOfBuiltList(), LenOfBuiltList(), IsNone(),
                                    GetItemOfBuiltDict(), ContainsOfBuiltDict(), ViewOfBuiltDict(),
                                    TupleIndexOfBuiltTuple(),
                                    IntOfNumToTensor(), IntOfTensorInt(), NarrowAtTensorStart(), DimOfTyped(), DeviceOfTensor(),
                                    UncheckedCastOfKnown(), *CONTROL_FLOW_RULES)
