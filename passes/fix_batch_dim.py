"""``fix-batch-dim``: make a captured graph batch-polymorphic, or fix its batch size.

It works on what differential capture recorded (``dexport.capture(...,
probe_inputs=...)``, see ``dexport.frontends.probes``): symbolic input dims (``N`` for the
batch, ``H``/``W`` for the resolution), symbolic dims in the types, and constants
that Python computed from a traced size, tagged ``size=<expr>``.

* ``batch=dynamic`` keeps ``N`` symbolic; ``batch=<int>`` binds it (every type and
  every size constant is evaluated at that batch). A graph captured without probes
  can only be checked: ``batch=<int>`` passes when it was traced at that batch.
* ``resolution=dynamic`` keeps ``H``/``W`` symbolic; ``resolution=fixed`` keeps the
  traced resolution, so it needs a graph whose resolution was not probed.
* Every tagged constant that still depends on a symbol becomes a shape computation on
  the inputs (``aten::size.int`` of the input dim, then ``aten::mul.int`` /
  ``aten::add.int`` / ``aten::floordiv.int``), tagged with its expression; one bound
  to ints gets the value at the bound sizes.

``graph.example_shapes`` is cleared only when every dim is an int or an expression
over the input symbols and no op has a data-dependent output size (NMS, nonzero,
bool-mask indexing, ...): then the int dims were the same on every probe and do not
depend on data.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch

from dexport.ir.dims import DimExpr, parse_dim
from dexport.ir.errors import IRParseError, PassError
from dexport.ir.graph import CONSTANT, Graph, Meta, Node, Value
from dexport.ir.types import INT, ListType, TensorType
from dexport.passes.base import Pass, register_pass, register_property

__all__ = ["FixBatchDim", "SIZE_TAG", "DATA_DEPENDENT_OPS", "is_data_dependent"]

SIZE_TAG = "size="  # on constants that dexport.frontends.probes found to be traced sizes

# Ops whose output sizes depend on tensor values, not only on input sizes.
DATA_DEPENDENT_OPS = frozenset({
    "aten::nonzero", "aten::nonzero_numpy", "aten::masked_select", "aten::unique_dim",
    "aten::_unique2", "aten::unique_consecutive", "aten::repeat_interleave.Tensor",
    "aten::repeat_interleave.self_Tensor", "dexport::nms", "dexport::batched_nms",
    "dexport::paste_masks",
})

_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_data_dependent(node: Node) -> bool:
    """Whether the node's output sizes may depend on tensor values: an op of
    ``DATA_DEPENDENT_OPS``, or indexing with a bool mask (``x[keep]``)."""
    if node.op in DATA_DEPENDENT_OPS:
        return True
    if node.op == "aten::index.Tensor" and len(node.inputs) > 1 and node.inputs[1].node is not None:
        indices = node.inputs[1].node.inputs
        return any(isinstance(v.type, TensorType) and v.type.dtype == torch.bool for v in indices)
    return False


def _parse(text: str):
    """A dim or size expression, or None when it is not in dexport.ir.dims' form."""
    try:
        return parse_dim(text)
    except IRParseError:
        return None


def _bind(dim, bindings: dict[str, int]):
    if not isinstance(dim, str) or not bindings:
        return dim
    expr = _parse(dim)
    if not isinstance(expr, DimExpr):
        return dim
    bound = expr.substitute(bindings)
    return bound if isinstance(bound, int) else str(bound)


def _values(graph: Graph):
    """Every value: inputs, node outputs and block parameters, in graph order."""
    yield from graph.inputs
    for node in graph.nodes():
        yield from node.outputs
        for block in node.blocks:
            yield from block.params


def _batch_probed(graph: Graph) -> tuple[str, str] | None:
    """The ``batch-probed`` property: some input has the symbolic batch dim N, which
    capture with probe inputs at other batch sizes gives."""
    if "N" in FixBatchDim._input_symbols(graph):
        return None
    inputs = ", ".join(str(v.type) for v in graph.inputs)
    return (f"the graph's inputs ({inputs}) have no symbolic batch dim N",
            "capture with probe_inputs at other batch sizes "
            "(dexport.capture(model, inputs, probe_inputs=[...])) so sizes baked in by the "
            "trace are found and dim 0 becomes N")


@register_pass
class FixBatchDim(Pass):
    """See the module docstring. Idempotent: a second run finds nothing to do."""
    name = "fix-batch-dim"

    @dataclass(frozen=True)
    class Options:
        batch: int | Literal["dynamic"] = "dynamic"
        resolution: Literal["dynamic", "fixed"] = "dynamic"

    @property
    def requires(self) -> tuple[str, ...]:
        return ("batch-probed",) if self.options.batch == "dynamic" else ()

    def run(self, graph: Graph) -> bool:
        symbols = self._input_symbols(graph)
        bindings = self._bindings(graph, symbols)
        changed = False
        for value in _values(graph):
            t = value.type
            if isinstance(t, TensorType) and t.shape is not None and bindings:
                shape = tuple(_bind(d, bindings) for d in t.shape)
                if shape != t.shape:
                    value.type = TensorType(t.dtype, shape)
                    changed = True
        for name in bindings:
            symbols.pop(name)
        builder = _ShapeBuilder(graph, symbols)
        for node in list(graph.nodes()):
            tag = next((t for t in node.meta.tags if t.startswith(SIZE_TAG)), None)
            if node.op == CONSTANT and tag is not None:
                builder.rewrite(node, tag[len(SIZE_TAG):], bindings)
                changed = True
        if graph.example_shapes and symbols and self._proven(graph, symbols):
            graph.example_shapes = False
            changed = True
        return changed

    # -- options against what the capture recorded ---------------------------------------
    @staticmethod
    def _input_symbols(graph: Graph) -> dict[str, tuple[Value, int]]:
        """Each symbol of the input types -> the first (input, dim) that has it."""
        symbols: dict[str, tuple[Value, int]] = {}
        for value in graph.inputs:
            t = value.type
            if isinstance(t, TensorType) and t.shape is not None:
                for d, dim in enumerate(t.shape):
                    if isinstance(dim, str) and _SYMBOL.fullmatch(dim):
                        symbols.setdefault(dim, (value, d))
        return symbols

    def _bindings(self, graph: Graph, symbols: dict) -> dict[str, int]:
        batch, resolution = self.options.batch, self.options.resolution
        inputs = ", ".join(str(v.type) for v in graph.inputs)
        bindings = {}
        if batch == "dynamic" and "N" not in symbols:  # run on its own, without the manager
            what, hint = _batch_probed(graph)
            raise PassError(f"fix-batch-dim{{batch=dynamic}}: {what}", hint=hint)
        if batch != "dynamic":
            if "N" in symbols:
                bindings["N"] = batch
            else:
                traced = next((v.type.shape[0] for v in graph.inputs if isinstance(v.type, TensorType)
                               and v.type.shape), None)
                if traced != batch:
                    raise PassError(
                        f"fix-batch-dim{{batch={batch}}}: the graph was traced at batch {traced} "
                        f"(inputs: {inputs})", hint=f"capture again with a batch of {batch}, or "
                        "capture with probe_inputs at other batch sizes so the batch can be set")
        images = [v for v in graph.inputs if isinstance(v.type, TensorType)
                  and v.type.shape is not None and len(v.type.shape) == 4]
        probed = "H" in symbols or "W" in symbols
        if resolution == "dynamic" and images and not probed:
            raise PassError(
                f"fix-batch-dim{{resolution=dynamic}}: the image input {images[0].type} has a "
                "fixed traced resolution", hint="capture with probe_inputs at other resolutions, "
                "or keep the traced one with resolution=fixed")
        if resolution == "fixed" and probed:
            raise PassError(
                f"fix-batch-dim{{resolution=fixed}}: the graph's resolution is symbolic ({inputs}): "
                "it was probed at several resolutions, so no single one is known",
                hint="capture with probe_inputs at the example's resolution (other batch sizes "
                     "only), or use resolution=dynamic")
        return bindings

    @staticmethod
    def _proven(graph: Graph, symbols: dict) -> bool:
        """No data-dependent op and every dim an int or an expression over ``symbols``."""
        if any(is_data_dependent(node) for node in graph.nodes()):
            return False
        for value in _values(graph):
            t = value.type
            if not isinstance(t, TensorType) or t.shape is None:
                continue
            for dim in t.shape:
                if isinstance(dim, str):
                    expr = _parse(dim)
                    if not isinstance(expr, DimExpr) or any(s not in symbols for s in expr.symbols):
                        return False
        return True


register_property("batch-probed", _batch_probed)


class _ShapeBuilder:
    """Builds shape computations on the graph inputs. The size of each input symbol is
    read once, at the top of the graph; arithmetic goes right before each use."""

    def __init__(self, graph: Graph, symbols: dict[str, tuple[Value, int]]):
        self.graph = graph
        self.symbols = symbols
        self.sizes: dict[str, Value] = {}
        self.last_size: Node | None = None  # size reads go in order at the top

    def rewrite(self, node: Node, text: str, bindings: dict[str, int]) -> None:
        """Replace a ``size=``-tagged constant by its value at ``bindings``, or by a
        computation when a symbol is left."""
        items = text[1:-1].split(",") if text.startswith("[") else [text]
        exprs = []
        for item in items:
            expr = _parse(item)
            if expr is None or (isinstance(expr, DimExpr) and
                                any(s not in bindings and s not in self.symbols for s in expr.symbols)):
                raise PassError(f"fix-batch-dim: the size tag {text!r} names a symbol the graph's "
                                "inputs do not have", op=node.op, scope=node.meta.scope,
                                source=node.meta.source, hint="the tag comes from dexport.frontends.probes; "
                                "keep the graph's input types as the capture set them")
            exprs.append(expr.substitute(bindings) if isinstance(expr, DimExpr) else expr)
        if all(isinstance(e, int) for e in exprs):
            node.attrs["value"] = exprs if text.startswith("[") else exprs[0]
            node.meta.tags = tuple(t for t in node.meta.tags if not t.startswith(SIZE_TAG))
            return
        meta = node.meta.copy()
        parts = [self._int(e, node) for e in exprs]
        if text.startswith("["):
            result = self.graph.create_node("prim::ListConstruct", parts, [ListType(INT)],
                                            meta=meta, before=node).output
        else:
            result = parts[0]
        node.output.replace_all_uses_with(result)
        node.erase()

    def _int(self, expr, anchor: Node) -> Value:
        if isinstance(expr, int):
            return self._constant(expr, anchor)
        value = None
        for factor in expr.factors:
            term = self._size(factor.symbol)
            if factor.kind == "ceil":
                term = self._op("aten::add.int", term, self._constant(factor.divisor - 1, anchor),
                                anchor)
            if factor.kind:
                term = self._op("aten::floordiv.int", term, self._constant(factor.divisor, anchor),
                                anchor)
            value = term if value is None else self._op("aten::mul.int", value, term, anchor)
        if expr.coef != 1:
            value = self._op("aten::mul.int", value, self._constant(expr.coef, anchor), anchor)
        if expr.offset:
            value = self._op("aten::add.int", value, self._constant(expr.offset, anchor), anchor)
        if value.node is not None and value.node.op != "aten::size.int":
            value.node.meta = Meta(anchor.meta.scope, anchor.meta.source, (SIZE_TAG + str(expr),))
        return value

    def _size(self, symbol: str) -> Value:
        if symbol not in self.sizes:
            value, dim = self.symbols[symbol]
            where = ({"after": self.last_size} if self.last_size is not None
                     else {"before": next(iter(self.graph.block.nodes))})
            dim_value = self.graph.create_node(CONSTANT, (), [INT], {"value": dim}, **where).output
            size = self.graph.create_node("aten::size.int", [value, dim_value], [INT],
                                          after=dim_value.node).output
            size.name_hint = symbol
            self.sizes[symbol] = size
            self.last_size = size.node
        return self.sizes[symbol]

    def _constant(self, number: int, anchor: Node) -> Value:
        return self.graph.create_node(CONSTANT, (), [INT], {"value": number}, before=anchor).output

    def _op(self, op: str, a: Value, b: Value, anchor: Node) -> Value:
        return self.graph.create_node(op, [a, b], [INT], before=anchor).output
