"""``third-party-ops``: other libraries' detection ops as dexport's own.

A model built on a vision library calls that library's ops (``torchvision::nms``,
``torchvision::roi_align``, ...), which a trace records as single nodes. They are
recognised by op name and arity (the library's schema) and replaced by the
``dexport`` dialect's ops with the same meaning, so every backend lowers them
through the lowerings it already has. ``dexport.capture`` runs this pass on every
graph it returns, so ``--check`` and every pipeline see only dexport ops.

Conventions (checked against torchvision's kernels; tests compare with a
reference kernel on the library's schemas):

* ``torchvision::nms(dets, scores, iou_threshold)``: kept indices (i64) by
  decreasing score, a box dropped when its IoU with a kept box is > the threshold:
  ``dexport::nms``. (dexport clamps the area of an inverted box to 0, where
  torchvision's area goes negative; boxes with x1 <= x2 and y1 <= y2 agree.)
* ``torchvision::roi_align(input, rois, spatial_scale, pooled_height,
  pooled_width, sampling_ratio, aligned)``: rois [K,5] (batch index, x1, y1, x2,
  y2), ``aligned`` shifts by half a pixel, ``aligned=False`` is the legacy mode
  whose rois are at least one pixel, ``sampling_ratio <= 0`` is adaptive
  (ceil(roi size / bins)): ``dexport::roi_align`` with the same arguments.
* ``torchvision::ps_roi_align(input, rois, spatial_scale, pooled_height,
  pooled_width, sampling_ratio)`` (position-sensitive, always half-pixel aligned):
  output channel c's bin (i, j) pools input channel ``(c·PH + i)·PW + j``. It
  becomes one ``dexport::roi_align`` over all channels, of which each bin keeps its
  own channel (a mask multiply and sum). Only when its second output, the channel
  mapping, is unused (a model reads it only for the backward pass).

* ``torchvision::roi_pool(input, rois, spatial_scale, pooled_height, pooled_width)``
  (Fast R-CNN max pooling over bins quantised to the feature grid, an empty bin 0):
  ``dexport::roi_pool``. Only when its second output, the argmax, is unused (it
  serves the backward pass).
"""
from __future__ import annotations

import torch

from dexport.ir.graph import CONSTANT, Graph, Node, Value
from dexport.ir.types import BOOL, INT, NONE, ListType, TensorType
from dexport.passes.base import Pass, register_pass
from dexport.passes.rewrite import Match, Op, Rewriter, Rule, Var


def _dexport_node(graph: Graph, root: Node, op: str, inputs: list[Value], types=None) -> Node:
    """``op`` on ``inputs`` in place of ``root``, with its output types (as captured) and meta."""
    types = [o.type for o in root.outputs] if types is None else types
    return graph.create_node(op, inputs, types, meta=root.meta.copy(), before=root)


class TorchvisionNms(Rule):
    pattern = Op("torchvision::nms", Var("dets"), Var("scores"), Var("iou_threshold"))

    def rewrite(self, match: Match, graph: Graph) -> Value:
        inputs = [match["dets"], match["scores"], match["iou_threshold"]]
        return _dexport_node(graph, match.root, "dexport::nms", inputs).output


class TorchvisionRoiAlign(Rule):
    pattern = Op("torchvision::roi_align", Var("input"), Var("rois"), Var("spatial_scale"),
                 Var("pooled_height"), Var("pooled_width"), Var("sampling_ratio"), Var("aligned"))

    def rewrite(self, match: Match, graph: Graph) -> Value:
        # Same arguments in the same order: dexport::roi_align follows torchvision's sampling.
        names = ("input", "rois", "spatial_scale", "pooled_height", "pooled_width", "sampling_ratio", "aligned")
        return _dexport_node(graph, match.root, "dexport::roi_align", [match[n] for n in names]).output


def _constant_of(value: Value):
    node = value.node
    return node.attrs.get("value") if node is not None and node.op == CONSTANT else None


class TorchvisionPsRoiAlign(Rule):
    pattern = Op("torchvision::ps_roi_align", Var("input"), Var("rois"), Var("spatial_scale"),
                 Var("pooled_height"), Var("pooled_width"), Var("sampling_ratio"))

    def check(self, match):
        if match.root.outputs[1].uses:
            return "its channel mapping output is used (only the pooled output has a dexport equivalent)"
        ph, pw = _constant_of(match["pooled_height"]), _constant_of(match["pooled_width"])
        if not (isinstance(ph, int) and isinstance(pw, int) and ph > 0 and pw > 0):
            return "pooled_height and pooled_width are not constant positive ints"
        features = match["input"].type
        channels = features.shape[1] if isinstance(features, TensorType) and features.rank == 4 else None
        if not isinstance(channels, int) or channels % (ph * pw):
            return f"the input's channel count ({channels}) is not known to be a multiple of {ph}x{pw}"
        return None

    def rewrite(self, match: Match, graph: Graph) -> list[Value]:
        root = match.root
        ph, pw = _constant_of(match["pooled_height"]), _constant_of(match["pooled_width"])
        bins = ph * pw
        features = match["input"].type
        channels_out = features.shape[1] // bins
        dtype = features.dtype
        out_type = root.outputs[0].type
        k = out_type.shape[0] if isinstance(out_type, TensorType) and out_type.rank == 4 else "?"

        def const(value, typ) -> Value:
            return graph.create_node(CONSTANT, [], [typ], {"value": value}, root.meta.copy(), before=root).output

        def op(name, inputs, typ) -> Value:
            return graph.create_node(name, inputs, [typ], meta=root.meta.copy(), before=root).output

        pooled = op("dexport::roi_align",
                    [match["input"], match["rois"], match["spatial_scale"], match["pooled_height"],
                     match["pooled_width"], match["sampling_ratio"], const(True, BOOL)],
                    TensorType(dtype, (k, features.shape[1], ph, pw)))
        # [K, C_out, bins (channel offset), bins (bin)]; bin b keeps channel offset b.
        grouped = op("aten::reshape", [pooled, const([-1, channels_out, bins, bins], ListType(INT))],
                     TensorType(dtype, (k, channels_out, bins, bins)))
        eye_name = graph.unique_param_name("_ps_roi_align_bins")
        eye = graph.add_param(eye_name, torch.eye(bins, dtype=dtype), before=root)
        picked = op("aten::mul.Tensor", [grouped, eye], TensorType(dtype, (k, channels_out, bins, bins)))
        summed = op("aten::sum.dim_IntList", [picked, const([2], ListType(INT)), const(False, BOOL),
                                              const(None, NONE)],
                    TensorType(dtype, (k, channels_out, bins)))
        out = op("aten::reshape", [summed, const([-1, channels_out, ph, pw], ListType(INT))], out_type)
        return [out, root.outputs[1]]  # the mapping has no uses (check): it goes with the root


class TorchvisionRoiPool(Rule):
    pattern = Op("torchvision::roi_pool", Var("input"), Var("rois"), Var("spatial_scale"),
                 Var("pooled_height"), Var("pooled_width"))

    def check(self, match):
        if match.root.outputs[1].uses:
            return "its argmax output is used (only the pooled output has a dexport equivalent)"
        return None

    def rewrite(self, match: Match, graph: Graph) -> list[Value]:
        names = ("input", "rois", "spatial_scale", "pooled_height", "pooled_width")
        pooled = _dexport_node(graph, match.root, "dexport::roi_pool", [match[n] for n in names],
                               types=[match.root.outputs[0].type])
        return [pooled.output, match.root.outputs[1]]  # the argmax has no uses (check): it goes with the root


RULES: tuple[Rule, ...] = (TorchvisionNms(), TorchvisionRoiAlign(), TorchvisionPsRoiAlign(), TorchvisionRoiPool())
# The third-party op names the rules recognise.
RECOGNISED_OPS: tuple[str, ...] = tuple(op for rule in RULES for op in rule.pattern.ops)


@register_pass
class ThirdPartyOps(Pass):
    """Applies ``RULES``; ``dexport.capture`` runs it on every captured graph."""
    name = "third-party-ops"

    def run(self, graph: Graph) -> bool:
        self.rewriter = Rewriter(RULES)
        return self.rewriter.apply(graph) > 0


__all__ = ["RECOGNISED_OPS", "RULES", "ThirdPartyOps"]
