"""End to end: every zoo model captured at one resolution (batch 1), emitted to
standard ONNX, and run by onnxruntime (no custom-op library) at another
resolution must give the interpreter's detections: the same counts, boxes within
1e-3 of the image size, scores within 1e-4, and masks/segmentations differing
in at most a few pixels (a probability within float error of the threshold)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import dexport
from dexport.backends.onnx import emit_onnx, run_onnx
from dexport.ir.interpreter import run
from dexport.models import zoo
from dexport.ir.dialects.detection_io import DETECTION_FIELDS, stack_inputs
from dexport.models.data import ShapesDataset

CAPTURE_SIZE, RUN_SIZE = (64, 64), (80, 100)


def image(size, seed):
    return ShapesDataset("val", num_images=1, seed=seed, image_size=size)[0]["image"]


def assert_matches(ref, out, field: str, image_size: int) -> None:
    """Compare rebuilt model outputs (lists, dicts, Instances, Boxes, tensors)."""
    if isinstance(ref, (list, tuple)):
        assert len(ref) == len(out)
        for r, o in zip(ref, out):
            assert_matches(r, o, field, image_size)
    elif isinstance(ref, dict):
        assert list(ref) == list(out)
        if "boxes" in ref:  # forward_batched's flat detections
            order = tie_order(ref["scores"].numpy(), out["scores"].numpy(), ref["boxes"].numpy(),
                              out["boxes"].numpy())
            out = {k: v[order] if k in DETECTION_FIELDS else v for k, v in out.items()}
        for key in ref:
            assert_matches(ref[key], out[key], key, image_size)
    elif hasattr(ref, "get_fields"):  # Instances
        assert ref.image_size == out.image_size
        ref_fields, out_fields = ref.get_fields(), out.get_fields()
        order = tie_order(ref_fields["scores"].numpy(), out_fields["scores"].numpy(),
                          ref_fields["pred_boxes"].tensor.numpy(), out_fields["pred_boxes"].tensor.numpy())
        out_fields = {k: (type(v)(v.tensor[order]) if hasattr(v, "tensor") else v[order])
                      for k, v in out_fields.items()}
        assert_matches(ref_fields, out_fields, field, image_size)
    elif hasattr(ref, "tensor"):  # Boxes
        assert_matches(ref.tensor, out.tensor, field, image_size)
    elif isinstance(ref, torch.Tensor):
        r, o = ref.numpy(), out.numpy()
        assert o.shape == r.shape and o.dtype == r.dtype, f"{field}: {o.shape}/{o.dtype} vs {r.shape}/{r.dtype}"
        if field in ("pred_masks", "masks", "panoptic_seg"):
            assert (r != o).sum() <= 1e-3 * r.size, f"{field}: {(r != o).sum()} of {r.size} differ"
        elif field in ("area", "segment_area"):
            np.testing.assert_allclose(o, r, atol=1e-3 * image_size ** 2, err_msg=field)
        elif r.dtype.kind == "f":
            atol = 1e-4 if field in ("scores", "score", "segment_score", "sem_seg") else 1e-3 * image_size
            np.testing.assert_allclose(o, r, rtol=1e-4, atol=atol, err_msg=field)
        else:
            np.testing.assert_array_equal(o, r, err_msg=field)
    else:
        assert ref == out, field


def tie_order(ref_scores, out_scores, ref_boxes, out_boxes, tol: float = 1e-4) -> np.ndarray:
    """The order of the ONNX detections that lines them up with the interpreter's:
    detections whose scores tie within float error (random-init models make many)
    may come out in either order, so within each run of tied scores every row is
    matched to the nearest box."""
    order = np.arange(len(out_scores))
    if len(ref_scores) != len(out_scores):
        return order  # the count check reports it
    start = 0
    while start < len(ref_scores):
        end = start + 1
        while end < len(ref_scores) and abs(ref_scores[end] - ref_scores[end - 1]) <= tol:
            end += 1
        free = list(range(start, end))
        for i in range(start, end):
            best = min(free, key=lambda j: np.abs(out_boxes[j] - ref_boxes[i]).sum())
            order[i] = best
            free.remove(best)
        start = end
    return order


def check_model(name: str, capture_size=CAPTURE_SIZE, run_size=RUN_SIZE, score_thresh=None):
    model = zoo.get(name).eval()
    if score_thresh is not None:  # the threshold is a constant of the capture
        heads = getattr(model, "roi_heads", model)
        heads.cfg = dataclasses.replace(heads.cfg, score_thresh=score_thresh)
    with torch.no_grad():
        graph = dexport.capture(model, ([{"image": image(capture_size, 0)}],))
    onnx_model = emit_onnx(graph)
    flat = graph.input_schema.flatten(([{"image": image(run_size, 1)}],))
    with torch.no_grad():
        ref = graph.output_schema.rebuild(run(graph, flat))
    out = graph.output_schema.rebuild([torch.from_numpy(a) for a in run_onnx(onnx_model, flat)])
    assert_matches(ref, out, "", max(run_size))
    return out


def check_batched(name: str, batches=([(80, 100), (64, 64), (40, 96)], [(72, 72)])) -> None:
    """``forward_batched`` captured at batch 2 runs at other batch sizes and image sizes."""
    model = zoo.get(name).eval()

    def inputs(sizes, seed):
        return stack_inputs([{"image": image(s, seed + k)} for k, s in enumerate(sizes)], "cpu")[:3]
    with torch.no_grad():
        graph = dexport.capture(model, inputs([(64, 64), (48, 80)], 0),
                                inference_func=lambda m, *args: m.forward_batched(*args))
    onnx_model = emit_onnx(graph)
    for sizes in batches:
        flat = graph.input_schema.flatten(inputs(sizes, 5))
        with torch.no_grad():
            ref = graph.output_schema.rebuild(run(graph, flat))
        out = graph.output_schema.rebuild([torch.from_numpy(a) for a in run_onnx(onnx_model, flat)])
        assert_matches(ref, out, "", max(max(s) for s in sizes))


TINY = [n for n in zoo.names() if n.endswith("_tiny")]
R50 = [n for n in zoo.names() if "R50" in n]


@pytest.mark.parametrize("name", TINY)
def test_tiny_zoo_model_in_onnxruntime_matches_the_interpreter(name):
    check_model(name)


@pytest.mark.parametrize("name", ["mask_rcnn_tiny", pytest.param("keypoint_rcnn_tiny", marks=pytest.mark.slow),
                                  pytest.param("panoptic_fpn_tiny", marks=pytest.mark.slow)])
def test_no_detections_at_all(name):
    """N = 0 through RoI heads, mask pasting, keypoints and panoptic merging."""
    (out,) = check_model(name, score_thresh=1.0)
    assert out["instances"].scores.shape == (0,)


@pytest.mark.slow
@pytest.mark.parametrize("name", R50)
def test_r50_zoo_model_in_onnxruntime_matches_the_interpreter(name):
    check_model(name, (128, 160), (160, 128))


def test_batched_detection_runs_at_another_batch_size():
    check_batched("mask_rcnn_tiny", batches=([(80, 100), (64, 64), (40, 96)],))


@pytest.mark.slow
@pytest.mark.parametrize("name", TINY)
def test_batched_detection_runs_at_other_batch_sizes(name):
    check_batched(name)
