"""COCO evaluation of predictors with the zoo's I/O."""

import math

import pytest
import torch

from dexport.models.data import ShapesDataset
from dexport.models.evaluation import IOU_TYPES, evaluate, format_table
from dexport.ir.dialects.structures import Boxes, Instances


class GroundTruthPredictor:
    """Returns each image's annotations as predictions (images come in dataset order)."""

    def __init__(self, dataset, with_masks=True, with_keypoints=True):
        self.dataset, self.next_index = dataset, 0
        self.with_masks, self.with_keypoints = with_masks, with_keypoints
        self.batch_sizes = []

    def __call__(self, inputs):
        self.batch_sizes.append(len(inputs))
        outputs = []
        for item in inputs:
            r = self.dataset.record(self.next_index)
            self.next_index += 1
            assert torch.equal(item["image"], r["image"])
            assert (item["height"], item["width"]) == tuple(r["sem_seg"].shape)
            n = len(r["classes"])
            fields = dict(pred_boxes=Boxes(r["boxes"]), scores=torch.ones(n),
                          pred_classes=r["classes"])
            if self.with_masks:
                fields["pred_masks"] = r["masks"]
            if self.with_keypoints:
                kps = r["keypoints"].clone()
                kps[:, :, 2] = 1.0  # (x, y, score)
                fields["pred_keypoints"] = kps
            outputs.append({"instances": Instances(r["sem_seg"].shape, **fields)})
        return outputs


def garbage_predictor(inputs):
    """Confident, wrong predictions: tiny boxes in a corner, masks and keypoints there too."""
    g = torch.Generator().manual_seed(0)
    outputs = []
    for item in inputs:
        h, w = item["height"], item["width"]
        n = 5
        corner = torch.rand(n, 2, generator=g) * 4
        boxes = torch.cat([corner, corner + 3], dim=1)
        masks = torch.zeros(n, h, w, dtype=torch.bool)
        masks[:, :3, :3] = True
        kps = torch.cat([torch.rand(n, 3, 2, generator=g) * 3, torch.ones(n, 3, 1)], dim=2)
        outputs.append({"instances": Instances(
            (h, w), pred_boxes=Boxes(boxes), scores=torch.rand(n, generator=g),
            pred_classes=torch.randint(0, 3, (n,), generator=g), pred_masks=masks,
            pred_keypoints=kps)})
    return outputs


@pytest.mark.parametrize("keypoints_only", [False, True])
def test_ground_truth_scores_100(keypoints_only):
    ds = ShapesDataset("val", num_images=12, keypoints_only=keypoints_only)
    predictor = GroundTruthPredictor(ds)
    metrics = evaluate(predictor, ds, batch_size=5)
    assert predictor.batch_sizes == [5, 5, 2]
    assert list(metrics) == list(IOU_TYPES)
    for iou_type in IOU_TYPES:
        for name in ("AP", "AP50", "AP75"):
            assert metrics[iou_type][name] == pytest.approx(100.0), (iou_type, name)


def test_garbage_scores_about_zero():
    ds = ShapesDataset("val", num_images=10)
    metrics = evaluate(garbage_predictor, ds)
    assert set(metrics) == set(IOU_TYPES)
    for values in metrics.values():
        assert all(0.0 <= v < 1.0 for v in values.values()), metrics


def test_iou_types_follow_the_predicted_fields():
    ds = ShapesDataset("val", num_images=4)
    metrics = evaluate(GroundTruthPredictor(ds, with_masks=False, with_keypoints=False), ds)
    assert list(metrics) == ["bbox"] and metrics["bbox"]["AP"] == pytest.approx(100.0)
    metrics = evaluate(GroundTruthPredictor(ds), ds, iou_types=["segm"])
    assert list(metrics) == ["segm"]
    with pytest.raises(ValueError, match="unknown iou_types"):
        evaluate(GroundTruthPredictor(ds), ds, iou_types=["mask"])


def test_nothing_predicted_scores_zero():
    ds = ShapesDataset("val", num_images=3)

    def empty(inputs):
        return [{"instances": Instances((x["height"], x["width"]), pred_boxes=Boxes(torch.zeros(0, 4)),
                                        scores=torch.zeros(0),
                                        pred_classes=torch.zeros(0, dtype=torch.int64))}
                for x in inputs]

    assert evaluate(empty, ds) == {"bbox": {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}}


def test_format_table_lists_every_type():
    table = format_table({"bbox": {"AP": 51.25, "AP50": 80.0, "AP75": math.nan}})
    lines = table.splitlines()
    assert lines[0].split() == ["type", "AP", "AP50", "AP75"]
    assert lines[1].split() == ["bbox", "51.2", "80.0", "nan"]


# ----------------------------------------------------------------------------- panoptic quality
# Categories are (isthing, category_id): thing class index / stuff semantic label.

from dexport.models.evaluation import (PANOPTIC_METRICS, PanopticStats,  # noqa: E402
                                       panoptic_ground_truth, panoptic_prediction, panoptic_quality)

SQUARE, CIRCLE, SKY = (True, 1), (True, 0), (False, 1)


def scene():
    """10x10: sky everywhere (id 3) but a 4x4 square (id 1) and a 2x5 circle (id 2)."""
    seg = torch.full((10, 10), 3)
    seg[1:5, 1:5] = 1
    seg[7:9, 2:7] = 2
    return seg, {1: SQUARE, 2: CIRCLE, 3: SKY}


def test_pq_perfect_prediction_is_100():
    gt = scene()
    assert panoptic_quality([gt], [gt]) == {m: 100.0 for m in PANOPTIC_METRICS}
    # ids need not agree, only pixels and categories
    seg, cats = gt
    renamed = (seg * 10, {10 * k: v for k, v in cats.items()})
    assert panoptic_quality([gt], [renamed])["PQ"] == 100.0


def test_pq_missed_segment_is_a_false_negative():
    gt_seg, gt_cats = scene()
    pred = gt_seg.clone()
    pred[pred == 2] = 3  # the circle is predicted as sky
    stats = PanopticStats()
    stats.add(gt_seg, gt_cats, pred, {1: SQUARE, 3: SKY})
    per = stats.category_metrics()
    assert per[CIRCLE] == {"PQ": 0.0, "SQ": 0.0, "RQ": 0.0, "TP": 0, "FP": 0, "FN": 1}
    assert per[SQUARE]["PQ"] == 1.0
    sky_iou = 74 / 84  # 100 - 16 - 10 sky pixels; the prediction adds the circle's 10
    assert per[SKY]["PQ"] == pytest.approx(sky_iou) and per[SKY]["TP"] == 1
    out = stats.summary()
    assert out["PQ"] == pytest.approx(100 * (1 + 0 + sky_iou) / 3)
    assert out["SQ"] == pytest.approx(100 * (1 + 0 + sky_iou) / 3)  # SQ of a category without TP is 0
    assert out["RQ"] == pytest.approx(100 * 2 / 3)
    assert out["PQ_th"] == pytest.approx(50.0) and out["PQ_st"] == pytest.approx(100 * sky_iou)


@pytest.mark.parametrize("pixels,matched", [(11, True), (10, False)])
def test_pq_iou_must_exceed_one_half(pixels, matched):
    """GT: a 1x20 thing; prediction: its first `pixels` pixels. IoU 11/20 matches, IoU
    10/20 = 0.5 does not (the threshold is strict)."""
    gt_seg = torch.ones(1, 20, dtype=torch.int64)
    pred = torch.zeros(1, 20, dtype=torch.int64)
    pred[0, :pixels] = 1
    stats = PanopticStats()
    stats.add(gt_seg, {1: SQUARE}, pred, {1: SQUARE})
    row = stats.category_metrics()[SQUARE]
    if matched:
        assert (row["TP"], row["FP"], row["FN"]) == (1, 0, 0) and row["PQ"] == pytest.approx(pixels / 20)
    else:
        assert (row["TP"], row["FP"], row["FN"]) == (0, 1, 1) and row["PQ"] == 0.0


def test_pq_void_pixels():
    """Void GT pixels leave a prediction's IoU, and a prediction mostly on void is no FP."""
    gt_seg = torch.zeros(4, 10, dtype=torch.int64)
    gt_seg[:, :4] = 1  # a 16-pixel thing; columns 4.. are void (unlabelled)
    pred = torch.zeros(4, 10, dtype=torch.int64)
    pred[:, :6] = 1   # the thing plus 8 void pixels: IoU 16/16 once void is removed
    pred[:, 7:] = 2   # a segment entirely on void: ignored, not a false positive
    stats = PanopticStats()
    stats.add(gt_seg, {1: SQUARE}, pred, {1: SQUARE, 2: CIRCLE})
    per = stats.category_metrics()
    assert per[SQUARE] == {"PQ": 1.0, "SQ": 1.0, "RQ": 1.0, "TP": 1, "FP": 0, "FN": 0}
    assert CIRCLE not in per  # appears nowhere that counts: not averaged in


@pytest.mark.parametrize("first,last,false_positive", [(4, 8, True), (5, 9, False)])
def test_pq_prediction_more_than_half_void_is_no_false_positive(first, last, false_positive):
    """GT columns 0-3 a thing, 4-5 sky, 6-9 void. A circle predicted on columns 4-7 is half
    void (a false positive); on columns 5-8 three quarters void (ignored)."""
    gt_seg = torch.zeros(4, 10, dtype=torch.int64)
    gt_seg[:, :4], gt_seg[:, 4:6] = 1, 2
    pred = gt_seg.clone()
    pred[:, 6:] = 0
    pred[:, first:last] = 3
    stats = PanopticStats()
    stats.add(gt_seg, {1: SQUARE, 2: SKY}, pred, {1: SQUARE, 2: SKY, 3: CIRCLE})
    per = stats.category_metrics()
    assert per[SQUARE]["TP"] == 1
    assert (CIRCLE in per and per[CIRCLE]["FP"] == 1) == false_positive
    assert per[SKY]["FN"] == 1  # what is left of the predicted sky is at most half of it


def test_pq_category_must_agree():
    """Same pixels, another category: one FN for the GT category, one FP for the predicted
    one; a thing class and a stuff label with the same number are different categories."""
    gt_seg, gt_cats = scene()
    pred_cats = dict(gt_cats)
    pred_cats[1] = (False, 1)  # the square's pixels predicted as a second "sky" (stuff label 1)
    stats = PanopticStats()
    stats.add(gt_seg, gt_cats, gt_seg, pred_cats)
    per = stats.category_metrics()
    assert (per[SQUARE]["TP"], per[SQUARE]["FN"]) == (0, 1)
    assert (per[SKY]["TP"], per[SKY]["FP"]) == (1, 1)
    assert stats.summary()["PQ"] == pytest.approx(100 * (0 + 1 + 1 / 1.5) / 3)


def test_pq_rejects_undeclared_ids_and_other_sizes():
    gt = scene()
    with pytest.raises(ValueError, match=r"segment ids \[2\] are not in its segments_info"):
        panoptic_quality([gt], [(gt[0], {1: SQUARE, 3: SKY})])
    with pytest.raises(ValueError, match="shape"):
        panoptic_quality([gt], [(gt[0][:5], gt[1])])


def test_prediction_formats_agree():
    seg = torch.tensor([[1, 2], [0, 2]], dtype=torch.int32)
    as_dict = {"id": torch.tensor([1, 2]), "category_id": torch.tensor([2, 1]),
               "isthing": torch.tensor([True, False]), "score": torch.tensor([0.9, 0.5])}
    as_list = [{"id": 1, "isthing": True, "category_id": 2, "score": 0.9},
               {"id": 2, "isthing": False, "category_id": 1, "area": 2}]
    for info in (as_dict, as_list):
        out_seg, cats = panoptic_prediction((seg, info))
        assert out_seg.dtype == torch.int64 and cats == {1: (True, 2), 2: (False, 1)}


def test_shapes_ground_truth_panoptic():
    ds = ShapesDataset("val", num_images=4)
    for i in range(4):
        r = ds.record(i)
        seg, cats = panoptic_ground_truth(r["sem_seg"], r["masks"], r["classes"])
        n = len(r["classes"])
        assert (seg > 0).all()  # every shapes pixel is a thing or a stuff
        assert [cats[k] for k in range(1, n + 1)] == [(True, c) for c in r["classes"].tolist()]
        for k, mask in enumerate(r["masks"], start=1):
            assert torch.equal(seg == k, mask)
        for k in range(n + 1, len(cats) + 1):
            assert not cats[k][0] and torch.equal(seg == k, r["sem_seg"] == cats[k][1])


class PanopticGroundTruthPredictor(GroundTruthPredictor):
    """The ground truth as a PanopticFPN-style prediction (dict-of-tensors segments_info)."""

    def __call__(self, inputs):
        start = self.next_index
        outputs = super().__call__(inputs)
        for k, out in enumerate(outputs):
            r = self.dataset.record(start + k)
            seg, cats = panoptic_ground_truth(r["sem_seg"], r["masks"], r["classes"])
            ids = sorted(cats)
            out["panoptic_seg"] = (seg.to(torch.int32), {
                "id": torch.tensor(ids), "category_id": torch.tensor([cats[i][1] for i in ids]),
                "isthing": torch.tensor([cats[i][0] for i in ids])})
        return outputs


def test_evaluate_adds_panoptic_when_predicted():
    ds = ShapesDataset("val", num_images=5)
    metrics = evaluate(PanopticGroundTruthPredictor(ds, with_keypoints=False), ds, batch_size=2)
    assert list(metrics) == ["bbox", "segm", "panoptic"]
    assert metrics["panoptic"] == {m: pytest.approx(100.0) for m in PANOPTIC_METRICS}
    only = evaluate(PanopticGroundTruthPredictor(ds, with_keypoints=False), ds, iou_types=["panoptic"])
    assert list(only) == ["panoptic"] and only["panoptic"]["PQ"] == pytest.approx(100.0)
    # asked for but not predicted: NaN, like AP without ground truth
    none = evaluate(GroundTruthPredictor(ds), ds, iou_types=["bbox", "panoptic"])
    assert math.isnan(none["panoptic"]["PQ"])


def test_format_table_gives_panoptic_its_own_header():
    lines = format_table({"bbox": {"AP": 50.0, "AP50": 80.0, "AP75": 40.0},
                          "panoptic": {"PQ": 12.34, "SQ": 70.0, "RQ": 17.6, "PQ_th": 1.0, "PQ_st": 30.0}}
                         ).splitlines()
    assert [line.split() for line in lines] == [
        ["type", "AP", "AP50", "AP75"], ["bbox", "50.0", "80.0", "40.0"],
        ["type", "PQ", "SQ", "RQ", "PQ_th", "PQ_st"], ["panoptic", "12.3", "70.0", "17.6", "1.0", "30.0"]]
