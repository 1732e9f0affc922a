"""Backbone, RPN, ROI heads and the R-CNN zoo entries: eager structure, training, tracing."""
from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch
from torch import nn

from dexport.models import zoo
from dexport.models.backbone import BackboneConfig, FrozenBatchNorm2d, build_backbone
from dexport.models.data import ShapesDataset
from dexport.models.postprocess import detector_postprocess
from dexport.models.rcnn import GeneralizedRCNN, RCNNConfig
from dexport.models.roi_heads import keypoints_to_heatmap_targets
from dexport.models.rpn import AnchorGenerator, match_labels, sample_labels
from dexport.ir.dialects.structures import Boxes, Instances

TINY = ["faster_rcnn_tiny", "mask_rcnn_tiny", "keypoint_rcnn_tiny"]
R50 = ["faster_rcnn_R50_FPN", "mask_rcnn_R50_FPN", "keypoint_rcnn_R50_FPN"]


@pytest.fixture(scope="module")
def tiny_models():
    return {name: zoo.get(name, weights=None) for name in TINY}


def _dataset(name: str, **kwargs) -> ShapesDataset:
    return ShapesDataset("val", num_images=4, keypoints_only=name.startswith("keypoint"), **kwargs)


def _check_instances(inst: Instances, name: str, height: int, width: int, cfg: RCNNConfig):
    n = len(inst)
    assert n > 0, "an untrained tiny model must still detect something"
    assert inst.image_size == (height, width)
    boxes = inst.pred_boxes.tensor
    assert boxes.shape == (n, 4) and boxes.dtype == torch.float32
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= height).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert inst.scores.shape == (n,) and (inst.scores > cfg.roi_heads.score_thresh).all()
    assert (inst.scores[:-1] >= inst.scores[1:]).all()  # sorted by score
    assert inst.pred_classes.dtype == torch.int64
    assert ((inst.pred_classes >= 0) & (inst.pred_classes < cfg.roi_heads.num_classes)).all()
    expected = {"pred_boxes", "scores", "pred_classes"}
    if cfg.roi_heads.mask_on:
        expected.add("pred_masks")
        assert inst.pred_masks.shape == (n, height, width)
        assert inst.pred_masks.dtype == torch.bool
    if cfg.roi_heads.keypoint_on:
        expected.add("pred_keypoints")
        assert inst.pred_keypoints.shape == (n, cfg.roi_heads.num_keypoints, 3)
        assert torch.isfinite(inst.pred_keypoints).all()
    assert set(inst.fields) == expected


# ---- backbone --------------------------------------------------------------------------

def test_frozen_batchnorm_matches_eval_batchnorm():
    bn = nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.copy_(torch.randn(4))
        bn.running_var.copy_(torch.rand(4) + 0.5)
    frozen = FrozenBatchNorm2d(4)
    frozen.load_state_dict({k: v for k, v in bn.state_dict().items() if k != "num_batches_tracked"})
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(frozen(x), bn(x))
    assert not list(frozen.parameters())


def test_tiny_fpn_levels_and_trace_at_other_resolution():
    torch.manual_seed(0)
    fpn = build_backbone(BackboneConfig.tiny()).eval()
    assert fpn.out_strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    out = fpn(torch.randn(1, 3, 64, 96))
    assert list(out) == fpn.out_features
    for name, stride in fpn.out_strides.items():
        assert out[name].shape == (1, fpn.out_channels, 64 // stride or 1, math.ceil(96 / stride))
    traced = torch.jit.trace(fpn, torch.randn(1, 3, 64, 96), check_trace=False, strict=False)
    x = torch.randn(2, 3, 128, 32)
    expected, got = fpn(x), traced(x)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name])


def test_r50_backbone_freezes_stem_and_res2():
    fpn = build_backbone(BackboneConfig())
    frozen = {n for n, p in fpn.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("bottom_up.stem", "bottom_up.res2")) for n in frozen)
    assert len(fpn.bottom_up.res4) == 6


# ---- anchors, matching, sampling -------------------------------------------------------

def test_anchor_grid_follows_feature_shape():
    gen = AnchorGenerator((32, 64), (0.5, 1.0, 2.0), (4, 8))
    a2, a3 = gen([torch.zeros(1, 1, 3, 5), torch.zeros(1, 1, 2, 2)])
    assert a2.shape == (3 * 5 * 3, 4) and a3.shape == (2 * 2 * 3, 4)
    areas = (a2[:, 2] - a2[:, 0]) * (a2[:, 3] - a2[:, 1])
    torch.testing.assert_close(areas, torch.full_like(areas, 32.0 * 32))
    centers = ((a2[:, :2] + a2[:, 2:]) / 2).reshape(3, 5, 3, 2)
    assert centers[1, 4, 0].tolist() == [16.0, 4.0]  # row 1, column 4 of a stride-4 grid
    assert not dict(gen.state_dict())  # derived from the config, not weights


def test_match_labels_thresholds_and_low_quality():
    iou = torch.tensor([[0.8, 0.5, 0.1, 0.0],
                        [0.1, 0.2, 0.25, 0.0]])
    idx, labels = match_labels(iou, (0.3, 0.7), allow_low_quality=False)
    assert labels.tolist() == [1, -1, 0, 0] and idx[:2].tolist() == [0, 0]
    idx, labels = match_labels(iou, (0.3, 0.7), allow_low_quality=True)
    assert labels.tolist() == [1, -1, 1, 0] and idx[2].item() == 1
    idx, labels = match_labels(torch.zeros(0, 3), (0.5, 0.5), allow_low_quality=False)
    assert labels.tolist() == [0, 0, 0]


def test_sample_labels_respects_budget_and_fraction():
    torch.manual_seed(0)
    labels = torch.tensor([3] * 10 + [-1] * 5 + [1] * 10 + [0] * 2)
    pos, neg = sample_labels(labels, batch_size=8, positive_fraction=0.25, background=3)
    assert pos.numel() == 2 and neg.numel() == 6
    assert (labels[pos] != 3).all() and (labels[pos] != -1).all() and (labels[neg] == 3).all()
    pos, neg = sample_labels(torch.tensor([1, 0, -1]), batch_size=8, positive_fraction=0.5)
    assert pos.tolist() == [0] and neg.tolist() == [1]


def test_keypoint_heatmap_targets():
    rois = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    kps = torch.tensor([[[5.0, 5.0, 2.0], [10.0, 20.0, 1.0], [3.0, 3.0, 0.0], [11.0, 1.0, 2.0]]])
    index, valid = keypoints_to_heatmap_targets(kps, rois, 4)
    assert valid.tolist() == [[True, True, False, False]]
    assert index[0, :2].tolist() == [1 * 4 + 2, 3 * 4 + 3]


# ---- full models: eager ----------------------------------------------------------------

@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("size", [(128, 128), (96, 150)])
@pytest.mark.parametrize("batch", [1, 2])
def test_tiny_eager_output_structure(tiny_models, name, size, batch):
    model = tiny_models[name]
    data = _dataset(name, image_size=size)
    inputs = [{"image": data[i]["image"]} for i in range(batch)]
    with torch.no_grad():
        outputs = model(inputs)
    assert isinstance(outputs, list) and len(outputs) == batch
    for out in outputs:
        assert list(out) == ["instances"]
        _check_instances(out["instances"], name, *size, zoo.config(name))


def test_output_resolution_follows_height_width(tiny_models):
    model = tiny_models["mask_rcnn_tiny"]
    image = _dataset("mask_rcnn_tiny", image_size=(64, 96))[0]["image"]
    with torch.no_grad():
        plain = model([{"image": image}])[0]["instances"]
        big = model([{"image": image, "height": 128, "width": 192}])[0]["instances"]
    _check_instances(big, "mask_rcnn_tiny", 128, 192, zoo.config("mask_rcnn_tiny"))
    torch.testing.assert_close(big.pred_boxes.tensor, plain.pred_boxes.tensor * 2)


def test_detector_postprocess_scales_keypoints_and_drops_empty_boxes():
    inst = Instances((10, 20), pred_boxes=Boxes(torch.tensor([[1.0, 1, 5, 5], [25.0, 1, 30, 5]])),
                     scores=torch.tensor([0.9, 0.8]),
                     pred_keypoints=torch.tensor([[[2.0, 3.0, 0.5]], [[26.0, 2.0, 0.1]]]))
    out = detector_postprocess(inst, 20, 60)
    assert len(out) == 1 and out.image_size == (20, 60)
    assert out.pred_boxes.tensor.tolist() == [[3.0, 2.0, 15.0, 10.0]]
    assert out.pred_keypoints.tolist() == [[[6.0, 6.0, 0.5]]]


def test_preprocess_pads_to_size_divisibility(tiny_models):
    model = tiny_models["faster_rcnn_tiny"]
    images = model.preprocess_image([{"image": torch.zeros(3, 40, 70)},
                                     {"image": torch.zeros(3, 65, 20)}])
    assert images.tensor.shape == (2, 3, 96, 96)
    assert images.image_sizes == [(40, 70), (65, 20)]


# ---- training --------------------------------------------------------------------------

@pytest.mark.parametrize("name", TINY)
def test_tiny_training_losses_and_sgd_step(name):
    model = zoo.get(name, weights=None).train()
    data = ShapesDataset("train", num_images=2, keypoints_only=name.startswith("keypoint"))
    batch = [data[0], data[1]]
    torch.manual_seed(0)
    losses = model(batch)
    expected = {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
    expected |= {"mask_rcnn_tiny": {"loss_mask"}, "keypoint_rcnn_tiny": {"loss_keypoint"}}.get(
        name, set())
    assert set(losses) == expected
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    sum(losses.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, params))
    losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())


def test_training_without_instances_is_an_error():
    model = zoo.get("faster_rcnn_tiny", weights=None).train()
    with pytest.raises(ValueError, match="instances"):
        model([{"image": torch.zeros(3, 64, 64)}])


def test_training_with_an_image_without_objects():
    model = zoo.get("mask_rcnn_tiny", weights=None).train()
    data = ShapesDataset("train", num_images=1)
    empty = {"image": torch.zeros(3, 64, 64),
             "instances": Instances((64, 64), gt_boxes=Boxes(torch.zeros(0, 4)),
                                    gt_classes=torch.zeros(0, dtype=torch.int64),
                                    gt_masks=torch.zeros(0, 64, 64, dtype=torch.bool))}
    losses = model([data[0], empty])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


# ---- tracing ---------------------------------------------------------------------------

class _FlattenAdapter(nn.Module):
    """images as positional tensors in; per-image result fields as a flat tuple out."""

    FIELDS = ("pred_boxes", "scores", "pred_classes", "pred_masks", "pred_keypoints")

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *images):
        flat = []
        for out in self.model([{"image": image} for image in images]):
            inst = out["instances"]
            for field in self.FIELDS:
                if inst.has(field):
                    value = inst.get(field)
                    flat.append(value.tensor if field == "pred_boxes" else value)
        return tuple(flat)


# Batch 2 of Faster R-CNN is covered by Mask R-CNN's (same box path).
@pytest.mark.parametrize("name, batch", [(name, 1) for name in TINY] + [
    ("mask_rcnn_tiny", 2), ("keypoint_rcnn_tiny", 2)])
def test_trace_matches_eager_at_another_resolution(name, batch):
    # No cap on the detection count, so the number of results is truly data-dependent;
    # fewer proposals keep the test fast.
    cfg = zoo.config(name)
    cfg = dataclasses.replace(
        cfg, rpn=dataclasses.replace(cfg.rpn, post_nms_topk_test=30),
        roi_heads=dataclasses.replace(cfg.roi_heads, detections_per_image=1000))
    torch.manual_seed(0)
    adapter = _FlattenAdapter(GeneralizedRCNN(cfg).eval())
    gen = torch.Generator().manual_seed(1)
    sample = tuple(torch.rand(3, 96, 96, generator=gen) * 255 for _ in range(batch))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(adapter, sample, check_trace=False)
    data = _dataset(name, size_range=(64, 136))
    images = tuple(data[i]["image"] for i in range(batch))
    with torch.no_grad():
        expected = adapter(*images)
        got = traced(*images)
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
        assert g.shape == e.shape and g.dtype == e.dtype
        if e.is_floating_point():
            torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)
        else:
            assert torch.equal(g, e)


# ---- zoo -------------------------------------------------------------------------------

def test_zoo_names_and_configs():
    names = zoo.names()
    assert names == sorted(names)
    assert set(TINY + R50) <= set(names)
    assert zoo.config("mask_rcnn_tiny").roi_heads.mask_on
    assert zoo.config("keypoint_rcnn_tiny").roi_heads.num_classes == 1
    assert zoo.config("keypoint_rcnn_tiny").roi_heads.num_keypoints == 3
    assert zoo.config("faster_rcnn_R50_FPN").roi_heads.num_classes == 80
    with pytest.raises(ValueError, match="faster_rcnn_tiny"):
        zoo.get("no_such_model")
    with pytest.raises(ValueError, match="already registered"):
        zoo.register("faster_rcnn_tiny", GeneralizedRCNN, RCNNConfig.tiny())


def test_zoo_is_deterministic_and_loads_weights(tmp_path):
    from safetensors.torch import save_file

    a = zoo.get("faster_rcnn_tiny", weights=None)
    b = zoo.get("faster_rcnn_tiny", weights=None)
    assert not a.training
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert sum(p.numel() for p in a.parameters()) < 2_000_000
    changed = {k: v + 1.0 for k, v in sa.items()}
    save_file(changed, str(tmp_path / "w.safetensors"))
    c = zoo.get("faster_rcnn_tiny", weights=tmp_path / "w.safetensors")
    assert all(torch.equal(c.state_dict()[k], changed[k]) for k in sa)


@pytest.mark.slow
@pytest.mark.parametrize("name", R50)
def test_r50_smoke(name):
    model = zoo.get(name, weights=None)
    cfg = zoo.config(name)
    image = ShapesDataset("val", num_images=1, image_size=(160, 224))[0]["image"]
    with torch.no_grad():
        out = model([{"image": image}])[0]["instances"]
    assert out.image_size == (160, 224)
    if len(out):
        _check_instances(out, name, 160, 224, cfg)
    model.train()
    data = ShapesDataset("train", num_images=1, image_size=(160, 224))[0]
    data["instances"].gt_classes = data["instances"].gt_classes.clamp(max=cfg.roi_heads.num_classes - 1)
    if cfg.roi_heads.keypoint_on:
        kps = torch.zeros(len(data["instances"]), cfg.roi_heads.num_keypoints, 3)
        data["instances"].gt_keypoints = kps
    losses = model([data])
    assert all(torch.isfinite(v) for v in losses.values())
