"""ONNX lowerings of torch's recurrent layers: ``aten::lstm.input`` and ``aten::gru.input``
(what ``nn.LSTM`` / ``nn.GRU`` trace to) as ONNX LSTM / GRU, one ONNX op per layer.

How torch's form maps onto ONNX's:

* weights: torch passes a flat list, per layer and direction (forward first)
  ``w_ih, w_hh[, b_ih, b_hh]``; ONNX wants W, R (num_directions, gates*H, .) and
  B = [Wb, Rb] (num_directions, 2*gates*H). Gate blocks are reordered on the way:
  torch's LSTM is (i, f, g, o), ONNX's (i, o, f, c); torch's GRU (r, z, n), ONNX's
  (z, r, h). The reorder is a Reshape/Gather on the weight tensors (onnxruntime folds
  it for parameters), so it needs no sizes from the trace.
* torch's GRU computes n = tanh(W_in x + b_in + r * (W_hn h + b_hn)): ONNX's
  ``linear_before_reset=1``.
* layout: ONNX's time-major (seq, batch, .) form; ``batch_first`` inputs and outputs
  are transposed around it. torch's output (seq, batch, directions*H) is ONNX's Y
  (seq, directions, batch, H) transposed and merged; h_n / c_n are the layers' Y_h / Y_c
  concatenated (torch's (layers*directions, batch, H)).
* hidden_size is an attribute, so it is read from ``w_hh``'s type (parameters have
  their real shapes). Between-layer dropout in training mode and LSTM projections
  (``proj_size``) have no ONNX equivalent and are refused.
"""
from __future__ import annotations

from dexport.backends.onnx import LoweringContext, lowering
from dexport.backends.onnx_aten import _first_dims, _list_values, _reshape
from dexport.ir.graph import Node
from dexport.ir.types import TensorType

# torch's gate blocks in ONNX's order (index = torch's block)
LSTM_GATES = [0, 3, 1, 2]   # (i, f, g, o) -> (i, o, f, c)
GRU_GATES = [1, 0, 2]       # (r, z, n) -> (z, r, h)


def _reorder_gates(ctx: LoweringContext, w: str, order: list[int]) -> str:
    """Rows of ``w`` (gates*H, ...) as gate blocks in ``order``, same shape."""
    blocks = _reshape(ctx, w, ctx.int64([len(order), -1]))  # one row per gate block
    picked = ctx.op("Gather", blocks, ctx.int64(order), axis=0)
    return _reshape(ctx, picked, ctx.shape(w))


def _stacked(ctx: LoweringContext, names: list[str]) -> str:
    """Per-direction tensors stacked on a new leading dim (ONNX's num_directions)."""
    parts = [ctx.unsqueeze(n, [0]) for n in names]
    return parts[0] if len(parts) == 1 else ctx.op("Concat", *parts, axis=0)


def _hidden_size(ctx: LoweringContext, node: Node) -> int:
    """H from the first w_hh (gates*H, H) of the params list's element types."""
    values = _list_values(node, 2)
    typ = values[1].type if len(values) > 1 else None
    if not isinstance(typ, TensorType) or typ.shape is None or not isinstance(typ.shape[-1], int):
        raise ctx.fail(f"{node.op}: the hidden size is not known from the weights' types",
                       "the recurrent layer's weights must be parameters (nn.LSTM / nn.GRU)")
    return typ.shape[-1]


def _recurrent(ctx: LoweringContext, node: Node, onnx_op: str, order: list[int], with_cell: bool) -> list:
    has_biases, layers = bool(ctx.const(node, 3)), int(ctx.const(node, 4))
    dropout, train = float(ctx.const(node, 5)), bool(ctx.const(node, 6))
    bidirectional, batch_first = bool(ctx.const(node, 7)), bool(ctx.const(node, 8))
    if train and dropout > 0 and layers > 1:
        raise ctx.fail(f"{node.op} with dropout={dropout} between layers in training mode has no ONNX "
                       "inference equivalent", "export the model in eval() mode")
    directions = 2 if bidirectional else 1
    per_direction = 4 if has_biases else 2
    params = ctx.inputs(node, 2)
    if len(params) != layers * directions * per_direction:
        raise ctx.fail(f"{node.op} with {len(params)} weights for {layers} layer(s), {directions} "
                       f"direction(s): projections (LSTM proj_size) have no ONNX LSTM equivalent",
                       "use proj_size=0, or project the outputs with a separate nn.Linear")
    hidden = _hidden_size(ctx, node)
    dtype = ctx.dtype(node, 0)
    x = ctx.input(node, 0)
    if batch_first:
        x = ctx.op("Transpose", x, perm=[1, 0, 2])
    states = ctx.inputs(node, 1) if with_cell else [ctx.input(node, 1)]
    h_parts, c_parts = [], []
    for layer in range(layers):
        ws, rs, bs = [], [], []
        for d in range(directions):
            w_ih, w_hh, *biases = params[(layer * directions + d) * per_direction:][:per_direction]
            ws.append(_reorder_gates(ctx, ctx.cast(w_ih, dtype), order))
            rs.append(_reorder_gates(ctx, ctx.cast(w_hh, dtype), order))
            if biases:
                bs.append(ctx.op("Concat", *(_reorder_gates(ctx, ctx.cast(b, dtype), order) for b in biases), axis=0))
        # this layer's initial states: rows layer*directions .. +directions of torch's (layers*dirs, B, H)
        initial = [ctx.op("Slice", ctx.cast(s, dtype), ctx.int64([layer * directions]),
                          ctx.int64([(layer + 1) * directions]), ctx.int64([0])) for s in states]
        inputs = [x, _stacked(ctx, ws), _stacked(ctx, rs), _stacked(ctx, bs) if bs else "", "", *initial]
        attrs = dict(hidden_size=hidden, direction="bidirectional" if bidirectional else "forward")
        if onnx_op == "GRU":
            attrs["linear_before_reset"] = 1
        outs = ctx.emit(onnx_op, inputs, num_outputs=3 if with_cell else 2, **attrs)
        # Y (seq, dirs, B, H) -> (seq, B, dirs*H): the next layer's input and torch's output
        y = ctx.op("Transpose", outs[0], perm=[0, 2, 1, 3])
        x = _reshape(ctx, y, ctx.op("Concat", _first_dims(ctx, y, 0, 2), ctx.int64([directions * hidden]), axis=0))
        h_parts.append(outs[1])
        if with_cell:
            c_parts.append(outs[2])
    output = ctx.op("Transpose", x, perm=[1, 0, 2]) if batch_first else x
    results = [output] + [p[0] if len(p) == 1 else ctx.op("Concat", *p, axis=0)
                          for p in ([h_parts, c_parts] if with_cell else [h_parts])]
    return [ctx.typed(r, dtype) for r in results]


@lowering("aten::lstm.input")
def _lstm(ctx: LoweringContext, node: Node) -> list:
    return _recurrent(ctx, node, "LSTM", LSTM_GATES, with_cell=True)


@lowering("aten::gru.input")
def _gru(ctx: LoweringContext, node: Node) -> list:
    return _recurrent(ctx, node, "GRU", GRU_GATES, with_cell=False)
