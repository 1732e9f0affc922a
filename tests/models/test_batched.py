"""forward_batched: batch-index helpers against loop references, and every tiny zoo model
at batch 3 against the same images run one at a time."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from dexport.models import zoo
from dexport.ir.dialects.detection_io import (
    DETECTION_FIELDS, SEGMENT_FIELDS, image_index_from_counts, split_outputs, stack_inputs,
)
from dexport.models.batched import group_counts, rank_in_group, top_per_image
from dexport.models.data import ShapesDataset
from dexport.models.panoptic import PanopticFPN

TINY = ["faster_rcnn_tiny", "mask_rcnn_tiny", "keypoint_rcnn_tiny", "retinanet_tiny",
        "cascade_mask_rcnn_tiny", "pointrend_tiny", "panoptic_fpn_tiny"]


# ---- helpers ---------------------------------------------------------------------------

def test_counts_and_ranks_against_loops():
    gen = torch.Generator().manual_seed(0)
    group = torch.randint(0, 4, (40,), generator=gen)
    assert group_counts(group, 5).tolist() == [(group == g).sum().item() for g in range(5)]
    expected = [(group[:i] == group[i]).sum().item() for i in range(40)]
    assert rank_in_group(group, 4).tolist() == expected
    assert rank_in_group(group[:0], 4).tolist() == []
    counts = torch.tensor([2, 0, 3, 1])
    assert image_index_from_counts(counts, 6).tolist() == [0, 0, 2, 2, 2, 3]


def test_top_per_image_equals_per_image_slicing():
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        image = torch.randint(0, 3, (30,), generator=gen)
        order = torch.randperm(30, generator=gen)[:25]  # candidates in priority order
        k = int(torch.randint(0, 6, (1,), generator=gen))
        got = top_per_image(order, image, k, 3).tolist()
        expected = [i for g in range(3) for i in [j for j in order.tolist() if image[j] == g][:k]]
        assert got == expected


def test_split_outputs_by_counts_and_crops_canvases():
    outputs = {"boxes": torch.arange(12.0).reshape(3, 4), "scores": torch.tensor([0.9, 0.8, 0.7]),
               "masks": torch.ones(3, 4, 5, dtype=torch.bool), "counts": torch.tensor([1, 0, 2]),
               "sem_seg": torch.zeros(3, 2, 4, 5), "segment_id": torch.tensor([1, 1, 2]),
               "segment_counts": torch.tensor([0, 1, 2])}
    per_image = split_outputs(outputs, [(4, 5), (2, 3), (3, 5)])
    assert [len(p["scores"]) for p in per_image] == [1, 0, 2]
    assert per_image[2]["boxes"].tolist() == [[4.0, 5, 6, 7], [8.0, 9, 10, 11]]
    assert per_image[2]["masks"].shape == (2, 3, 5) and per_image[1]["sem_seg"].shape == (2, 2, 3)
    assert [p["segment_id"].tolist() for p in per_image] == [[], [1], [1, 2]]
    assert "counts" not in per_image[0] and "segment_counts" not in per_image[0]


# ---- models ----------------------------------------------------------------------------

def _model(name: str) -> torch.nn.Module:
    if name == "panoptic_fpn_tiny":
        # Keep instances of any score in the merge, so thing segments are exercised too
        # (the untrained model's scores all fall below the default 0.5).
        cfg = dataclasses.replace(zoo.config(name), instances_score_thresh=0.0,
                                  stuff_area_thresh=16)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return PanopticFPN(cfg).eval()
    return zoo.get(name, weights=None)


def _assert_same(batched: dict, single: dict, name: str) -> None:
    assert set(batched) == set(single)
    for key, want in single.items():
        got = batched[key]
        assert got.shape == want.shape and got.dtype == want.dtype, (name, key)
        if key in ("scores", "segment_score"):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        elif got.is_floating_point():
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        else:
            assert torch.equal(got, want), (name, key)


@pytest.mark.parametrize("name", TINY)
def test_batch_of_three_equals_each_image_alone(name):
    """Same detections per image (scores within 1e-5), including an image whose results
    are asked at another output size, so the masks canvas is padded for it."""
    model = _model(name)
    data = ShapesDataset("val", num_images=3, image_size=(80, 112),
                         keypoints_only=name.startswith("keypoint"))
    images = torch.stack([data[i]["image"] for i in range(3)])
    image_sizes = torch.tensor([[80, 112]] * 3)
    output_sizes = torch.tensor([[80, 112], [56, 90], [80, 112]])
    with torch.no_grad():
        batched = model.forward_batched(images, image_sizes, output_sizes)
        singles = [model.forward_batched(images[i:i + 1], image_sizes[i:i + 1],
                                         output_sizes[i:i + 1]) for i in range(3)]
    expected_keys = [k for k in DETECTION_FIELDS if k in batched] + ["counts"]
    if name == "panoptic_fpn_tiny":
        expected_keys += ["sem_seg", "panoptic_seg", *SEGMENT_FIELDS, "segment_counts"]
        assert (batched["segment_isthing"]).any() and (~batched["segment_isthing"]).any()
    assert list(batched) == expected_keys
    assert batched["counts"].tolist() == [s["counts"].item() for s in singles]
    assert batched["counts"].sum() > 0
    pairs = output_sizes.tolist()
    for i, (got, single) in enumerate(zip(split_outputs(batched, pairs), singles)):
        want = split_outputs(single, pairs[i:i + 1])[0]
        _assert_same(got, want, name)
    if "masks" in batched:  # beyond its output size, image 1's canvas stays empty
        masks = split_outputs(batched)[1]["masks"]
        assert masks.shape[1:] == (80, 112) and not masks[:, 56:].any() and not masks[..., 90:].any()


def test_list_api_is_stack_then_forward_batched():
    model = zoo.get("mask_rcnn_tiny", weights=None)
    data = ShapesDataset("val", num_images=2, size_range=(64, 100))
    inputs = [{"image": data[0]["image"]}, {"image": data[1]["image"], "height": 50, "width": 60}]
    images, image_sizes, output_sizes, sizes = stack_inputs(inputs, torch.device("cpu"))
    assert images.shape[0] == 2 and image_sizes.tolist() == [list(d["image"].shape[1:])
                                                              for d in (data[0], data[1])]
    assert output_sizes[1].tolist() == [50, 60] and sizes.outputs[1] == (50, 60)
    with torch.no_grad():
        listed = model(inputs)
        batched = split_outputs(model.forward_batched(images, image_sizes, output_sizes),
                                sizes.outputs)
    for out, item in zip(listed, batched):
        inst = out["instances"]
        assert torch.equal(inst.pred_boxes.tensor, item["boxes"])
        assert torch.equal(inst.pred_masks, item["masks"])
        assert inst.image_size == tuple(item["masks"].shape[1:])
