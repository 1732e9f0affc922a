"""The synthetic shapes dataset: determinism, split separation, annotation consistency, COCO json."""

import hashlib
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from dexport.models.data import (
    KEYPOINT_NAMES, SEM_SEG_CLASSES, THING_CLASSES, ShapesDataset, dataset_for_model,
    to_coco_json,
)
from dexport.ir.dialects.structures import Boxes, Instances


def _digest(record) -> str:
    h = hashlib.sha256()
    for key in ("image", "sem_seg", "boxes", "classes", "masks", "keypoints"):
        h.update(record[key].numpy().tobytes())
    return h.hexdigest()


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path):
    a, b = ShapesDataset("val", num_images=6), ShapesDataset("val", num_images=6)
    to_coco_json(a, tmp_path / "a.json")
    to_coco_json(b, tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert [_digest(a.record(i)) for i in range(6)] == [_digest(b.record(i)) for i in range(6)]
    # Random access gives the same image as sequential access.
    assert _digest(a.record(4)) == _digest(ShapesDataset("val", num_images=6).record(4))
    other = ShapesDataset("val", num_images=6, seed=1)
    assert all(_digest(other.record(i)) != _digest(a.record(i)) for i in range(6))


def test_train_and_val_are_disjoint():
    train = {_digest(ShapesDataset("train", num_images=30).record(i)) for i in range(30)}
    val = {_digest(ShapesDataset("val", num_images=30).record(i)) for i in range(30)}
    assert len(train) == 30 and len(val) == 30
    assert not train & val


def test_item_is_the_zoo_training_input():
    item = ShapesDataset("train", num_images=3, image_size=(96, 112))[2]
    assert set(item) == {"image", "height", "width", "image_id", "instances", "sem_seg"}
    assert item["image"].shape == (3, 96, 112) and item["image"].dtype == torch.float32
    assert 0 <= item["image"].min() and item["image"].max() <= 255
    assert (item["height"], item["width"], item["image_id"]) == (96, 112, 2)
    inst = item["instances"]
    assert isinstance(inst, Instances) and inst.image_size == (96, 112)
    assert isinstance(inst.gt_boxes, Boxes)
    n = len(inst)
    assert 1 <= n <= 5
    assert inst.gt_classes.dtype == torch.int64
    assert inst.gt_masks.shape == (n, 96, 112) and inst.gt_masks.dtype == torch.bool
    assert inst.gt_keypoints.shape == (n, len(KEYPOINT_NAMES), 3)
    assert item["sem_seg"].shape == (96, 112) and item["sem_seg"].dtype == torch.int64


@pytest.mark.parametrize("keypoints_only", [False, True])
def test_masks_boxes_keypoints_and_sem_seg_agree(keypoints_only):
    ds = ShapesDataset("train", num_images=25, keypoints_only=keypoints_only)
    counts = np.zeros(len(THING_CLASSES), dtype=int)
    visible_kps = hidden_kps = 0
    for i in range(len(ds)):
        r = ds.record(i)
        masks, boxes, classes, kps = r["masks"], r["boxes"], r["classes"], r["keypoints"]
        h, w = r["sem_seg"].shape
        # Visible masks never overlap, and together they are exactly the "things" label.
        assert masks.sum(0).max() <= 1
        assert torch.equal(masks.any(0), r["sem_seg"] == 0)
        assert set(r["sem_seg"].unique().tolist()) <= set(range(len(SEM_SEG_CLASSES)))
        for mask, box, cls, kp in zip(masks, boxes, classes, kps):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert len(ys) >= 24
            assert box.tolist() == [xs.min().item(), ys.min().item(),
                                    xs.max().item() + 1, ys.max().item() + 1]
            name = ds.thing_classes[cls]
            counts[THING_CLASSES.index(name)] += 1
            if name != "triangle":
                assert not kp.any()
                continue
            for x, y, v in kp.tolist():
                assert v in (0.0, 2.0)
                if v == 0:
                    hidden_kps += 1
                    continue
                visible_kps += 1
                # A visible vertex is in the image and on its own (unhidden) outline.
                assert 0 <= x < w and 0 <= y < h
                near = mask[max(int(y) - 2, 0):int(y) + 3, max(int(x) - 2, 0):int(x) + 3]
                assert near.any()
    if keypoints_only:
        assert ds.thing_classes == ("triangle",) and counts[:2].sum() == 0
    else:
        assert (counts > 0).all()
    assert visible_kps > 0 and hidden_kps > 0


def test_size_range_varies_sizes_within_bounds():
    ds = ShapesDataset("val", num_images=8, size_range=(64, 160))
    sizes = {tuple(ds.record(i)["sem_seg"].shape) for i in range(8)}
    assert len(sizes) > 1
    assert all(64 <= h <= 160 and 64 <= w <= 160 for h, w in sizes)


def test_dataset_for_model_picks_the_keypoint_variant():
    assert dataset_for_model("keypoint_rcnn_tiny", "val").keypoints_only
    assert not dataset_for_model("mask_rcnn_tiny", "val").keypoints_only
    with pytest.raises(ValueError):
        ShapesDataset("test")
    with pytest.raises(IndexError):
        ShapesDataset("val", num_images=2).record(2)


@pytest.mark.parametrize("keypoints_only", [False, True])
def test_coco_json_loads_and_matches_the_records(tmp_path, keypoints_only):
    ds = ShapesDataset("val", num_images=8, keypoints_only=keypoints_only)
    path = tmp_path / "gt.json"
    to_coco_json(ds, path)
    raw = json.loads(path.read_text())
    coco = COCO(str(path))
    assert sorted(coco.getImgIds()) == list(range(8))
    cats = {c["id"]: c for c in raw["categories"]}
    assert [cats[i]["name"] for i in ds.category_ids] == list(ds.thing_classes)
    triangle = next(c for c in raw["categories"] if c["name"] == "triangle")
    assert triangle["keypoints"] == list(KEYPOINT_NAMES)
    assert triangle["skeleton"] == [[1, 2], [2, 3], [3, 1]]
    ids = [a["id"] for a in raw["annotations"]]
    assert ids == list(range(1, len(ids) + 1))
    for index in range(8):
        r = ds.record(index)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[index]))
        assert len(anns) == len(r["classes"])
        for ann, box, cls, mask, kp in zip(anns, r["boxes"], r["classes"], r["masks"],
                                           r["keypoints"]):
            x1, y1, x2, y2 = box.tolist()
            assert ann["bbox"] == [x1, y1, x2 - x1, y2 - y1]
            assert ann["category_id"] == ds.category_ids[cls]
            assert np.array_equal(coco.annToMask(ann), mask.numpy())
            assert ann["area"] == mask.sum().item() == mask_util.area(ann["segmentation"])
            assert ann["iscrowd"] == 0
            if ds.thing_classes[cls] != "triangle":
                assert "keypoints" not in ann
                continue
            flat = np.array(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
            assert ann["num_keypoints"] == int((kp[:, 2] > 0).sum())
            seen = kp[:, 2] > 0
            np.testing.assert_allclose(flat[seen.numpy(), :2], kp[seen, :2].numpy() - 0.5,
                                       atol=1e-3)
            assert (flat[~seen.numpy()] == 0).all()
