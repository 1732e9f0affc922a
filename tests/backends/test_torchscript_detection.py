"""The TorchScript versions of the dexport:: detection ops against their torch kernels.

Every function in FUNCTIONS is scripted once and run on random inputs of several
seeds and on edge cases; the registered op (its CPU kernel) is the reference, and on
CPU the results must be bit-identical. The last test pastes the sources the way the
TorchScript backend does and loads the saved module in a python that has only torch.
"""

import inspect
import subprocess
import sys
import warnings

import pytest
import torch

from dexport.backends import torchscript_detection as tsd
from dexport.ir.dialects import dexport as dialect

_SCRIPTED = {}


def _script(name):
    """FUNCTIONS[name] compiled by torch.jit.script (once per test session)."""
    if name not in _SCRIPTED:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            _SCRIPTED[name] = torch.jit.script(tsd.FUNCTIONS[name])
    return _SCRIPTED[name]


def _reference(name):
    return getattr(torch.ops.dexport, name.split("::")[1])


def _assert_same(name, *args):
    got, expected = _script(name)(*args), _reference(name)(*args)
    assert got.dtype == expected.dtype and got.shape == expected.shape, name
    assert torch.equal(got, expected), (name, (got.float() - expected.float()).abs().max())


def _boxes(n, gen, span=60.0, max_size=30.0):
    xy = torch.rand(n, 2, generator=gen) * span
    wh = torch.rand(n, 2, generator=gen) * max_size
    return torch.cat([xy, xy + wh], dim=1)


# --------------------------------------------------------------------------- coverage


def test_every_dexport_op_has_a_torchscript_function():
    training_only = {"dexport::_roi_align_backward"}
    assert set(tsd.FUNCTIONS) == set(dialect.OPS) - training_only


@pytest.mark.parametrize("name", sorted(tsd.FUNCTIONS))
def test_every_function_scripts_and_follows_the_paste_contract(name):
    assert isinstance(_script(name), torch.jit.ScriptFunction)
    for fn in [tsd.FUNCTIONS[name], *tsd.HELPERS]:
        assert fn.__name__.startswith("dexport_")
        # Pasted source may only name torch, math, typing and other pasted functions.
        pasted = {f.__name__ for f in [*tsd.HELPERS, *tsd.FUNCTIONS.values()]}
        allowed = {"torch", "math", "List", "Optional", "Tuple"} | pasted
        unknown = {n for n in fn.__code__.co_names if n in vars(tsd) and n not in allowed}
        assert not unknown, (fn.__name__, unknown)


# --------------------------------------------------------------------------- NMS


def _nms_cases(gen):
    """(boxes, scores, classes): random (several blocks of the scan), ties, degenerate, empty."""
    cases = []
    for n in (1, 7, 60, 520):
        cases.append((_boxes(n, gen), torch.rand(n, generator=gen), torch.randint(0, 4, (n,), generator=gen)))
    # Many classes, dense boxes (several 256-box blocks, much suppression).
    classes = torch.randint(0, 80, (300,), generator=gen)
    cases.append((_boxes(300, gen, span=30.0), torch.rand(300, generator=gen), classes))
    # Ties everywhere: scores from 3 values, duplicated boxes, negative class ids.
    boxes = _boxes(40, gen, span=20.0)
    boxes = torch.cat([boxes, boxes[:10]])
    scores = torch.randint(0, 3, (50,), generator=gen).float() / 2
    cases.append((boxes, scores, torch.randint(-2, 2, (50,), generator=gen) * 1000))
    # All scores equal over 300 boxes: the order is the index order.
    cases.append((_boxes(300, gen, span=30.0), torch.full((300,), 0.5), torch.zeros(300, dtype=torch.int64)))
    # Zero-area, inverted, IoU exactly 0.5 ([0,0,20,10] vs [0,0,10,10]), far away.
    special = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 5, 9], [5, 5, 5, 5],
                            [10, 10, 0, 0], [8, 8, 2, 2], [0, 0, 20, 10], [0, 0, 10, 10],
                            [-1e4, -1e4, -9990, -9990], [1e5, 1e5, 1e5 + 5, 1e5 + 5]], dtype=torch.float32)
    cases.append((special, torch.tensor([0.9, 0.9, 0.95, 0.99, 0.97, 0.96, 0.5, 0.5, 0.3, 0.2]),
                  torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 0, 0])))
    cases.append((torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64)))
    return cases


@pytest.mark.parametrize("threshold", [0.5, 0.0, 1.0, -0.5])
def test_nms_and_batched_nms_keep_the_kernels_indices_in_its_order(threshold):
    for seed in (0, 1):
        for boxes, scores, classes in _nms_cases(torch.Generator().manual_seed(seed)):
            _assert_same("dexport::nms", boxes, scores, threshold)
            _assert_same("dexport::batched_nms", boxes, scores, classes, threshold)
        _assert_same("dexport::nms", boxes.double(), scores.double(), threshold)  # the last case: special boxes


# --------------------------------------------------------------------------- RoIAlign


def _rois(k, batch, gen, span=70.0):
    boxes = _boxes(k, gen, span=span, max_size=40.0) - 10.0
    boxes[: k // 4, 2:] = boxes[: k // 4, :2] + torch.rand(k // 4, 2, generator=gen) * 0.9  # < 1 px
    if k >= 8:
        boxes[k // 4] = boxes[k // 4, [0, 1, 0, 1]]                      # zero size
        boxes[k // 4 + 1] = boxes[k // 4 + 1, [2, 3, 0, 1]]              # inverted
        boxes[k // 4 + 2] = torch.tensor([200.0, 200.0, 260.0, 230.0])   # outside the image
        boxes[k // 4 + 3] = torch.tensor([-30.0, -20.0, 5.0, 3.0])       # over the top-left border
    index = torch.randint(0, batch, (k, 1), generator=gen).float()
    return torch.cat([index, boxes], dim=1)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_matches_the_kernel(aligned, sampling_ratio):
    for seed in (2, 3):
        gen = torch.Generator().manual_seed(seed)
        for batch, channels, height, width, k, scale in [(2, 3, 13, 17, 40, 0.25), (1, 4, 25, 9, 9, 0.5),
                                                         (3, 2, 6, 6, 0, 0.25), (1, 2, 1, 7, 8, 1.0)]:
            x = torch.randn(batch, channels, height, width, generator=gen)
            rois = _rois(k, batch, gen, span=4 * max(height, width))
            _assert_same("dexport::roi_align", x, rois, scale, 7, 5, sampling_ratio, aligned)
        _assert_same("dexport::roi_align", x.double(), rois, 0.5, 3, 4, sampling_ratio, aligned)


def test_roi_pool_matches_the_kernel():
    for seed in (4, 5):
        gen = torch.Generator().manual_seed(seed)
        for batch, channels, height, width, k, scale in [(2, 3, 13, 17, 40, 0.25), (1, 4, 25, 9, 9, 0.5),
                                                         (3, 2, 6, 6, 0, 0.25), (1, 2, 1, 7, 8, 1.0)]:
            x = torch.randn(batch, channels, height, width, generator=gen)
            rois = _rois(k, batch, gen, span=4 * max(height, width))
            rois[: k // 2, 1:] = torch.round(rois[: k // 2, 1:] * 2) / 2 / scale  # corners on halves
            _assert_same("dexport::roi_pool", x, rois, scale, 7, 5)
        _assert_same("dexport::roi_pool", x.double(), rois, 0.5, 3, 4)


# --------------------------------------------------------------------------- box coding


def test_box_coding_clipping_and_levels_match_the_kernels():
    weights = [10.0, 10.0, 5.0, 5.0]
    for seed in (3, 4):
        gen = torch.Generator().manual_seed(seed)
        for n, k in [(6, 2), (50, 1), (9, 5), (1, 1), (0, 3)]:
            deltas = torch.randn(n, 4 * k, generator=gen) * 3
            if n:
                deltas[0, 2:4] = 100.0  # past the scale clamp
            boxes = _boxes(n, gen)
            _assert_same("dexport::decode_boxes", deltas, boxes, weights, dialect.DEFAULT_SCALE_CLAMP)
            _assert_same("dexport::decode_boxes", deltas.double(), boxes, [1.0, 1.0, 1.0, 1.0], 2.0)
            _assert_same("dexport::encode_boxes", _boxes(n, gen), boxes, weights)
        # Image sizes are tensors: one function serves every size.
        for n, k, size in [(4, 2, (30, 40)), (25, 1, (17, 90)), (3, 4, (5, 5)), (0, 1, (8, 8))]:
            _assert_same("dexport::clip_boxes", torch.randn(n, 4 * k, generator=gen) * 60, torch.tensor(size))
    sides = torch.tensor([0.0, 1.0, 55.9, 56.0, 112.0, 224.0, 448.0, 896.0, 1792.0, 3000.0])
    exact = torch.cat([torch.zeros(len(sides), 2), sides[:, None].expand(-1, 2)], dim=1)
    inverted = exact[[6, 0]] * torch.tensor([1, 1, 1, -1.0])
    for boxes in (_boxes(300, gen, max_size=900.0), exact, inverted, torch.zeros(0, 4)):
        _assert_same("dexport::assign_fpn_levels", boxes, 2, 5, 224, 4)
        _assert_same("dexport::assign_fpn_levels", boxes, 0, 12, 256, 6)


# --------------------------------------------------------------------------- masks


def _mask_boxes(n, height, width, gen):
    boxes = _boxes(n, gen, span=max(height, width), max_size=max(height, width) / 2) - 5.0
    if n >= 7:
        boxes[1, 2] = boxes[1, 0]                                             # zero width
        boxes[2] = boxes[2, [2, 3, 0, 1]]                                     # inverted
        boxes[3] = torch.tensor([-50.0, -50.0, 1e4, 1e4])                     # far bigger than the image
        boxes[4] = torch.tensor([float(width) + 3, 2.0, float(width) + 9, 8.0])  # outside
        boxes[5] = torch.tensor([2.0, 3.0, 2.5, 3.2])                         # under one pixel
        boxes[6] = torch.tensor([float(width) - 4, float(height) - 3, float(width) + 2, float(height) + 1])
    if n >= 8:
        boxes[7] = torch.tensor([2.5, 1.5, 2.5, 6.0])  # zero width exactly on a pixel centre
    return boxes


@pytest.mark.parametrize("threshold", [0.5, 0.0, -1.0])
def test_paste_masks_matches_the_kernel(threshold):
    for seed in (7, 8):
        gen = torch.Generator().manual_seed(seed)
        for n, m, (height, width) in [(8, 14, (20, 30)), (12, 28, (57, 41)), (1, 5, (6, 4)), (0, 28, (9, 13))]:
            masks = torch.rand(n, m, m, generator=gen)
            if n:
                masks[0] = 0.5  # canvas values exactly at the threshold
            _assert_same("dexport::paste_masks", masks, _mask_boxes(n, height, width, gen),
                         torch.tensor([height, width]), threshold)


# --------------------------------------------------------------------------- keypoints


def _keypoint_rois(n, gen):
    rois = _boxes(n, gen, span=100.0, max_size=60.0)
    if n >= 4:
        rois[1, 2:] = rois[1, :2] + 0.3        # smaller than one pixel
        rois[2, 2:] = rois[2, :2] + 17.0       # integral size
        rois[3, 2:] = rois[3, :2] + torch.tensor([140.0, 3.0])  # long and thin
    return rois


def test_heatmaps_to_keypoints_matches_the_kernel():
    for seed in (8, 9):
        gen = torch.Generator().manual_seed(seed)
        for n, k, size in [(5, 3, 8), (9, 17, 14), (1, 1, 4), (0, 4, 8)]:
            maps = torch.randn(n, k, size, size, generator=gen) * 4
            if n:
                maps[0, 0] = 1.0  # all pixels tie: the first one wins
            _assert_same("dexport::heatmaps_to_keypoints", maps, _keypoint_rois(n, gen))


def test_heatmaps_to_keypoints_matches_the_kernel_over_several_chunks():
    # 17 keypoints × up to 300² pixels per roi: the 2²⁴-element budget splits the rois.
    gen = torch.Generator().manual_seed(10)
    rois = _boxes(24, gen, span=50.0, max_size=300.0)
    rois[5, 2:] = rois[5, :2] + 900.0  # one huge roi: a chunk of its own
    _assert_same("dexport::heatmaps_to_keypoints", torch.randn(24, 17, 6, 6, generator=gen), rois)


# --------------------------------------------------------------------------- pasted


class _Detector(torch.nn.Module):
    """Calls several pasted functions the way generated code would."""

    def forward(self, features, deltas, boxes, scores, classes, masks, maps, image_size):
        boxes = dexport_decode_boxes(deltas, boxes, [1.0, 1.0, 1.0, 1.0], 4.0)  # noqa: F821
        boxes = dexport_clip_boxes(boxes, image_size)  # noqa: F821
        keep = dexport_batched_nms(boxes, scores, classes, 0.5)  # noqa: F821
        boxes = boxes[keep]
        rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)
        pooled = dexport_roi_align(features, rois, 0.5, 4, 4, 0, True)  # noqa: F821
        levels = dexport_assign_fpn_levels(boxes, 2, 5, 224, 4)  # noqa: F821
        pasted = dexport_paste_masks(masks[keep], boxes, image_size, 0.5)  # noqa: F821
        points = dexport_heatmaps_to_keypoints(maps[keep], boxes)  # noqa: F821
        return keep, pooled, levels, pasted, points


def _detect_with_the_reference_ops(features, deltas, boxes, scores, classes, masks, maps, image_size):
    """_Detector.forward on the registered ops."""
    boxes = dialect.clip_boxes(dialect.decode_boxes(deltas, boxes, (1.0, 1.0, 1.0, 1.0), 4.0), image_size)
    keep = dialect.batched_nms(boxes, scores, classes, 0.5)
    boxes = boxes[keep]
    rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)
    return (keep, dialect.roi_align(features, rois, 0.5, 4, 4, 0, True), dialect.assign_fpn_levels(boxes, 2, 5),
            dialect.paste_masks(masks[keep], boxes, image_size, 0.5), dialect.heatmaps_to_keypoints(maps[keep], boxes))


def test_pasted_sources_script_save_and_run_in_a_python_with_only_torch(tmp_path):
    header = "import math\nimport torch\nfrom typing import List, Optional, Tuple\n\n\n"
    sources = [inspect.getsource(f) for f in [*tsd.HELPERS, *tsd.FUNCTIONS.values()]]
    module_source = header + "\n\n".join(sources) + "\n\n" + inspect.getsource(_Detector)
    (tmp_path / "pasted_model.py").write_text(module_source)
    sys.path.insert(0, str(tmp_path))
    try:
        import pasted_model
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("pasted_model", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(pasted_model._Detector())
    gen = torch.Generator().manual_seed(11)
    inputs = (torch.randn(1, 3, 20, 24, generator=gen), torch.randn(30, 4, generator=gen) * 0.1,
              _boxes(30, gen, span=30.0), torch.rand(30, generator=gen), torch.randint(0, 3, (30,), generator=gen),
              torch.rand(30, 7, 7, generator=gen), torch.randn(30, 2, 5, 5, generator=gen), torch.tensor([40, 48]))
    expected = _detect_with_the_reference_ops(*inputs)
    assert 3 < expected[0].numel() < 30  # some boxes suppressed, some kept
    assert all(torch.equal(g, e) for g, e in zip(scripted(*inputs), expected))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(scripted, str(tmp_path / "model.pt"))
    torch.save({"inputs": inputs, "expected": expected}, str(tmp_path / "io.pt"))
    check = (
        "import sys, torch\n"
        f"m = torch.jit.load({str(tmp_path / 'model.pt')!r})\n"
        f"io = torch.load({str(tmp_path / 'io.pt')!r})\n"
        "got = m(*io['inputs'])\n"
        "assert all(torch.equal(g, e) for g, e in zip(got, io['expected']))\n"
        "assert not any(name.startswith('dexport') for name in sys.modules)\n"
        "print('ok', len(got))\n"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "5"]
