"""Hypothesis strategies for IR graphs, shared by the test packages.

Import as ``from tests.ir.strategies import graphs, runnable_graphs`` (the suite
runs with ``python -m pytest`` from the repository root).

* ``graphs()``: structurally valid graphs (they pass ``verify(g, "typed")``) with
  random ops, types, attributes, meta, name hints (clashing and unusable ones too)
  and nested ``prim::If``/``prim::Loop`` blocks. The ops are ``hyp::*`` names
  registered here as variadic ops without a kernel: for the printer, parser,
  verifier and passes that only look at structure.
* ``runnable_graphs()``: ``(graph, example_inputs)`` built from real ATen ops
  (add/sub/mul/relu/neg/cat) on small f32 tensors, with constants, parameters,
  duplicated subexpressions and dead nodes, so that CSE/DCE/folding have work
  to do and the interpreter can check that a pass kept the behaviour.
"""
from __future__ import annotations

from functools import lru_cache

import torch
from hypothesis import strategies as st

from dexport.ir import (ANY, BOOL, INT, DexportError, Graph, ListType, Meta, OptionalType,
                        RecordType, ScalarType, TensorType, TupleType)
from dexport.ir.ops import has_op, register_op, type_of_constant
from dexport.ir.types import SCALAR_KINDS

# --------------------------------------------------------------------------- ops

HYP_OPS = ("hyp::op", "hyp::op.Tensor", "hyp::_private.out", "hyp::Fancy_Op2.a.b")


def _no_kernel(node, *inputs):
    raise DexportError(f"{node.op} is a test op without a kernel", op=node.op)


for _name in HYP_OPS:
    if not has_op(_name):  # the module may be imported under two names
        register_op(_name, num_inputs=None, num_outputs=None, kernel=_no_kernel,
                    doc="Structure-only op for property tests.")

# --------------------------------------------------------------------------- leaves

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
           torch.int32, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.uint16)
_SYMBOLS = ("N", "H", "W", "n0", "n12", "?", "H/4", "(W+1)/2", "max(H,W)")
_HINTS = ("x", "y", "x.1", "conv.weight", "_t", "a_b", "x.", "weight")
_BAD_HINTS = ("", "1x", "a b", "x-y", "%x", "é", "0")


@lru_cache(None)  # building a strategy is costly; one object serves every draw
def dims():
    return st.one_of(st.integers(0, 8), st.sampled_from(_SYMBOLS))


@lru_cache(None)
def tensor_types():
    return st.builds(TensorType, st.one_of(st.none(), st.sampled_from(_DTYPES)),
                     st.one_of(st.none(), st.lists(dims(), max_size=4).map(tuple)))


@lru_cache(None)
def scalar_types():
    return st.sampled_from(SCALAR_KINDS).map(ScalarType)


def _identifiers(first: str, rest: str, max_size: int):
    # Cheaper to draw than st.from_regex, and as good for these tests.
    return st.builds(lambda a, b: a + b, st.sampled_from(first),
                     st.text(alphabet=rest, max_size=max_size))


_LOWER = "abcxyz_"
_FIELD = _identifiers(_LOWER, _LOWER + "019", 5)
_KIND = _identifiers("ABIR", "abcXYZ_019", 7)


@lru_cache(None)
def types():
    """Any IR type, nested a little."""
    return st.recursive(
        st.one_of(tensor_types(), scalar_types()),
        lambda inner: st.one_of(
            inner.map(ListType),
            inner.map(OptionalType),
            st.lists(inner, max_size=3).map(lambda ts: TupleType(tuple(ts))),
            st.builds(RecordType, _KIND,
                      st.lists(st.tuples(_FIELD, inner), max_size=3,
                               unique_by=lambda f: f[0]).map(tuple))),
        max_leaves=5)


@lru_cache(None)
def name_hints():
    return st.one_of(st.none(), st.sampled_from(_HINTS), st.sampled_from(_BAD_HINTS),
                     _identifiers("aBz_", "aBz_09.", 6))


@st.composite
def small_tensors(draw):
    dtype = draw(st.sampled_from((torch.float32, torch.float64, torch.float16, torch.bfloat16,
                                  torch.int64, torch.int32, torch.uint8, torch.bool)))
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    numel = 1
    for d in shape:
        numel *= d
    if dtype.is_floating_point:
        values = draw(st.lists(st.floats(width=16 if dtype == torch.float16 else 32),
                               min_size=numel, max_size=numel))
        return torch.tensor(values, dtype=torch.float32).to(dtype).reshape(shape)
    if dtype == torch.bool:
        values = draw(st.lists(st.booleans(), min_size=numel, max_size=numel))
        return torch.tensor(values, dtype=torch.bool).reshape(shape)
    hi = 255 if dtype == torch.uint8 else 2 ** 31 - 1
    lo = 0 if dtype == torch.uint8 else -2 ** 31
    values = draw(st.lists(st.integers(lo, hi), min_size=numel, max_size=numel))
    return torch.tensor(values, dtype=dtype).reshape(shape)


@lru_cache(None)
def attr_values():
    """Every kind of attribute constant, nested in lists and tuples."""
    leaves = st.one_of(
        st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0.0, -0.0, float("inf"), float("-inf"), float("nan"), -float("nan"),
                         1e-300, 5e-324, 1.7976931348623157e308]),
        st.booleans(), st.none(), st.text(max_size=8),
        st.sampled_from([torch.float32, torch.int64, torch.bool, torch.bfloat16, torch.uint16]),
        st.sampled_from(["cpu", "cuda", "cuda:1", "meta"]).map(torch.device),
        st.sampled_from([torch.strided, torch.sparse_coo]),
        st.sampled_from([torch.contiguous_format, torch.channels_last, torch.preserve_format]),
        small_tensors())
    return st.recursive(leaves, lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.lists(inner, max_size=3).map(tuple)), max_leaves=6)


@lru_cache(None)
def attr_dicts():
    keys = st.one_of(_FIELD, st.text(max_size=4))
    return st.dictionaries(keys, attr_values(), max_size=3)


@lru_cache(None)
def metas():
    scopes = st.one_of(st.just(""), st.sampled_from(["backbone.res2.0.conv1", "roi_heads", "<lambda>"]),
                       st.text(max_size=8))
    sources = st.one_of(st.just(""), st.sampled_from(["models/rpn.py:80", "C:\\a b\\x.py:1"]),
                        st.text(max_size=8))
    tags = st.lists(st.one_of(st.sampled_from(["postprocess", "host"]), st.text(max_size=4)),
                    max_size=3).map(tuple)
    return st.builds(Meta, scopes, sources, tags)


# --------------------------------------------------------------------------- graphs

@lru_cache(None)
def _below(n: int):
    return st.integers(0, n - 1)


def _pick(draw, values):
    """One of ``values`` (a fresh st.sampled_from per draw is slow)."""
    return values[draw(_below(len(values)))]


def _picks(draw, values, max_size, min_size=0):
    return [values[i] for i in draw(st.lists(_below(len(values)), min_size=min_size, max_size=max_size))]


@st.composite
def graphs(draw, max_nodes: int = 10, max_depth: int = 2):
    """A graph that passes ``verify(g, "typed")``; see the module docstring."""
    g = Graph()
    for _ in range(draw(st.integers(0, 3))):
        g.add_input(draw(types()), draw(name_hints()))
    visible = list(g.inputs)
    _fill(draw, g, g.block, visible, draw(st.integers(0, max_nodes)), max_depth)
    if visible:
        g.set_outputs(_picks(draw, visible, 3))
    return g


def _node(draw, g, block, op, inputs, out_types, attrs=None):
    node = g.create_node(op, inputs, out_types, attrs, draw(metas()), block=block)
    for o in node.outputs:
        o.name_hint = draw(name_hints())
    return node


def _fill(draw, g, block, visible, n_nodes, depth):
    """Append ``n_nodes`` random nodes to ``block``; ``visible`` grows with their outputs."""
    kinds = ["op", "op", "constant", "param"] + (["if", "loop"] if depth > 0 else [])
    for _ in range(n_nodes):
        kind = draw(st.sampled_from(kinds))
        if kind == "op" or (kind in ("if", "loop") and not visible):
            inputs = _picks(draw, visible, 4) if visible else []
            node = _node(draw, g, block, draw(st.sampled_from(HYP_OPS)), inputs,
                         draw(st.lists(types(), max_size=3)), draw(attr_dicts()))
        elif kind == "constant":  # typed by its value, as the typed stage wants
            value = draw(attr_values())
            node = _node(draw, g, block, "prim::Constant", [], [type_of_constant(value)],
                         {"value": value})
        elif kind == "param":
            name = draw(st.sampled_from(["w", "conv.weight", "fpn.p2.bias"]))
            g.params.setdefault(name, torch.zeros(2))
            node = _node(draw, g, block, "prim::Param", [], [TensorType(torch.float32, (2,))],
                         {"name": name})
        elif kind == "if":
            node = _if(draw, g, block, visible, depth)
        else:
            node = _loop(draw, g, block, visible, depth)
        visible.extend(node.outputs)


def _if(draw, g, block, visible, depth):
    node = _node(draw, g, block, "prim::If", [_pick(draw, visible)], [])
    n_out = draw(st.integers(0, 2))
    returns = []
    for _ in range(2):
        b = node.add_block()
        inner = list(visible)
        _fill(draw, g, b, inner, draw(st.integers(0, 3)), depth - 1)
        rets = [_pick(draw, inner) for _ in range(n_out)]
        b.set_returns(rets)
        returns.append(rets)
    for a, b in zip(*returns):
        node.add_output(a.type if a.type == b.type else ANY).name_hint = draw(name_hints())
    return node


def _loop(draw, g, block, visible, depth):
    carried = _picks(draw, visible, 2)
    trip = _node(draw, g, block, "prim::Constant", [], [INT], {"value": draw(st.integers(0, 3))})
    cond = _node(draw, g, block, "prim::Constant", [], [BOOL], {"value": True})
    node = _node(draw, g, block, "prim::Loop", [trip.output, cond.output, *carried], [])
    body = node.add_block()
    body.add_param(INT, draw(name_hints()))
    params = [body.add_param(v.type, draw(name_hints())) for v in carried]
    inner = visible + [trip.output, cond.output] + list(body.params)
    _fill(draw, g, body, inner, draw(st.integers(0, 3)), depth - 1)
    rets = [_pick(draw, [v for v in inner if v.type == p.type]) for p in params]
    body.set_returns([cond.output, *rets])
    for v in carried:
        node.add_output(v.type).name_hint = draw(name_hints())
    return node


# --------------------------------------------------------------------------- runnable graphs

_SHAPES = ((2, 3), (3,), (1, 2, 2))


@st.composite
def runnable_graphs(draw, max_nodes: int = 12):
    """``(graph, example_inputs)``: ATen ops on small f32 tensors that the interpreter runs.

    Every tensor value has one of a few static shapes; binary ops combine values
    of the same shape; ``aten::cat`` makes a new shape. Some nodes repeat an
    earlier node exactly (work for CSE), some results are never used (work for
    DCE), constants and parameters feed others (work for folding)."""
    f32 = torch.float32
    g = Graph()
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16)))
    shape = draw(st.sampled_from(_SHAPES))
    examples = []
    by_shape: dict[tuple, list] = {shape: []}
    for i in range(draw(st.integers(1, 3))):
        by_shape[shape].append(g.add_input(TensorType(f32, shape), draw(st.sampled_from(["x", "y", None]))))
        examples.append(torch.randn(shape, generator=gen))
    one = g.create_node("prim::Constant", [], [INT], {"value": 1}).output
    done = []  # (op, inputs, type) of the nodes made so far, to repeat some exactly

    def emit(op, inputs, typ):
        node = g.create_node(op, inputs, [typ])
        done.append((op, list(inputs), typ))
        by_shape.setdefault(typ.shape, []).append(node.output)
        return node.output

    for _ in range(draw(st.integers(1, max_nodes))):
        kind = draw(st.sampled_from(["unary", "binary", "binary", "const", "param", "cat", "repeat"]))
        s = draw(st.sampled_from(sorted(by_shape)))
        pool = by_shape[s]
        typ = TensorType(f32, s)
        if kind == "repeat" and done:
            op, inputs, typ = _pick(draw, done)
            emit(op, inputs, typ)
        elif kind == "const":
            value = torch.randn(s, generator=gen)
            by_shape[s].append(g.create_node("prim::Constant", [], [typ], {"value": value}).output)
        elif kind == "param":
            name = g.unique_param_name("w")
            by_shape[s].append(g.add_param(name, torch.randn(s, generator=gen)))
        elif kind == "unary" or not pool:
            if pool:
                emit(draw(st.sampled_from(["aten::relu", "aten::neg"])), [_pick(draw, pool)], typ)
        elif kind == "cat":
            parts = _picks(draw, pool, 3, min_size=1)
            lst = g.create_node("prim::ListConstruct", parts, [ListType(typ)]).output
            dim = g.create_node("prim::Constant", [], [INT], {"value": 0}).output
            emit("aten::cat", [lst, dim], TensorType(f32, (s[0] * len(parts),) + s[1:]))
        else:
            a, b = _pick(draw, pool), _pick(draw, pool)
            op = draw(st.sampled_from(["aten::add.Tensor", "aten::sub.Tensor", "aten::mul.Tensor"]))
            emit(op, [a, b, one] if op != "aten::mul.Tensor" else [a, b], typ)
    tensors = [v for s in sorted(by_shape) for v in by_shape[s]]
    g.set_outputs(draw(st.lists(st.sampled_from(tensors), min_size=1, max_size=3)))
    return g, tuple(examples)
