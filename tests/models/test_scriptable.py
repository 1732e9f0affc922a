"""Every zoo meta-architecture's ``forward_batched`` compiles with ``torch.jit.script``
(through ``BatchedEntry``) and gives the eager results on held-out images: batch 1, 2
and 3 at three resolutions (images of different sizes within a batch, one image asked
at another output size), and a batch with no detection at all."""
from __future__ import annotations

import dataclasses
import io

import pytest
import torch

from dexport.models import zoo
from dexport.models.data import ShapesDataset
from dexport.models.panoptic import PanopticFPN
from dexport.models.scripting import script_batched

RESOLUTIONS = [(128, 128), (96, 160), (160, 112)]


def _model(name: str, weights="default") -> torch.nn.Module:
    if name.startswith("panoptic_fpn"):
        # Instances of any score take part in the merge, so thing segments are compared too.
        cfg = dataclasses.replace(zoo.config(name), instances_score_thresh=0.0,
                                  stuff_area_thresh=16)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = PanopticFPN(cfg).eval()
        if weights == "default":
            model.load_state_dict(zoo.get(name).state_dict())
        return model
    return zoo.get(name, weights=weights)


def _batch(num: int, height: int, width: int, seed: int, keypoints_only: bool):
    """``num`` held-out images on an ``height`` x ``width`` canvas; from the second image
    on each is smaller than the canvas, and the first is asked at 3/4 of its size."""
    data = ShapesDataset("val", num_images=num, seed=seed, image_size=(height, width),
                         keypoints_only=keypoints_only)
    images = torch.stack([data[i]["image"] for i in range(num)])
    sizes = torch.tensor([[height - 8 * i, width - 16 * i] for i in range(num)])
    output_sizes = sizes.clone()
    output_sizes[0] = sizes[0] * 3 // 4
    return images, sizes, output_sizes


def _assert_same(got: dict, want: dict, where: str) -> None:
    assert list(got) == list(want), where
    for key, value in want.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, (where, key)
        assert torch.equal(got[key], value), (where, key)  # the same ops, so bit-exact


def _threshold_owner(module: torch.nn.Module) -> torch.nn.Module:
    """The module whose ``score_thresh`` decides which detections are kept."""
    return module.roi_heads if hasattr(module, "roi_heads") else module


def _check(name: str, cases: list[tuple[tuple[int, int], int]]) -> None:
    """Scripted vs eager on held-out batches ``((height, width), batch size)``, then on
    a batch with no detection."""
    model = _model(name)
    scripted = script_batched(model)
    keypoints_only = name.startswith("keypoint")
    with torch.no_grad():
        for seed, ((height, width), num) in enumerate(cases):
            inputs = _batch(num, height, width, 100 + seed, keypoints_only)
            want = model.forward_batched(*inputs)
            _assert_same(scripted(*inputs), want, f"{name} batch {num} at {height}x{width}")
            assert want["counts"].sum() > 0, "held-out images should give detections"
        # No detection at all: a score threshold nothing reaches, set on both (through the
        # config eagerly; a scripted module reads its attributes at run time).
        inputs = _batch(2, 96, 128, 7, keypoints_only)
        owner = _threshold_owner(model)
        owner.cfg = dataclasses.replace(owner.cfg, score_thresh=1.0)
        _threshold_owner(scripted.model).score_thresh = 1.0
        want = model.forward_batched(*inputs)
        assert want["counts"].tolist() == [0, 0]
        _assert_same(scripted(*inputs), want, f"{name} with no detections")


FAST = ["faster_rcnn_tiny", "mask_rcnn_tiny", "keypoint_rcnn_tiny", "retinanet_tiny",
        "panoptic_fpn_tiny"]
HEAVY = ["cascade_mask_rcnn_tiny", "pointrend_tiny"]
R50 = [name.replace("_tiny", "_R50_FPN") for name in FAST + HEAVY]


@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in HEAVY])
def test_tiny_scripted_equals_eager(name):
    """Batch 1, 2 and 3, each at another of the three resolutions (the default suite for
    all but the heavy models, which take over 20 s here)."""
    _check(name, [(RESOLUTIONS[i], num) for i, num in enumerate((1, 2, 3))])


@pytest.mark.parametrize("name", HEAVY)
def test_heavy_tiny_models_script(name):
    """The default suite at least compiles the heavy models' entry point."""
    scripted = script_batched(_model(name, weights=None))
    assert hasattr(scripted.model, "forward_batched")


@pytest.mark.slow
@pytest.mark.parametrize("name", FAST + HEAVY)
def test_tiny_scripted_equals_eager_every_batch_and_resolution(name):
    _check(name, [(size, num) for size in RESOLUTIONS for num in (1, 2, 3)])


def test_scripted_module_saves_and_loads():
    """The scripted entry is a self-contained TorchScript module."""
    model = _model("mask_rcnn_tiny")
    buffer = io.BytesIO()
    torch.jit.save(script_batched(model), buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    inputs = _batch(2, 96, 128, 3, False)
    with torch.no_grad():
        _assert_same(loaded(*inputs), model.forward_batched(*inputs), "loaded mask_rcnn_tiny")


@pytest.mark.parametrize("name", ["retinanet_tiny", "pointrend_tiny"])
def test_replaced_config_reaches_eager_and_scripted_code(name):
    """Settings inference reads are attributes copied from ``cfg``, again whenever ``cfg``
    is replaced, so the scripted module is built with the new ones."""
    model = _model(name, weights=None)
    owner = _threshold_owner(model)
    owner.cfg = dataclasses.replace(owner.cfg, score_thresh=1.0)
    assert owner.score_thresh == 1.0
    if name == "pointrend_tiny":  # a setting of the mask head: one subdivision step fewer
        head = model.roi_heads.mask_head
        head.cfg = dataclasses.replace(head.cfg, subdivision_steps=head.cfg.subdivision_steps - 1)
    scripted = script_batched(model)
    inputs = _batch(1, 96, 128, 9, False)
    with torch.no_grad():
        want = model.forward_batched(*inputs)
        assert want["counts"].tolist() == [0]
        _assert_same(scripted(*inputs), want, name)
    if name == "pointrend_tiny":
        assert scripted.model.roi_heads.mask_head.subdivision_steps == head.cfg.subdivision_steps


def test_list_api_forward_is_left_to_eager():
    """script_batched compiles forward_batched, not the list API's forward."""
    scripted = script_batched(_model("faster_rcnn_tiny"))
    assert hasattr(scripted.model, "forward_batched")
    assert not hasattr(scripted.model, "inference")


@pytest.mark.slow
@pytest.mark.parametrize("name", R50)
def test_r50_scripted_equals_eager(name):
    model = _model(name, weights=None)
    if name.startswith("retinanet"):  # untrained, every score is the 0.01 prior
        model.cfg = dataclasses.replace(model.cfg, score_thresh=0.005)
    scripted = script_batched(model)
    inputs = _batch(1, 256, 256, 5, name.startswith("keypoint"))
    with torch.no_grad():
        want = model.forward_batched(*inputs)
        assert want["counts"].sum() > 0
        _assert_same(scripted(*inputs), want, name)
