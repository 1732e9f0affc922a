"""The dexport dialect's type rules agree with its kernels: each op's rule, applied to
a node with typed inputs, predicts the dtype and every known dim of what the kernel
returns; the registry hands the rules out through ``get_op``."""
import pytest
import torch

from dexport.ir import DexportError, Graph, TensorType
from dexport.ir.dialects import dexport as ops
from dexport.ir.ops import get_op, register_type_rule, type_of_constant


def _boxes(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 40
    return torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=g) * 20], dim=1)


def _rois(n):
    return torch.cat([torch.zeros(n, 1), _boxes(n)], dim=1)


# op -> example arguments (tensors become typed graph inputs, the rest constants).
EXAMPLES = {
    "dexport::nms": (_boxes(6), torch.rand(6), 0.5),
    "dexport::batched_nms": (_boxes(6), torch.rand(6), torch.tensor([0, 1, 0, 1, 0, 1]), 0.5),
    "dexport::roi_align": (torch.rand(1, 3, 16, 20), _rois(5), 0.5, 7, 6, 0, True),
    "dexport::_roi_align_backward": (torch.rand(5, 3, 7, 6), torch.rand(1, 3, 16, 20), _rois(5),
                                     0.5, 7, 6, 0, True),
    "dexport::roi_pool": (torch.rand(1, 3, 16, 20), _rois(5), 0.5, 7, 6),
    "dexport::decode_boxes": (torch.randn(4, 8), _boxes(4), [1.0, 1.0, 1.0, 1.0], ops.DEFAULT_SCALE_CLAMP),
    "dexport::encode_boxes": (_boxes(4, 1), _boxes(4), [10.0, 10.0, 5.0, 5.0]),
    "dexport::clip_boxes": (_boxes(4) * 2, torch.tensor([30, 40])),
    "dexport::assign_fpn_levels": (_boxes(5) * 8, 2, 5, 224, 4),
    "dexport::paste_masks": (torch.rand(3, 14, 14), _boxes(3), torch.tensor([50, 60]), 0.5),
    "dexport::heatmaps_to_keypoints": (torch.rand(3, 2, 14, 14), _boxes(3)),
}


def _node_for(op, args):
    g = Graph()
    inputs = []
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            inputs.append(g.add_input(TensorType(a.dtype, tuple(a.shape)), f"x{i}"))
        else:
            inputs.append(g.create_node("prim::Constant", (), [type_of_constant(a)], {"value": a}).output)
    return g.create_node(op, inputs, [TensorType()])


def _conforms(tensor, t: TensorType) -> bool:
    if t.dtype is not None and tensor.dtype != t.dtype:
        return False
    return t.shape is None or (len(t.shape) == tensor.dim() and all(
        d == "?" or d == s for d, s in zip(t.shape, tensor.shape)))


def test_every_dialect_op_has_an_example():
    assert set(EXAMPLES) == set(ops.OPS)


@pytest.mark.parametrize("op", sorted(EXAMPLES))
def test_type_rule_predicts_the_kernel(op):
    node = _node_for(op, EXAMPLES[op])
    opdef = get_op(op)
    (predicted,) = opdef.type_rule(node)
    (out,) = opdef.kernel(node, *EXAMPLES[op])
    assert predicted.shape is not None and predicted.dtype is not None, predicted
    assert _conforms(out, predicted), f"{op}: kernel gave {out.dtype}{list(out.shape)}, rule {predicted}"


def test_rules_know_the_dims_that_follow_from_the_inputs():
    node = _node_for("dexport::roi_align", EXAMPLES["dexport::roi_align"])
    assert str(get_op("dexport::roi_align").type_rule(node)[0]) == "f32[5,3,7,6]"
    node = _node_for("dexport::nms", EXAMPLES["dexport::nms"])
    assert str(get_op("dexport::nms").type_rule(node)[0]) == "i64[?]"  # data-dependent
    probs = _node_for("dexport::paste_masks", EXAMPLES["dexport::paste_masks"][:3] + (-1.0,))
    assert str(get_op("dexport::paste_masks").type_rule(probs)[0]) == "f32[3,?,?]"


def test_rule_without_constant_sizes_leaves_them_unknown():
    g = Graph()
    x = g.add_input(TensorType(torch.float32, (1, 3, 8, 8)), "x")
    rois = g.add_input(TensorType(torch.float32, ("K", 5)), "rois")
    size = g.add_input(type_of_constant(7), "size")  # not a constant: unknown to the rule
    scale, ratio, aligned = (g.create_node("prim::Constant", (), [type_of_constant(v)], {"value": v}).output
                             for v in (0.25, 0, True))
    node = g.create_node("dexport::roi_align", [x, rois, scale, size, size, ratio, aligned], [TensorType()])
    assert get_op("dexport::roi_align").type_rule(node) == [TensorType(torch.float32, ("K", 3, "?", "?"))]


def test_type_rules_are_registered_once_and_before_lookup():
    with pytest.raises(DexportError, match="already has a type rule"):
        register_type_rule("dexport::nms.default", lambda node: [TensorType()])
    get_op("aten::relu")
    with pytest.raises(DexportError, match="looked up before its type rule"):
        register_type_rule("aten::relu", lambda node: [TensorType()])
