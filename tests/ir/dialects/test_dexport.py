"""dexport:: detection ops against python-loop references and hand-worked values,
plus registration checks (one trace node, fake kernels, autograd)."""

import math

import pytest
import torch
import torch.nn.functional as F

from dexport.ir.dialects import dexport as ops


def _rand_boxes(n, generator, scale=50.0, max_size=30.0):
    xy = torch.rand(n, 2, generator=generator) * scale
    wh = torch.rand(n, 2, generator=generator) * max_size
    return torch.cat([xy, xy + wh], dim=1)


# --------------------------------------------------------------------------- NMS


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if inter > 0 else 0.0


def _nms_reference(boxes, scores, threshold, classes=None):
    boxes, scores = boxes.tolist(), scores.tolist()
    classes = classes.tolist() if classes is not None else [0] * len(boxes)
    order = sorted(range(len(boxes)), key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        if all(classes[i] != classes[j] or _iou(boxes[i], boxes[j]) <= threshold for j in kept):
            kept.append(i)
    return kept


def test_nms_hand_case_ties_and_ordering():
    boxes = torch.tensor(
        [[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10], [20, 20, 30, 30.0]]
    )
    scores = torch.tensor([0.8, 0.9, 0.5, 0.9, 0.5])
    # 1 and 3 tie at 0.9: 1 (lower index) goes first and suppresses 3 (IoU 0.68) and 0;
    # 2 and 4 tie at 0.5: 2 goes first and suppresses its duplicate 4.
    assert ops.nms(boxes, scores, 0.5).tolist() == [1, 2]
    # A threshold of 0.99 only removes exact duplicates (3 removes 0, 2 removes 4).
    assert ops.nms(boxes, scores, 0.99).tolist() == [1, 3, 2]
    assert ops.nms(boxes, scores, 0.5).dtype == torch.int64


def test_nms_threshold_is_strict():
    # IoU of these two boxes is exactly 1/3 (inter 50, union 150).
    boxes = torch.tensor([[0, 0, 10, 10], [5, 0, 15, 10.0]])
    scores = torch.tensor([1.0, 0.5])
    assert ops.nms(boxes, scores, 1 / 3 + 1e-6).tolist() == [0, 1]
    assert ops.nms(boxes, scores, 0.3).tolist() == [0]


def test_nms_degenerate_and_empty():
    # Zero-area boxes have IoU 0 with everything, even their own duplicates.
    boxes = torch.tensor([[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 0, 10.0]])
    assert ops.nms(boxes, torch.tensor([0.3, 0.2, 0.1]), 0.0).tolist() == [0, 1, 2]
    empty = ops.nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64
    empty = ops.batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.7])
def test_nms_matches_reference(threshold):
    g = torch.Generator().manual_seed(int(threshold * 10))
    # Many boxes (more than one NMS block), coarse scores so that ties are common.
    boxes = _rand_boxes(300, g)
    scores = torch.randint(0, 20, (300,), generator=g).float() / 20
    assert ops.nms(boxes, scores, threshold).tolist() == _nms_reference(boxes, scores, threshold)


def test_nms_long_suppression_chain():
    # Each box overlaps only its neighbours: greedy keeps every other box, a worst
    # case for resolving a block by repeated rounds.
    x = torch.arange(600.0)[:, None]
    boxes = torch.cat([x, x * 0, x + 1.5, x * 0 + 1], dim=1)
    scores = -torch.arange(600.0)
    assert ops.nms(boxes, scores, 0.1).tolist() == list(range(0, 600, 2))


def test_batched_nms_matches_reference():
    g = torch.Generator().manual_seed(3)
    boxes = _rand_boxes(200, g)
    scores = torch.randint(0, 10, (200,), generator=g).float() / 10
    classes = torch.randint(0, 4, (200,), generator=g)
    got = ops.batched_nms(boxes, scores, classes, 0.4).tolist()
    assert got == _nms_reference(boxes, scores, 0.4, classes)
    # Identical boxes in different classes never suppress each other.
    same = torch.tensor([[0, 0, 4, 4.0]] * 3)
    assert ops.batched_nms(same, torch.tensor([0.5, 0.9, 0.5]), torch.tensor([0, 1, 2]), 0.1).tolist() == [1, 0, 2]


# --------------------------------------------------------------------------- RoIAlign


def _bilinear(img, h, w, y, x):
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return (
        (1 - ly) * (1 - lx) * img[y0][x0]
        + (1 - ly) * lx * img[y0][x1]
        + ly * (1 - lx) * img[y1][x0]
        + ly * lx * img[y1][x1]
    )


def _roi_align_reference(feat, rois, scale, oh, ow, sampling_ratio, aligned):
    """torchvision's CPU RoIAlign, one sample at a time."""
    _, channels, h, w = feat.shape
    out = torch.zeros(len(rois), channels, oh, ow, dtype=torch.float64)
    offset = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        sx, sy = x1 * scale - offset, y1 * scale - offset
        rw, rh = x2 * scale - offset - sx, y2 * scale - offset - sy
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / oh, rw / ow
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / oh)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / ow)
        count = max(gh * gw, 1)
        for c in range(channels):
            img = feat[int(b), c].tolist()
            for ph in range(oh):
                for pw in range(ow):
                    acc = 0.0
                    for iy in range(gh):
                        y = sy + ph * bh + (iy + 0.5) * bh / gh
                        for ix in range(gw):
                            x = sx + pw * bw + (ix + 0.5) * bw / gw
                            acc += _bilinear(img, h, w, y, x)
                    out[k, c, ph, pw] = acc / count
    return out


def _ramp(batch=2, channels=2, h=8, w=8):
    """feat[b, c, y, x] = 64·(2b + c) + 8y + x: linear, so bilinear samples are exact."""
    return torch.arange(batch * channels * h * w, dtype=torch.float32).reshape(batch, channels, h, w)


def test_roi_align_hand_values_aligned_and_legacy():
    feat = _ramp()
    rois = torch.tensor([[0, 1.0, 1.0, 5.0, 5.0]])
    # aligned: the roi spans [0.5, 4.5]; bin (0,0) samples y, x ∈ {1, 2} → mean 1.5
    aligned = ops.roi_align(feat, rois, 1.0, 2, 2, 0, True)
    assert aligned[0, 0, 0, 0].item() == pytest.approx(8 * 1.5 + 1.5)
    # legacy: the roi spans [1, 5]; bin (0,0) samples {1.5, 2.5} → mean 2
    legacy = ops.roi_align(feat, rois, 1.0, 2, 2, 0, False)
    assert legacy[0, 0, 0, 0].item() == pytest.approx(8 * 2 + 2)
    # batch index and channel are honoured: image 1, channel 1 adds 64·(2 + 1)
    rois = torch.tensor([[1, 1.0, 1.0, 5.0, 5.0]])
    assert ops.roi_align(feat, rois, 1.0, 2, 2, 0, True)[0, 1, 0, 0].item() == pytest.approx(13.5 + 64 * 3)


def test_roi_align_zero_size_roi():
    feat = _ramp()
    point = torch.tensor([[0, 3.0, 3.0, 3.0, 3.0]])
    # aligned: no samples, the bins are 0; legacy: the roi grows to 1×1 pixel.
    assert ops.roi_align(feat, point, 1.0, 2, 2, 0, True).abs().sum() == 0
    legacy = ops.roi_align(feat, point, 1.0, 1, 1, 0, False)
    assert legacy[0, 0, 0, 0].item() == pytest.approx(8 * 3.5 + 3.5)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_matches_reference(aligned, sampling_ratio):
    g = torch.Generator().manual_seed(7)
    feat = torch.randn(2, 2, 9, 11, generator=g)
    boxes = _rand_boxes(6, g, scale=20.0, max_size=16.0) - 4  # some leave the image
    boxes[1] = torch.tensor([30.0, 30.0, 40.0, 44.0])  # entirely outside
    rois = torch.cat([torch.tensor([0, 1, 0, 1, 1, 0.0])[:, None], boxes], dim=1)
    got = ops.roi_align(feat, rois, 0.5, 3, 2, sampling_ratio, aligned)
    want = _roi_align_reference(feat.double(), rois, 0.5, 3, 2, sampling_ratio, aligned)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_roi_align_empty_and_gradient():
    feat = torch.rand(1, 3, 6, 6)
    assert ops.roi_align(feat, torch.zeros(0, 5), 1.0, 2, 3).shape == (0, 3, 2, 3)
    x = torch.rand(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.3, 1.1, 4.2, 4.7], [1, -2, -1, 8, 5], [1, 2, 2, 2, 2]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: ops.roi_align(t, rois, 1.0, 2, 3, 0, True), (x,))
    assert torch.autograd.gradcheck(lambda t: ops.roi_align(t, rois, 0.5, 2, 2, 2, False), (x,))


# --------------------------------------------------------------------------- box coding


def test_decode_hand_case_and_weights():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    deltas = torch.tensor([[0.1, 0.2, math.log(2.0), 0.0]])
    # centre (5, 10) moves by (0.1·10, 0.2·20) to (6, 14); width doubles to 20
    assert ops.decode_boxes(deltas, boxes).tolist() == [pytest.approx([-4.0, 4.0, 16.0, 24.0])]
    weighted = ops.decode_boxes(deltas * torch.tensor([10.0, 10.0, 5.0, 5.0]), boxes, (10, 10, 5, 5))
    torch.testing.assert_close(weighted, ops.decode_boxes(deltas, boxes))


def test_decode_scale_clamp_and_multiple_classes():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    deltas = torch.tensor([[0.0, 0.0, 100.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    out = ops.decode_boxes(deltas, boxes)
    assert out.shape == (1, 8)
    width = out[0, 2] - out[0, 0]
    assert width.item() == pytest.approx(10 * 1000 / 16)  # exp(log(1000/16)) · 10
    assert out[0, 4:].tolist() == [0.0, 0.0, 10.0, 10.0]
    assert ops.decode_boxes(deltas, boxes, scale_clamp=math.log(2))[0, 2].item() == pytest.approx(15.0)


def test_encode_decode_round_trip():
    g = torch.Generator().manual_seed(5)
    anchors, targets = _rand_boxes(20, g), _rand_boxes(20, g)
    anchors[:, 2:] += 1  # positive sizes
    targets[:, 2:] += 1
    weights = (10.0, 10.0, 5.0, 5.0)
    deltas = ops.encode_boxes(targets, anchors, weights)
    assert deltas.shape == (20, 4)
    torch.testing.assert_close(ops.decode_boxes(deltas, anchors, weights), targets, atol=1e-4, rtol=1e-5)
    assert ops.encode_boxes(anchors, anchors).abs().max() < 1e-6


def test_box_coding_gradients():
    d = torch.rand(3, 8, dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 21], [20, 20, 30, 31]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda d, b: ops.decode_boxes(d, b, (10, 10, 5, 5)), (d, b))
    t = (b + 2).detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda t, b: ops.encode_boxes(t, b, (1, 2, 3, 4)), (t, b))
    assert torch.autograd.gradcheck(lambda b: ops.clip_boxes(b * 2 - 3, torch.tensor([15, 12])), (b,))


def test_clip_boxes():
    boxes = torch.tensor([[-5.0, -5.0, 50.0, 50.0, 1.0, 2.0, 3.0, 4.0], [10, 20, 30, 40, 99, 99, 99, 99]])
    out = ops.clip_boxes(boxes, torch.tensor([25, 35]))
    assert out.tolist() == [[0, 0, 35, 25, 1, 2, 3, 4], [10, 20, 30, 25, 35, 25, 35, 25]]
    assert ops.clip_boxes(boxes, (25, 35)).tolist() == out.tolist()
    assert ops.clip_boxes(torch.zeros(0, 4), (3, 3)).shape == (0, 4)


def test_empty_box_coding():
    empty = torch.zeros(0, 4)
    assert ops.decode_boxes(torch.zeros(0, 12), empty).shape == (0, 12)
    assert ops.encode_boxes(empty, empty).shape == (0, 4)


# --------------------------------------------------------------------------- FPN levels


def test_assign_fpn_levels_boundaries():
    def square(size):
        return [0.0, 0.0, size, size]

    sizes = [0.0, 50.0, 111.9, 112.0, 223.9, 224.0, 447.9, 448.0, 10000.0]
    boxes = torch.tensor([square(s) for s in sizes])
    levels = ops.assign_fpn_levels(boxes, 2, 5, 224, 4)
    # level = floor(4 + log2(size / 224)), clamped to [2, 5], minus 2
    assert levels.tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3]
    assert levels.dtype == torch.int64
    assert ops.assign_fpn_levels(torch.zeros(0, 4), 2, 5).shape == (0,)


# --------------------------------------------------------------------------- mask pasting


def _paste_reference(masks, boxes, h, w):
    """detectron2's full-image paste: grid_sample of each mask over the whole canvas."""
    out = []
    ys = torch.arange(h, dtype=torch.float64) + 0.5
    xs = torch.arange(w, dtype=torch.float64) + 0.5
    for mask, (x0, y0, x1, y1) in zip(masks.double(), boxes.double().tolist()):
        ny = (ys - y0) / (y1 - y0) * 2 - 1
        nx = (xs - x0) / (x1 - x0) * 2 - 1
        grid = torch.stack([nx[None, :].expand(h, w), ny[:, None].expand(h, w)], dim=-1)
        out.append(F.grid_sample(mask[None, None], grid[None], align_corners=False)[0, 0])
    return torch.stack(out)


def test_paste_constant_mask_fills_its_box():
    out = ops.paste_masks(torch.ones(1, 4, 4), torch.tensor([[2.0, 3.0, 6.0, 8.0]]), torch.tensor([10, 12]))
    assert out.dtype == torch.bool and out.shape == (1, 10, 12)
    expected = torch.zeros(10, 12, dtype=torch.bool)
    expected[3:8, 2:6] = True  # pixels whose centres lie inside the box
    assert torch.equal(out[0], expected)


def test_paste_masks_matches_reference_and_edges():
    g = torch.Generator().manual_seed(11)
    masks = torch.rand(5, 7, 6, generator=g)
    boxes = _rand_boxes(5, g, scale=20.0, max_size=15.0) - 3  # some stick out of the image
    boxes[2] = torch.tensor([5.0, 5.0, 5.0, 12.0])  # zero width: pastes nothing
    probs = ops.paste_masks(masks, boxes, (17, 19), threshold=-1.0)
    assert probs.dtype == torch.float32 and probs.shape == (5, 17, 19)
    keep = [0, 1, 3, 4]
    torch.testing.assert_close(probs[keep].double(), _paste_reference(masks[keep], boxes[keep], 17, 19), atol=1e-5, rtol=0)
    assert probs[2].abs().sum() == 0
    binary = ops.paste_masks(masks, boxes, (17, 19), threshold=0.5)
    assert torch.equal(binary, probs >= 0.5)
    assert ops.paste_masks(torch.zeros(0, 7, 6), torch.zeros(0, 4), (17, 19)).shape == (0, 17, 19)


# --------------------------------------------------------------------------- keypoints


def _keypoints_reference(maps, rois):
    """detectron2's heatmaps_to_keypoints with bilinear resizing, one roi at a time."""
    out = torch.zeros(maps.shape[0], maps.shape[1], 4)
    for i, (x0, y0, x1, y1) in enumerate(rois.tolist()):
        w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
        wc, hc = math.ceil(w), math.ceil(h)
        up = F.interpolate(maps[i : i + 1], size=(hc, wc), mode="bilinear", align_corners=False)[0]
        for k in range(maps.shape[1]):
            pos = int(up[k].flatten().argmax())
            yi, xi = divmod(pos, wc)
            logit = up[k, yi, xi]
            score = 1.0 / torch.exp(maps[i, k] - logit).sum()
            out[i, k] = torch.tensor([(xi + 0.5) * w / wc + x0, (yi + 0.5) * h / hc + y0, logit, score])
    return out


def test_keypoints_hand_case():
    maps = torch.zeros(1, 2, 8, 8)
    maps[0, 0, 2, 5] = 10.0
    maps[0, 1, 7, 0] = 10.0
    out = ops.heatmaps_to_keypoints(maps, torch.tensor([[10.0, 20.0, 26.0, 36.0]]))
    # 8×8 → 16×16: the peak at column 5 is shared equally by columns 10 and 11
    # (0.75·10 each); the first maximum wins: x = 10 + 10.5, y = 20 + 4.5.
    # score: softmax of the resized maximum over the 8×8 heatmap pixels
    score = 1 / (math.exp(10 - 5.625) + 63 * math.exp(-5.625))
    assert out[0, 0].tolist() == pytest.approx([20.5, 24.5, 5.625, score], rel=1e-5)
    # a corner peak stays at the corner pixel of the resized map
    assert out[0, 1, :3].tolist() == pytest.approx([10.5, 35.5, 10.0])


def test_keypoints_match_reference():
    g = torch.Generator().manual_seed(13)
    maps = torch.randn(4, 3, 6, 5, generator=g)
    rois = torch.tensor([[0.0, 0.0, 7.3, 9.9], [5.0, 2.0, 5.5, 2.2], [1.0, 1.0, 30.0, 12.0], [3.0, 4.0, 13.0, 24.0]])
    got = ops.heatmaps_to_keypoints(maps, rois)
    torch.testing.assert_close(got, _keypoints_reference(maps, rois), atol=1e-4, rtol=1e-5)
    assert ops.heatmaps_to_keypoints(torch.zeros(0, 17, 56, 56), torch.zeros(0, 4)).shape == (0, 17, 4)


# --------------------------------------------------------------------------- registration


def _shape(img):
    return torch._shape_as_tensor(img)[-2:]


_TRACE_CASES = {
    # name: (function, inputs at trace time, inputs at another size)
    "nms": (
        lambda b, s: ops.nms(b, s, 0.5),
        (_rand_boxes(12, torch.Generator().manual_seed(0)), torch.rand(12)),
        (_rand_boxes(30, torch.Generator().manual_seed(1)), torch.rand(30)),
    ),
    "batched_nms": (
        lambda b, s, c: ops.batched_nms(b, s, c, 0.5),
        (_rand_boxes(12, torch.Generator().manual_seed(0)), torch.rand(12), torch.randint(0, 3, (12,))),
        (_rand_boxes(30, torch.Generator().manual_seed(1)), torch.rand(30), torch.randint(0, 3, (30,))),
    ),
    "roi_align": (
        lambda f, r: ops.roi_align(f, r, 0.5, 3, 3, 0, True),
        (torch.rand(1, 2, 8, 9), torch.tensor([[0, 1.0, 1.0, 9.0, 12.0]])),
        (torch.rand(2, 2, 13, 6), torch.tensor([[1, 0.0, 2.0, 5.0, 22.0], [0, 3.0, 3.0, 4.0, 4.0]])),
    ),
    "decode_boxes": (
        lambda d, b: ops.decode_boxes(d, b, (10.0, 10.0, 5.0, 5.0)),
        (torch.rand(3, 8), torch.tensor([[0, 0, 4, 4.0]] * 3)),
        (torch.rand(5, 8), torch.tensor([[1, 2, 9, 7.0]] * 5)),
    ),
    "encode_boxes": (
        lambda t, b: ops.encode_boxes(t, b),
        (torch.tensor([[0, 0, 4, 4.0]]), torch.tensor([[1, 1, 3, 5.0]])),
        (torch.tensor([[0, 0, 8, 4.0]] * 2), torch.tensor([[1, 1, 3, 9.0]] * 2)),
    ),
    "clip_boxes": (
        lambda img, b: ops.clip_boxes(b, _shape(img)),
        (torch.rand(3, 10, 12), torch.tensor([[-1, 2, 40, 40.0]])),
        (torch.rand(3, 30, 20), torch.tensor([[-1, 2, 40, 40.0], [5, 5, 6, 7]])),
    ),
    "assign_fpn_levels": (
        lambda b: ops.assign_fpn_levels(b, 2, 5, 224, 4),
        (torch.tensor([[0, 0, 100, 100.0]]),),
        (torch.tensor([[0, 0, 500, 500.0], [0, 0, 10, 10]]),),
    ),
    "paste_masks": (
        lambda img, m, b: ops.paste_masks(m, b, _shape(img), 0.5),
        (torch.rand(3, 10, 12), torch.rand(1, 4, 4), torch.tensor([[1, 1, 8, 8.0]])),
        (torch.rand(3, 25, 17), torch.rand(2, 4, 4), torch.tensor([[1, 1, 8, 8.0], [3, 4, 16, 22]])),
    ),
    "heatmaps_to_keypoints": (
        lambda m, r: ops.heatmaps_to_keypoints(m, r),
        (torch.rand(1, 2, 6, 6), torch.tensor([[0, 0, 10, 10.0]])),
        (torch.rand(3, 2, 6, 6), torch.tensor([[0, 0, 10, 10.0], [1, 2, 30, 7], [4, 4, 5, 5]])),
    ),
}


@pytest.mark.parametrize("name", list(_TRACE_CASES))
def test_trace_records_one_node_and_generalizes(name):
    fn, trace_inputs, other_inputs = _TRACE_CASES[name]
    traced = torch.jit.trace(fn, trace_inputs, check_trace=False)
    kinds = [node.kind() for node in traced.graph.nodes()]
    assert kinds.count(f"dexport::{name}") == 1
    # nothing from inside the kernel leaked into the trace
    assert not [k for k in kinds if k.startswith("aten::") and k not in ("aten::_shape_as_tensor", "aten::slice")]
    got, want = traced(*other_inputs), fn(*other_inputs)
    assert got.shape == want.shape
    assert torch.equal(got, want)


def test_trace_with_parameters_keeps_one_roi_align_node():
    """Inside a model (inputs that require grad), the autograd wrapper must not add nodes."""

    class Pool(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 2, 1)

        def forward(self, x, rois):
            return ops.roi_align(self.conv(x), rois, 1.0, 2, 2, 0, True)

    inputs = (torch.rand(1, 2, 8, 8), torch.tensor([[0, 1.0, 1, 6, 6]]))
    traced = torch.jit.trace(Pool(), inputs, check_trace=False)
    assert [n.kind() for n in traced.graph.nodes()].count("dexport::roi_align") == 1
    assert "dexport::_roi_align_backward" not in str(traced.graph)


@pytest.mark.parametrize(
    "name, args",
    [
        ("nms", (torch.tensor([[0, 0, 4, 4.0], [1, 1, 4, 4]]), torch.tensor([0.5, 0.7]), 0.3)),
        ("roi_align", (torch.rand(1, 2, 6, 6, requires_grad=True), torch.tensor([[0, 1.0, 1, 5, 5]]), 1.0, 2, 2, 0, True)),
        ("decode_boxes", (torch.rand(2, 4, requires_grad=True), torch.tensor([[0, 0, 4, 4.0]] * 2), [1.0, 1.0, 2.0, 2.0], 3.0)),
        ("paste_masks", (torch.rand(2, 3, 3), torch.tensor([[0, 0, 4, 4.0]] * 2), torch.tensor([6, 5]), 0.5)),
    ],
)
def test_opcheck(name, args):
    """torch's own consistency checks: schema, fake kernel (data-dependent sizes), autograd."""
    torch.library.opcheck(getattr(torch.ops.dexport, name).default, args)


def test_nms_box_inverted_on_one_axis_is_empty_and_suppresses_nothing():
    boxes = torch.tensor([[50.0, 0.0, 0.0, 100.0],     # x2 < x1: empty, yet a large negative area
                          [200.0, 200.0, 210.0, 210.0]])
    scores = torch.tensor([0.9, 0.8])
    assert ops.nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert ops.batched_nms(boxes, scores, torch.tensor([0, 0]), 0.5).tolist() == [0, 1]
