"""Differential capture: what in a captured graph depends on the input sizes.

A trace sees one input. Sizes it reads through tensor ops stay computations, but a
size taken into Python (``int(x.shape[0])``, ``len(images)``, a loop over the batch)
is baked in as a constant or as repeated nodes. Capturing the model again on
*probe inputs* of other batch sizes and resolutions tells the two apart:

* the graphs must be structurally identical (same ops, same wiring); where they are
  not, the model has a per-image Python loop or size/data-dependent control flow, and
  the error names the first differing node;
* input dims that differ between the samples become symbols (``N`` for a batch dim,
  ``H``/``W`` for the last two dims of an image-like input, ``D0``, ... otherwise);
* every tensor dim that differs becomes an expression over them
  (``8*ceil(H/32)``, see ``dexport.ir.dims``) or, when none fits, a fresh
  data-dependent symbol (``n0``, ...; one per distinct set of observed sizes).
  Downstream of an op with data-dependent sizes (NMS, nonzero, bool-mask indexing)
  only a bare symbol is matched (``counts: i64[N]``): there a size that happened to
  track the inputs (every image hitting a detection cap, ``50*N``) is no rule;
* every constant that differs is a size baked in by Python: it must fit an
  expression over the input symbols, is given its own ``prim::Constant`` (traces
  share equal constants between unrelated uses) and the tag ``size=<expr>``
  (``size=[N,-1]`` for an int list), which ``fix-batch-dim`` rewrites into a shape
  computation. A constant that differs but fits nothing came from tensor data.

The result is the example's graph with these annotations; ``example_shapes`` stays
True (an int dim equal on every sample is evidence, not proof).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from dexport.ir.dims import fit
from dexport.ir.errors import CaptureError
from dexport.ir.graph import CONSTANT, PARAM, Block, Graph, Node, Value
from dexport.ir.types import TensorType
from dexport.passes.fix_batch_dim import SIZE_TAG, is_data_dependent
from dexport.frontends.value_dependence import probe_content

__all__ = ["capture_with_probes"]

_STRUCTURE_HINT = ("the model has a per-image Python loop or data-dependent control flow here "
                   "(a Python for/if over the batch, the sizes or tensor values): vectorise it "
                   "with tensor ops over the batch, or capture a batched entry point such as "
                   "forward_batched(images, image_sizes, output_sizes)")


def capture_with_probes(frontend: Callable[..., Graph], model: torch.nn.Module, example_inputs: Any,
                        probe_inputs: Sequence[Any], inference_func=None) -> Graph:
    """Capture ``model`` on the example and on every probe input with ``frontend``,
    check that the graphs agree and annotate the example's graph (see the module doc)."""
    if not probe_inputs:
        raise CaptureError("probe_inputs is empty",
                           hint="give one or more inputs of other batch sizes and resolutions "
                                "(two or more let sizes be told from coincidences)")
    graph = frontend(model, example_inputs, inference_func)
    samples = [graph] + [frontend(model, p, inference_func) for p in probe_inputs]
    skeletons = [_Skeleton(g) for g in samples]
    for index, (probe, skeleton) in enumerate(zip(samples[1:], skeletons[1:])):
        _check_schemas(graph, probe, index)
        _compare(skeletons[0], skeleton, index)
    probe_content(frontend, model, [example_inputs, *probe_inputs], samples, inference_func)
    symbols = _input_symbols(samples)
    _annotate_types(skeletons, symbols)
    _annotate_constants(skeletons, symbols)
    return graph


# --------------------------------------------------------------------------- structure

class _Skeleton:
    """A graph seen without its constants: the non-constant nodes in pre-order, each
    input named by where it comes from, and every constant use by its value."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.nodes: list[Node] = []
        self.blocks: list[Block] = [graph.block]
        self.ref: dict[Value, tuple] = {v: ("input", i) for i, v in enumerate(graph.inputs)}
        for node in graph.nodes():
            if node.op == CONSTANT:
                continue
            k = len(self.nodes)
            self.nodes.append(node)
            for o, out in enumerate(node.outputs):
                self.ref[out] = ("node", k, o)
            for b, block in enumerate(node.blocks):
                self.blocks.append(block)
                for p, param in enumerate(block.params):
                    self.ref[param] = ("block", k, b, p)

    def users(self) -> list[Node]:
        """Every node that reads values, return nodes last (one per block)."""
        return self.nodes + [b.return_node for b in self.blocks]

    def inputs_of(self, node: Node) -> list:
        """Each input's source, or ("const", value) for a constant."""
        return [("const", v.node.attrs["value"]) if v.node is not None and v.node.op == CONSTANT
                else self.ref[v] for v in node.inputs]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a, b)))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def _source_near(node: Node) -> str:
    """The node's source line or, for packing nodes that have none (lists, unpacking),
    the line of the op that feeds or reads it."""
    near = [node] + [v.node for v in node.inputs if v.node is not None]
    near += [user for out in node.outputs for user in out.users()]
    return next((n.meta.source for n in near if n.meta.source), "")


def _names(index: int | tuple[str, str]) -> tuple[str, str]:
    """(the probe, what it is compared with) as messages name them; dexport.frontends.value_dependence
    passes its own pair for the content probe."""
    return (f"probe_inputs[{index}]", "the example") if isinstance(index, int) else index


def _structure_error(node: Node, index, what: str, theirs: Node | None = None) -> CaptureError:
    source = _source_near(node) or (_source_near(theirs) if theirs is not None else "")
    probe, base = _names(index)
    return CaptureError(f"the graph captured on {probe} differs from {base}'s "
                        f"at {node.op}: {what}", op=node.op, scope=node.meta.scope,
                        source=source, hint=_STRUCTURE_HINT)


def _check_schemas(graph: Graph, probe: Graph, index) -> None:
    for key in ("input_schema", "output_schema"):
        mine, theirs = getattr(graph, key), getattr(probe, key)
        if (mine is None) != (theirs is None) or (mine is not None and mine.to_json() != theirs.to_json()):
            raise CaptureError(
                f"{_names(index)[0]} gives another {key.replace('_', ' ')} than {_names(index)[1]} "
                f"inputs ({(mine.to_json() if mine else 'none')[:120]} vs "
                f"{(theirs.to_json() if theirs else 'none')[:120]})",
                hint="probes must have the example's structure: a python list with one entry per "
                     "image changes with the batch size, so capture a tensor entry point such as "
                     "forward_batched(images, image_sizes, output_sizes)")


def _compare(base: _Skeleton, other: _Skeleton, index: int) -> None:
    """Raise on the first node where ``other`` is not structurally ``base``."""
    for k, node in enumerate(base.nodes):
        if k >= len(other.nodes):
            raise _structure_error(node, index, "the probe's graph ends before this node")
        theirs = other.nodes[k]
        if theirs.op != node.op:
            raise _structure_error(node, index, f"the probe has {theirs.op} "
                                   f"({theirs.meta.scope or '<top>'} @ {theirs.meta.source}) here",
                                   theirs)
        if node.op == PARAM:
            name = node.attrs["name"]
            if theirs.attrs["name"] != name or not _same(base.graph.params[name],
                                                         other.graph.params[name]):
                raise _structure_error(node, index, f"parameter {name!r} differs (a tensor "
                                       "constant computed from the input is baked in)", theirs)
        elif not _same(node.attrs, theirs.attrs):
            raise _structure_error(node, index, "attributes differ", theirs)
        if (len(node.outputs) != len(theirs.outputs)
                or [len(b.params) for b in node.blocks] != [len(b.params) for b in theirs.blocks]):
            raise _structure_error(node, index, f"{len(node.outputs)} outputs here, "
                                   f"{len(theirs.outputs)} in the probe", theirs)
        _compare_inputs(base, other, node, theirs, index)
    if len(other.nodes) > len(base.nodes):
        extra = other.nodes[len(base.nodes)]
        raise _structure_error(extra, index, "the probe's graph has more nodes from here on")
    for block, theirs in zip(base.blocks, other.blocks):
        _compare_inputs(base, other, block.return_node, theirs.return_node, index)


def _compare_inputs(base: _Skeleton, other: _Skeleton, node: Node, theirs: Node, index: int) -> None:
    mine, their_inputs = base.inputs_of(node), other.inputs_of(theirs)
    if len(mine) != len(their_inputs):
        raise _structure_error(node, index, f"{len(mine)} inputs here, {len(their_inputs)} in "
                               "the probe", theirs)
    for j, (a, b) in enumerate(zip(mine, their_inputs)):
        if (a[0] == "const") != (b[0] == "const") or (a[0] != "const" and a != b):
            raise _structure_error(node, index, f"input {j} comes from elsewhere in the probe",
                                   theirs)


# --------------------------------------------------------------------------- symbols

def _role(dim: int, rank: int) -> str | None:
    if dim == 0:
        return "N"
    if rank >= 3 and dim == rank - 2:
        return "H"
    if rank >= 3 and dim == rank - 1:
        return "W"
    return None


def _input_symbols(samples: list[Graph]) -> dict[str, tuple[int, ...]]:
    """Name the input dims that differ between samples; dims equal on every sample share
    a name. Sets the example graph's input types and returns symbol -> sample values."""
    graph = samples[0]
    groups: dict[tuple[int, ...], list[tuple[int, int, int]]] = {}
    for i, value in enumerate(graph.inputs):
        t = value.type
        if not isinstance(t, TensorType) or t.shape is None:
            continue
        for d in range(len(t.shape)):
            vector = tuple(g.inputs[i].type.shape[d] for g in samples)
            if len(set(vector)) > 1:
                groups.setdefault(vector, []).append((i, d, len(t.shape)))
    names: dict[tuple[int, ...], str] = {}
    for vector, members in groups.items():
        roles = {_role(d, rank) for _, d, rank in members}
        if len(roles) > 1:
            dims = ", ".join(f"input {i} dim {d}" for i, d, _ in members)
            raise CaptureError(f"{dims} took the same sizes {list(vector)} on every sample",
                               hint="make the probe inputs vary the batch size, the height and "
                                    "the width independently (e.g. batch 2 at 96x160 and batch 3 "
                                    "at 136x100 for an example of batch 1 at 128x128)")
        role = roles.pop()
        names[vector] = role if role and role not in names.values() else f"D{len(names)}"
    for vector, members in groups.items():
        for i, d, _ in members:
            value = graph.inputs[i]
            shape = list(value.type.shape)
            shape[d] = names[vector]
            value.type = TensorType(value.type.dtype, tuple(shape))
    return {name: vector for vector, name in names.items()}


def _annotate_types(skeletons: list[_Skeleton], symbols: dict[str, tuple[int, ...]]) -> None:
    """Dims that differ between samples become expressions or fresh symbols."""
    fresh: dict[tuple[int, ...], str] = {}

    def dim_text(vector: tuple[int, ...], tainted: bool):
        if len(set(vector)) == 1:
            return vector[0]
        if tainted:  # only a bare symbol: a count tracking 50*N is no rule
            expr = next((name for name, values in symbols.items() if values == vector), None)
        else:
            expr = fit(vector, symbols) if symbols else None
        if expr is not None:
            return str(expr)
        if vector not in fresh:
            fresh[vector] = f"n{len(fresh)}"
        return fresh[vector]

    base = skeletons[0]
    tainted: set[Value] = set()  # values downstream of data-dependent sizes
    for node in base.nodes:
        if is_data_dependent(node) or any(v in tainted for v in node.inputs):
            tainted.update(node.outputs)
            tainted.update(p for b in node.blocks for p in b.params)
    for value, ref in base.ref.items():
        if ref[0] == "input" or not isinstance(value.type, TensorType) or value.type.shape is None:
            continue
        observed = [_value_at(s, ref).type for s in skeletons]
        if any(not isinstance(t, TensorType) or t.shape is None
               or len(t.shape) != len(value.type.shape) for t in observed):
            continue
        shape = tuple(dim_text(tuple(t.shape[d] for t in observed), value in tainted)
                      for d in range(len(value.type.shape)))
        value.type = TensorType(value.type.dtype, shape)


def _value_at(skeleton: _Skeleton, ref: tuple) -> Value:
    if ref[0] == "node":
        return skeleton.nodes[ref[1]].outputs[ref[2]]
    return skeleton.nodes[ref[1]].blocks[ref[2]].params[ref[3]]


def _annotate_constants(skeletons: list[_Skeleton], symbols: dict[str, tuple[int, ...]]) -> None:
    """Give each size-derived constant use its own tagged constant node."""
    per_sample = [s.users() for s in skeletons]
    for k, user in enumerate(per_sample[0]):
        for j, source in enumerate(user.inputs):
            producer = source.node
            if producer is None or producer.op != CONSTANT:
                continue
            values = [users[k].inputs[j].node.attrs["value"] for users in per_sample]
            if all(_same(values[0], v) for v in values[1:]):
                continue
            expr = _size_expression(values, symbols)
            if expr is None:
                raise CaptureError(
                    f"a constant input of {user.op} is {values[0]!r} on the example but "
                    f"{values[1:]!r} on the probes, and it is no function of the input sizes",
                    op=user.op, scope=user.meta.scope, source=user.meta.source or producer.meta.source,
                    hint="a Python value computed from tensor data (.item(), int(t), float(t), a "
                         "data-dependent len) is baked into the trace: compute it with tensor ops")
            meta = producer.meta.copy()
            meta.tags = meta.tags + (SIZE_TAG + expr,)
            graph = skeletons[0].graph
            new = graph.create_node(CONSTANT, (), [source.type], {"value": values[0]}, meta,
                                    before=user)
            user.replace_input(j, new.output)
            if not producer.outputs[0].uses:
                producer.erase()


def _size_expression(values: list[Any], symbols: dict[str, tuple[int, ...]]) -> str | None:
    """The expression text of an int (``3*N``) or int-list (``[N,-1]``) constant observed
    with ``values`` on the samples, or None when it does not fit the input sizes."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if not symbols:
        return None
    if all(is_int(v) for v in values):
        expr = fit(tuple(values), symbols)
        return None if expr is None else str(expr)
    if all(isinstance(v, (list, tuple)) and len(v) == len(values[0]) and all(is_int(x) for x in v)
           for v in values):
        parts = []
        for column in zip(*values):
            if len(set(column)) == 1:
                parts.append(str(column[0]))
                continue
            expr = fit(tuple(column), symbols)
            if expr is None:
                return None
            parts.append(str(expr))
        return "[" + ",".join(parts) + "]"
    return None
