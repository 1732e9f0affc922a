"""RetinaNet, Cascade Mask R-CNN, PointRend and PanopticFPN: output structure, training
losses, traced-vs-eager parity at another resolution, and the panoptic merge rule."""
from __future__ import annotations

import dataclasses
import math
import os
import warnings

import pytest
import torch

from dexport.models import zoo
from dexport.models.data import ShapesDataset
from dexport.models.panoptic import (
    PanopticFPN, combine_semantic_and_instance_outputs, segments_info_as_list,
)
from dexport.models.pointrend import (
    PointRendMaskHead, point_sample, regular_grid_points, sample_roi_points,
)
from dexport.ir.dialects.structures import Boxes, Instances

TINY = ["retinanet_tiny", "cascade_mask_rcnn_tiny", "pointrend_tiny", "panoptic_fpn_tiny"]
R50 = ["retinanet_R50_FPN", "cascade_mask_rcnn_R50_FPN", "pointrend_R50_FPN",
       "panoptic_fpn_R50_FPN"]
HAS_MASKS = {"cascade_mask_rcnn_tiny", "pointrend_tiny", "panoptic_fpn_tiny"}


def _images(size, count, start=0):
    data = ShapesDataset("val", start + count, image_size=size)
    return [data[i] for i in range(start, start + count)]


_MODELS: dict[str, torch.nn.Module] = {}


def _model(name: str) -> torch.nn.Module:
    """Each zoo model once per session (eval mode); tests must not mutate it."""
    if name not in _MODELS:
        _MODELS[name] = zoo.get(name, weights=None)
    return _MODELS[name].eval()


def _panoptic_with_instances() -> PanopticFPN:
    """panoptic_fpn_tiny, but keeping instances of any score in the merge: the untrained
    model's scores are all below the default 0.5, which would leave only stuff."""
    cfg = dataclasses.replace(zoo.config("panoptic_fpn_tiny"), instances_score_thresh=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return PanopticFPN(cfg).eval()


def _check_instances(inst: Instances, height: int, width: int, with_masks: bool,
                     num_classes: int = 3) -> None:
    assert inst.image_size == (height, width)
    n = len(inst)
    assert isinstance(inst.pred_boxes, Boxes) and inst.pred_boxes.tensor.shape == (n, 4)
    assert inst.scores.shape == (n,) and inst.pred_classes.dtype == torch.int64
    assert (inst.pred_classes >= 0).all() and (inst.pred_classes < num_classes).all()
    boxes = inst.pred_boxes.tensor
    assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= width).all()
    assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= height).all()
    assert (inst.scores[:-1] >= inst.scores[1:]).all()  # best first
    if with_masks:
        assert inst.pred_masks.dtype == torch.bool and inst.pred_masks.shape == (n, height, width)
    else:
        assert not inst.has("pred_masks")


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("batch,size", [(1, (128, 128)), (2, (96, 160))])
def test_tiny_eager_outputs(name, batch, size):
    inputs = [{"image": d["image"]} for d in _images(size, batch)]
    if batch == 2:
        inputs[1]["height"], inputs[1]["width"] = 64, 80  # rescaled output for the second image
    with torch.no_grad():
        outputs = _model(name)(inputs)
    assert len(outputs) == batch
    for out, inp in zip(outputs, inputs):
        h, w = inp.get("height", size[0]), inp.get("width", size[1])
        _check_instances(out["instances"], h, w, name in HAS_MASKS)
        assert len(out["instances"]) > 0, "untrained tiny models must still detect something"
        if name == "panoptic_fpn_tiny":
            assert out["sem_seg"].shape == (3, h, w)
            seg, info = out["panoptic_seg"]
            assert seg.dtype == torch.int32 and seg.shape == (h, w)
            assert sorted(info) == sorted(["id", "category_id", "isthing", "score", "area",
                                           "instance_id"])
            assert len({v.shape[0] for v in info.values()}) == 1
            # Every id in the map has its segment, with the right area.
            for seg_id, area in zip(info["id"].tolist(), info["area"].tolist()):
                assert (seg == seg_id).sum().item() == area
            assert set(seg.unique().tolist()) <= set(info["id"].tolist()) | {0}
        else:
            assert sorted(out) == ["instances"]


def test_zoo_names_and_determinism():
    names = zoo.names()
    for name in TINY + R50:
        assert name in names
    a = zoo.get("retinanet_tiny", weights=None).state_dict()
    b = zoo.get("retinanet_tiny", weights=None).state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def _training_inputs(n=2):
    """Training batches; also seeds torch's generator, which the proposal sampling and
    PointRend's training points draw from, so the test sees the same losses every run."""
    torch.manual_seed(0)
    return _images((128, 128), n, start=3)


def test_retinanet_training_losses():
    model = zoo.get("retinanet_tiny", weights=None).train()
    losses = model(_training_inputs())
    assert sorted(losses) == ["loss_box_reg", "loss_cls"]
    for value in losses.values():
        assert value.dim() == 0 and torch.isfinite(value) and value > 0
    sum(losses.values()).backward()
    head = model.head
    for p in (head.cls_score.weight, head.bbox_pred.weight, head.cls_subnet[0].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # An image without objects trains the background only.
    empty = _training_inputs(1)[0]
    empty["instances"] = empty["instances"][torch.zeros(len(empty["instances"]), dtype=torch.bool)]
    losses = model([empty])
    assert losses["loss_box_reg"] == 0 and torch.isfinite(losses["loss_cls"])


def test_retinanet_focal_loss_lowers_with_training():
    """A few SGD steps on one batch must reduce the loss (the losses are wired to the
    right outputs)."""
    model = zoo.get("retinanet_tiny", weights=None).train()
    batch = _training_inputs(1)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01,
                          momentum=0.9)
    model.loss_normalizer_momentum = 0.0  # normalize by this batch: comparable losses
    first = None
    for _ in range(4):
        loss = sum(model(batch).values())
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


@pytest.mark.parametrize("name", ["cascade_mask_rcnn_tiny", "pointrend_tiny",
                                  "panoptic_fpn_tiny"])
def test_training_losses(name):
    model = zoo.get(name, weights=None).train()
    losses = model(_training_inputs(1))
    expected = {
        "cascade_mask_rcnn_tiny": {f"loss_{k}_stage{s}" for k in ("cls", "box_reg")
                                   for s in range(3)} | {"loss_mask"},
        "pointrend_tiny": {"loss_cls", "loss_box_reg", "loss_mask", "loss_mask_point"},
        "panoptic_fpn_tiny": {"loss_cls", "loss_box_reg", "loss_mask", "loss_sem_seg"},
    }[name] | {"loss_rpn_cls", "loss_rpn_loc"}
    assert set(losses) == expected
    for value in losses.values():
        assert value.dim() == 0 and torch.isfinite(value)
    sum(losses.values()).backward()


# ---- tracing ------------------------------------------------------------------------


class _Flatten(torch.nn.Module):
    """Images in, every output tensor out (in a fixed order): what a tracer needs."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *images):
        outputs = self.model([{"image": image} for image in images])
        flat = []
        for out in outputs:
            for value in out["instances"].get_fields().values():
                flat.append(value.tensor if isinstance(value, Boxes) else value)
            if "sem_seg" in out:
                seg, info = out["panoptic_seg"]
                flat += [out["sem_seg"], seg] + [info[k] for k in sorted(info)]
        return tuple(flat)


def _retinanet_with_spread_scores() -> torch.nn.Module:
    """retinanet_tiny's untrained scores all equal the prior; spread them (He-init class
    subnet) and lower them (bias) so that the score threshold and top-k really select."""
    model = zoo.get("retinanet_tiny", weights=None)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in [*model.head.cls_subnet, model.head.cls_score]:
            if isinstance(layer, torch.nn.Conv2d):
                std = (2.0 / layer.weight[0].numel()) ** 0.5
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * std)
        model.head.cls_score.bias.fill_(-5.5)
    return model


@pytest.mark.parametrize("name,batch", [("retinanet_tiny", 2), ("cascade_mask_rcnn_tiny", 1),
                                        ("pointrend_tiny", 2), ("panoptic_fpn_tiny", 1)])
def test_trace_matches_eager_at_another_resolution(name, batch):
    if name == "panoptic_fpn_tiny":
        model = _panoptic_with_instances()
    elif name == "retinanet_tiny":
        model = _retinanet_with_spread_scores()
    else:
        model = zoo.get(name, weights=None)
    adapter = _Flatten(model)
    trace_inputs = tuple(d["image"] for d in _images((128, 96), batch))
    other_inputs = tuple(d["image"] for d in _images((100, 140), batch, start=2))
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        traced = torch.jit.trace(adapter, trace_inputs, check_trace=False)
        expected = adapter(*other_inputs)
        got = traced(*other_inputs)
    # No python value taken from a tensor in the zoo's code (torch's own GroupNorm size
    # check warns harmlessly, so only warnings raised from models/ count).
    models_dir = os.path.dirname(zoo.__file__)
    suspicious = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
                  if issubclass(w.category, torch.jit.TracerWarning)
                  and w.filename.startswith(models_dir)]
    assert not suspicious
    assert len(got) == len(expected)
    assert expected[1].numel() > 0  # some detections on the first image
    for e, g in zip(expected, got):
        assert e.shape == g.shape and e.dtype == g.dtype
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
    if name == "retinanet_tiny":
        # Not every candidate passes the threshold: the count must be data-dependent.
        counts = [expected[1].numel(), expected[4].numel()]
        assert min(counts) < 50 and counts[0] != counts[1]


# ---- panoptic merge -----------------------------------------------------------------


def _merge_case():
    h, w = 6, 8
    masks = torch.zeros(4, h, w, dtype=torch.bool)
    masks[0, 0:3, 0:4] = True  # score .6, half hidden by instance 1 -> kept (0.5 is allowed)
    masks[1, 0:3, 2:6] = True  # score .9, ranks first
    masks[2, 4:6, 0:2] = True  # score .3, below the instance threshold
    masks[3, 0:2, 3:6] = True  # score .7, fully inside instance 1 -> dropped
    instances = Instances((h, w), pred_masks=masks, scores=torch.tensor([0.6, 0.9, 0.3, 0.7]),
                          pred_classes=torch.tensor([0, 2, 1, 1]))
    sem = torch.zeros(3, h, w)  # label 0 ("things") everywhere unless set below
    sem[1, :3, :] = 5.0  # stuff 1 on the top half
    sem[2, 3:, 4:] = 5.0  # stuff 2 on the bottom right
    return instances, sem


def test_panoptic_merge_hand_made_case():
    instances, sem = _merge_case()
    seg, info = combine_semantic_and_instance_outputs(instances, sem, overlap_threshold=0.5,
                                                      stuff_area_thresh=4,
                                                      instances_score_thresh=0.5)
    expected = torch.tensor([
        [2, 2, 1, 1, 1, 1, 3, 3],
        [2, 2, 1, 1, 1, 1, 3, 3],
        [2, 2, 1, 1, 1, 1, 3, 3],
        [0, 0, 0, 0, 4, 4, 4, 4],  # bottom left: "things" label, no instance -> void
        [0, 0, 0, 0, 4, 4, 4, 4],
        [0, 0, 0, 0, 4, 4, 4, 4],
    ], dtype=torch.int32)
    assert torch.equal(seg, expected)
    assert info["id"].tolist() == [1, 2, 3, 4]
    assert info["isthing"].tolist() == [True, True, False, False]
    assert info["category_id"].tolist() == [2, 0, 1, 2]
    assert info["instance_id"].tolist() == [1, 0, -1, -1]
    assert info["area"].tolist() == [12, 6, 6, 12]
    assert info["score"][:2].tolist() == pytest.approx([0.9, 0.6])
    assert ((info["score"][2:] > 0.9) & (info["score"][2:] <= 1)).all()  # mean stuff prob
    assert segments_info_as_list(info) == [
        {"id": 1, "isthing": True, "score": pytest.approx(0.9), "category_id": 2,
         "instance_id": 1},
        {"id": 2, "isthing": True, "score": pytest.approx(0.6), "category_id": 0,
         "instance_id": 0},
        {"id": 3, "isthing": False, "category_id": 1, "area": 6},
        {"id": 4, "isthing": False, "category_id": 2, "area": 12},
    ]


def test_panoptic_merge_thresholds_and_empty():
    instances, sem = _merge_case()
    # A stricter overlap threshold drops instance 0 too; its pixels fall to stuff 1.
    seg, info = combine_semantic_and_instance_outputs(instances, sem, overlap_threshold=0.4,
                                                      stuff_area_thresh=4,
                                                      instances_score_thresh=0.5)
    assert info["instance_id"].tolist() == [1, -1, -1]
    assert (seg[:3, :2] == 2).all() and info["area"].tolist() == [12, 12, 12]
    # A large stuff limit leaves the small stuff segment void.
    seg, info = combine_semantic_and_instance_outputs(instances, sem, stuff_area_thresh=10)
    assert info["category_id"].tolist() == [2, 0, 2] and (seg[:3, 6:] == 0).all()
    # No instances at all: only stuff.
    none = instances[torch.zeros(4, dtype=torch.bool)]
    seg, info = combine_semantic_and_instance_outputs(none, sem, stuff_area_thresh=4)
    assert info["isthing"].tolist() == [False, False]
    assert info["area"].tolist() == [24, 12] and (seg[3:, :4] == 0).all()


def _sequential_merge(instances, sem, overlap_threshold, stuff_area_thresh, score_thresh):
    """detectron2's merge, one instance at a time: an instance is skipped when more than
    ``overlap_threshold`` of its mask is already painted by *kept* instances."""
    labels = sem.argmax(dim=0)
    seg = torch.zeros(labels.shape, dtype=torch.int32)
    rows = []
    order = torch.sort(instances.scores, descending=True, stable=True).indices.tolist()
    for i in order:
        score = instances.scores[i].item()
        mask = instances.pred_masks[i]
        area = mask.sum().item()
        if score < score_thresh or area == 0:
            continue
        if (mask & (seg > 0)).sum().item() / area > overlap_threshold:
            continue
        seg[mask & (seg == 0)] = len(rows) + 1
        rows.append((len(rows) + 1, True, instances.pred_classes[i].item(), i))
    for label in range(1, sem.shape[0]):
        mask = (labels == label) & (seg == 0)
        if mask.sum().item() >= stuff_area_thresh:
            seg[mask] = len(rows) + 1
            rows.append((len(rows) + 1, False, label, -1))
    return seg, rows


def test_panoptic_merge_matches_sequential_rule_when_drops_do_not_overlap():
    """Random cases against detectron2's sequential rule: identical whenever no dropped
    candidate overlaps a lower-ranked one (the documented difference), and such cases
    are not rare."""
    gen = torch.Generator().manual_seed(0)
    compared = 0
    for _ in range(150):
        n = int(torch.randint(0, 6, (1,), generator=gen))
        masks = torch.zeros(n, 12, 12, dtype=torch.bool)
        for k in range(n):
            y0, x0 = torch.randint(0, 10, (2,), generator=gen).tolist()
            h, w = torch.randint(1, 8, (2,), generator=gen).tolist()
            masks[k, y0:y0 + h, x0:x0 + w] = True
        scores = torch.rand(n, generator=gen)
        instances = Instances((12, 12), pred_masks=masks, scores=scores,
                              pred_classes=torch.randint(0, 3, (n,), generator=gen))
        sem = torch.randn(3, 3, 3, generator=gen).repeat_interleave(4, 1).repeat_interleave(4, 2)
        seg, info = combine_semantic_and_instance_outputs(
            instances, sem, overlap_threshold=0.5, stuff_area_thresh=10,
            instances_score_thresh=0.3)
        ranked = torch.sort(scores, descending=True, stable=True).indices.tolist()
        kept = set(info["instance_id"].tolist())
        candidates = [i for i in ranked if scores[i] >= 0.3 and masks[i].any()]
        dropped = [i for i in candidates if i not in kept]
        if any((masks[d] & masks[j]).any() for d in dropped
               for j in candidates[candidates.index(d) + 1:]):
            continue
        compared += 1
        ref_seg, ref_rows = _sequential_merge(instances, sem, 0.5, 10, 0.3)
        assert torch.equal(seg, ref_seg)
        rows = list(zip(info["id"].tolist(), info["isthing"].tolist(),
                        info["category_id"].tolist(), info["instance_id"].tolist()))
        assert rows == ref_rows
        assert info["area"].tolist() == [(seg == i).sum().item() for i in info["id"].tolist()]
    assert compared > 100


# ---- PointRend pieces -----------------------------------------------------------------


def test_point_sample_reads_cell_centres():
    side = 4
    grid = torch.arange(side * side, dtype=torch.float32).reshape(1, 1, side, side)
    points = regular_grid_points(side, 1)
    assert torch.allclose(point_sample(grid, points), grid.flatten(2))
    # ROI-relative sampling over a stride-2 map equals plain sampling of the box region.
    feature = torch.randn(2, 3, 8, 8)
    rois = torch.tensor([[1.0, 0.0, 0.0, 8.0, 8.0], [0.0, 8.0, 8.0, 16.0, 16.0]])
    out = sample_roi_points(feature, 2, rois, regular_grid_points(4, 2))
    assert torch.allclose(out[0], feature[1, :, :4, :4].flatten(1))
    assert torch.allclose(out[1], feature[0, :, 4:, 4:].flatten(1))


def test_pointrend_mask_resolution():
    model = _model("pointrend_tiny")
    cfg = zoo.config("pointrend_tiny")
    with torch.no_grad():
        results = model.inference([{"image": _images((128, 128), 1)[0]["image"]}],
                                  do_postprocess=False)
    side = cfg.coarse_side * 2 ** cfg.subdivision_steps
    assert results[0].pred_masks.shape[1:] == (1, side, side)
    probs = results[0].pred_masks
    assert ((probs >= 0) & (probs <= 1)).all()


def test_pointrend_r50_subdivision_schedule():
    """detectron2's schedule: 7 -> 14 is skipped (784 points would cover 14x14 and the
    next step re-predicts all 28x28 cells anyway), then 28, 56, 112, 224."""
    cfg = zoo.config("pointrend_R50_FPN")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        head = PointRendMaskHead(cfg, 8, 4).eval()
    feature = torch.randn(2, 8, 16, 20)
    rois = torch.tensor([[0.0, 4, 4, 40, 30], [1.0, 10, 0, 70, 60], [1.0, 0, 0, 80, 64]])
    classes = torch.tensor([3, 0, 79])
    calls = []
    original = head.point_logits

    def spy(feature, rois, coarse, points):
        calls.append(points.shape[1])
        return original(feature, rois, coarse, points)

    head.point_logits = spy
    with torch.no_grad():
        logits = head(feature, rois, classes)
    assert logits.shape == (3, 1, 224, 224)
    assert calls == [784, 784, 784, 784]


# ---- full-size -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", R50)
def test_r50_smoke(name):
    model = zoo.get(name, weights=None)
    inputs = [{"image": d["image"]} for d in _images((160, 192), 1)]
    with torch.no_grad():
        outputs = model(inputs)
    assert len(outputs) == 1
    _check_instances(outputs[0]["instances"], 160, 192, "retinanet" not in name, 80)
    if "panoptic" in name:
        assert outputs[0]["sem_seg"].shape == (54, 160, 192)
        assert outputs[0]["panoptic_seg"][0].shape == (160, 192)
    assert not math.isnan(sum(p.sum().item() for p in model.parameters()))
