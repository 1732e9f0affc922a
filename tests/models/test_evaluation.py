"""COCO evaluation of predictors with the zoo's I/O."""

import math

import pytest
import torch

from dexport.models.data import ShapesDataset
from dexport.models.evaluation import IOU_TYPES, evaluate, format_table
from dexport.models.structures import Boxes, Instances


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
