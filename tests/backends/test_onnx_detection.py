"""ONNX lowerings of the dexport:: detection ops against their torch kernels.

Each op is captured once at one input size, emitted once, and the one ONNX model
is run in onnxruntime on random and edge-case inputs of other sizes (zero boxes
included); the kernel in dexport.ir.dialects.dexport is the reference.
"""

import numpy as np
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper

import dexport
from dexport.backends.onnx import emit_onnx
from dexport.ir.errors import DexportError
from dexport.ir.dialects import dexport as ops


class _Call(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def _session(fn, *example, opset=17):
    """Capture ``fn`` on ``example``, emit ONNX once; returns a runner of that model."""
    graph = dexport.capture(_Call(fn), example)
    assert any(n.op.startswith("dexport::") for n in graph.nodes())
    model = emit_onnx(graph, opset=opset)
    sess = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def run(*xs):
        outs = sess.run(None, {n: x.numpy() for n, x in zip(names, xs)})
        return torch.from_numpy(outs[0])
    return run


def _boxes(n, gen, span=60.0, max_size=30.0):
    xy = torch.rand(n, 2, generator=gen) * span
    wh = torch.rand(n, 2, generator=gen) * max_size
    return torch.cat([xy, xy + wh], dim=1)


# --------------------------------------------------------------------------- NMS

def _nms_cases(gen):
    """(boxes, scores, classes) cases: random, many ties, degenerate boxes, empty."""
    cases = []
    for n in (1, 7, 60, 300):
        boxes = _boxes(n, gen)
        cases.append((boxes, torch.rand(n, generator=gen), torch.randint(0, 4, (n,), generator=gen)))
    # Ties everywhere: scores from 3 values, duplicated boxes.
    boxes = _boxes(40, gen, span=20.0)
    boxes = torch.cat([boxes, boxes[:10]])
    scores = torch.randint(0, 3, (50,), generator=gen).float() / 2
    cases.append((boxes, scores, torch.randint(-2, 2, (50,), generator=gen) * 1000))
    # Zero-area boxes, boxes inverted in both axes, exact IoU == threshold, far-away boxes.
    special = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 5, 9], [5, 5, 5, 5],
                            [10, 10, 0, 0], [8, 8, 2, 2], [0, 0, 20, 10], [0, 0, 10, 10],
                            [-1e4, -1e4, -9990, -9990], [1e5, 1e5, 1e5 + 5, 1e5 + 5]], dtype=torch.float32)
    cases.append((special, torch.tensor([0.9, 0.9, 0.95, 0.99, 0.97, 0.96, 0.5, 0.5, 0.3, 0.2]),
                  torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 0, 0])))
    cases.append((torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64)))
    return cases


@pytest.mark.parametrize("threshold", [0.5, 0.0, 1.0, 2.0])
def test_nms_keeps_the_kernels_indices_in_its_order(threshold):
    gen = torch.Generator().manual_seed(0)
    boxes, scores, _ = _nms_cases(gen)[1]
    run = _session(lambda b, s: ops.nms(b, s, threshold), boxes, scores)
    for boxes, scores, _ in _nms_cases(gen):
        assert torch.equal(run(boxes, scores), ops.nms(boxes, scores, threshold))


@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_batched_nms_keeps_the_kernels_indices_in_its_order(threshold):
    gen = torch.Generator().manual_seed(1)
    boxes, scores, classes = _nms_cases(gen)[2]
    run = _session(lambda b, s, c: ops.batched_nms(b, s, c, threshold), boxes, scores, classes)
    for boxes, scores, classes in _nms_cases(gen):
        expected = ops.batched_nms(boxes, scores, classes, threshold)
        assert torch.equal(run(boxes, scores, classes), expected)


def test_nms_with_a_negative_threshold_is_refused():
    boxes = _boxes(5, torch.Generator().manual_seed(0))
    graph = dexport.capture(_Call(lambda b, s: ops.nms(b, s, -0.1)), (boxes, torch.rand(5)))
    with pytest.raises(DexportError, match="threshold"):
        emit_onnx(graph)


def _ort_single(node, inputs, outputs):
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info(n, t, None) for n, t in inputs],
                              [helper.make_tensor_value_info(n, t, None) for n, t in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_onnxruntime_quirks_the_nms_lowering_relies_on_or_works_around():
    # TopK (sorted) breaks ties by the lower index: the stable order the kernel uses.
    topk = _ort_single(helper.make_node("TopK", ["x", "k"], ["v", "i"], largest=1, sorted=1),
                       [("x", TensorProto.FLOAT), ("k", TensorProto.INT64)],
                       [("v", TensorProto.FLOAT), ("i", TensorProto.INT64)])
    x = np.random.RandomState(0).randint(0, 3, size=500).astype(np.float32)
    idx = topk.run(None, {"x": x, "k": np.array([500], np.int64)})[1]
    assert (idx == np.lexsort((np.arange(500), -x))).all()
    # NonMaxSuppression swaps inverted corners (so the lowering empties such boxes first)
    # and rejects thresholds outside [0, 1] (so the lowering clamps those above 1).
    nms = _ort_single(helper.make_node("NonMaxSuppression", ["b", "s", "m", "t"], ["o"]),
                      [("b", TensorProto.FLOAT), ("s", TensorProto.FLOAT), ("m", TensorProto.INT64),
                       ("t", TensorProto.FLOAT)], [("o", TensorProto.INT64)])
    feed = {"b": np.array([[[2, 2, 0, 0], [0, 0, 2, 2]]], np.float32),
            "s": np.array([[[0.9, 0.8]]], np.float32), "m": np.array([10], np.int64)}
    assert nms.run(None, {**feed, "t": np.array([0.5], np.float32)})[0][:, 2].tolist() == [0]
    with pytest.raises(Exception, match="iou_threshold"):
        nms.run(None, {**feed, "t": np.array([1.5], np.float32)})


# --------------------------------------------------------------------------- RoIAlign

def _rois(k, batch, gen, span=70.0):
    boxes = _boxes(k, gen, span=span, max_size=40.0) - 10.0
    boxes[: k // 4, 2:] = boxes[: k // 4, :2] + torch.rand(k // 4, 2, generator=gen) * 0.9  # < 1 px
    if k >= 8:
        boxes[k // 4] = boxes[k // 4, [0, 1, 0, 1]]                                        # zero size
        boxes[k // 4 + 1] = boxes[k // 4 + 1, [2, 3, 0, 1]]                                # inverted
        boxes[k // 4 + 2] = torch.tensor([200.0, 200.0, 260.0, 230.0])                     # outside
    index = torch.randint(0, batch, (k, 1), generator=gen).float()
    return torch.cat([index, boxes], dim=1)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_matches_the_kernel(aligned, sampling_ratio):
    gen = torch.Generator().manual_seed(2)
    fn = lambda x, r: ops.roi_align(x, r, 0.25, 7, 5, sampling_ratio, aligned)  # noqa: E731
    run = _session(fn, torch.randn(2, 3, 13, 17, generator=gen), _rois(12, 2, gen))
    for batch, channels, height, width, k in [(2, 3, 13, 17, 40), (1, 4, 25, 9, 9), (3, 2, 6, 6, 0)]:
        x = torch.randn(batch, channels, height, width, generator=gen)
        rois = _rois(k, batch, gen, span=4 * max(height, width))
        got, expected = run(x, rois), fn(x, rois)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- box coding

def test_decode_boxes_matches_the_kernel():
    gen = torch.Generator().manual_seed(3)
    weights = (10.0, 10.0, 5.0, 5.0)
    fn = lambda d, b: ops.decode_boxes(d, b, weights)  # noqa: E731
    run = _session(fn, torch.randn(6, 8, generator=gen), _boxes(6, gen))
    for n, k in [(6, 2), (50, 1), (9, 5), (0, 3)]:
        deltas = torch.randn(n, 4 * k, generator=gen) * 3
        if n:
            deltas[0, 2:4] = 100.0  # past the scale clamp
        boxes = _boxes(n, gen)
        torch.testing.assert_close(run(deltas, boxes), fn(deltas, boxes), rtol=1e-6, atol=1e-4)


def test_encode_boxes_matches_the_kernel():
    gen = torch.Generator().manual_seed(4)
    weights = (10.0, 10.0, 5.0, 5.0)
    fn = lambda t, b: ops.encode_boxes(t, b, weights)  # noqa: E731
    run = _session(fn, _boxes(5, gen), _boxes(5, gen))
    for n in (5, 40, 0):
        targets, boxes = _boxes(n, gen), _boxes(n, gen)
        torch.testing.assert_close(run(targets, boxes), fn(targets, boxes), rtol=1e-5, atol=1e-5)


def test_clip_boxes_matches_the_kernel_exactly():
    gen = torch.Generator().manual_seed(5)
    run = _session(lambda b, s: ops.clip_boxes(b, s), torch.randn(4, 8, generator=gen),
                   torch.tensor([30, 40]))
    for n, k, size in [(4, 2, (30, 40)), (25, 1, (17, 90)), (3, 4, (5, 5)), (0, 1, (8, 8))]:
        boxes = torch.randn(n, 4 * k, generator=gen) * 60
        size = torch.tensor(size)
        assert torch.equal(run(boxes, size), ops.clip_boxes(boxes, size))


def test_assign_fpn_levels_matches_the_kernel_exactly():
    gen = torch.Generator().manual_seed(6)
    fn = lambda b: ops.assign_fpn_levels(b, 2, 5)  # noqa: E731
    run = _session(fn, _boxes(10, gen))
    sides = torch.tensor([0.0, 1.0, 55.9, 56.0, 112.0, 224.0, 448.0, 896.0, 1792.0, 3000.0])
    exact = torch.cat([torch.zeros(len(sides), 2), sides[:, None].expand(-1, 2)], dim=1)
    for boxes in (_boxes(300, gen, max_size=900.0), exact, exact[[6, 0]] * torch.tensor([1, 1, 1, -1.0]),
                  torch.zeros(0, 4)):
        assert torch.equal(run(boxes), fn(boxes))


def test_assign_fpn_levels_agrees_just_below_level_boundaries():
    # Square boxes whose side / 256 is a power of two minus a few ulps: a float32
    # ln(x)/ln(2) rounds some of these onto the next level; torch.log2 does not.
    fn = lambda b: ops.assign_fpn_levels(b, 0, 12, 256, 6)  # noqa: E731
    run = _session(fn, _boxes(4, torch.Generator().manual_seed(6)))
    powers = 2.0 ** torch.arange(-6, 7, dtype=torch.float64)
    sides = (256 * powers[:, None] * (1 - torch.arange(0, 48)[None, :] * 2.0 ** -24)).flatten().float()
    boxes = torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), sides, sides], dim=1)
    assert torch.equal(run(boxes), fn(boxes))


# --------------------------------------------------------------------------- masks

def _mask_boxes(n, height, width, gen):
    boxes = _boxes(n, gen, span=max(height, width), max_size=max(height, width) / 2) - 5.0
    if n >= 6:
        boxes[1, 2] = boxes[1, 0]                                   # zero width
        boxes[2] = boxes[2, [2, 3, 0, 1]]                           # inverted
        boxes[3] = torch.tensor([-50.0, -50.0, 1e4, 1e4])           # far bigger than the image
        boxes[4] = torch.tensor([float(width) + 3, 2.0, float(width) + 9, 8.0])  # outside
        boxes[5] = torch.tensor([2.0, 3.0, 2.5, 3.2])               # under one pixel
    return boxes


@pytest.mark.parametrize("threshold", [0.5, -1.0])
def test_paste_masks_matches_the_kernel(threshold):
    gen = torch.Generator().manual_seed(7)
    fn = lambda m, b, s: ops.paste_masks(m, b, s, threshold)  # noqa: E731
    run = _session(fn, torch.rand(3, 14, 14, generator=gen), _mask_boxes(3, 20, 30, gen), torch.tensor([20, 30]))
    for n, m, (height, width) in [(8, 14, (20, 30)), (12, 28, (57, 41)), (0, 28, (9, 13))]:
        masks = torch.rand(n, m, m, generator=gen)
        boxes = _mask_boxes(n, height, width, gen)
        size = torch.tensor([height, width])
        got, expected = run(masks, boxes, size), fn(masks, boxes, size)
        assert got.shape == expected.shape and got.dtype == expected.dtype
        if threshold >= 0:
            assert torch.equal(got, expected)
        else:
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- keypoints

def _keypoint_rois(n, gen):
    rois = _boxes(n, gen, span=100.0, max_size=60.0)
    if n >= 3:
        rois[1, 2:] = rois[1, :2] + 0.3     # smaller than one pixel
        rois[2, 2:] = rois[2, :2] + 17.0    # integral size
    return rois


def test_heatmaps_to_keypoints_matches_the_kernel():
    gen = torch.Generator().manual_seed(8)
    run = _session(ops.heatmaps_to_keypoints, torch.randn(2, 3, 8, 8, generator=gen), _keypoint_rois(2, gen))
    for n, k, size in [(5, 3, 8), (9, 17, 14), (0, 4, 8)]:
        maps = torch.randn(n, k, size, size, generator=gen) * 4
        if n:
            maps[0, 0] = 1.0  # all pixels tie: the first one wins
        rois = _keypoint_rois(n, gen)
        got, expected = run(maps, rois), ops.heatmaps_to_keypoints(maps, rois)
        assert got.shape == expected.shape
        # Same resize matrices and first maximum: same locations and logits; the
        # score's Exp/ReduceSum may differ from torch's by a few ulps.
        torch.testing.assert_close(got[..., :3], expected[..., :3], rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(got[..., 3], expected[..., 3], rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- opsets

def _all_ops(boxes, scores, classes, features, masks, maps, size):
    rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)
    return (ops.nms(boxes, scores, 0.5), ops.batched_nms(boxes, scores, classes, 0.5),
            ops.roi_align(features, rois, 0.5, 3, 3, 0, True), ops.decode_boxes(boxes, boxes),
            ops.encode_boxes(boxes + 1, boxes + 0.5), ops.clip_boxes(boxes, size),
            ops.assign_fpn_levels(boxes, 2, 5), ops.paste_masks(masks, boxes, size),
            ops.heatmaps_to_keypoints(maps, boxes))


@pytest.mark.parametrize("opset", [18, 21])
def test_every_lowering_at_newer_opsets(opset):
    gen = torch.Generator().manual_seed(9)

    def inputs(n):
        return (_boxes(n, gen, span=20.0, max_size=10.0), torch.rand(n, generator=gen),
                torch.randint(0, 3, (n,), generator=gen), torch.randn(1, 2, 10, 15, generator=gen),
                torch.rand(n, 6, 6, generator=gen), torch.randn(n, 2, 5, 5, generator=gen), torch.tensor([20, 30]))

    graph = dexport.capture(_Call(_all_ops), inputs(6))
    model = emit_onnx(graph, opset=opset)
    sess = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (9, 0):
        xs = inputs(n)
        got = sess.run(None, {i.name: x.numpy() for i, x in zip(sess.get_inputs(), xs)})
        for g, e in zip(got, _all_ops(*xs)):
            torch.testing.assert_close(torch.from_numpy(g), e, rtol=1e-5, atol=1e-5)
