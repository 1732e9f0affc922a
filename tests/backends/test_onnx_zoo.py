"""End to end: every zoo model captured at one resolution (batch 1), emitted to
standard ONNX, and run by onnxruntime (no custom-op library) at another
resolution must give the interpreter's detections: the same counts, boxes within
1e-3 of the image size, scores within 1e-4, and masks/segmentations differing
in at most a few pixels (a probability within float error of the threshold)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import dexport
from dexport.backends.onnx import emit_onnx, run_onnx
from dexport.ir.interpreter import run
from dexport.models import zoo
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
        for key in ref:
            assert_matches(ref[key], out[key], key, image_size)
    elif hasattr(ref, "get_fields"):  # Instances
        assert ref.image_size == out.image_size
        assert_matches(ref.get_fields(), out.get_fields(), field, image_size)
    elif hasattr(ref, "tensor"):  # Boxes
        assert_matches(ref.tensor, out.tensor, field, image_size)
    elif isinstance(ref, torch.Tensor):
        r, o = ref.numpy(), out.numpy()
        assert o.shape == r.shape and o.dtype == r.dtype, f"{field}: {o.shape}/{o.dtype} vs {r.shape}/{r.dtype}"
        if field in ("pred_masks", "panoptic_seg"):
            assert (r != o).mean() <= 1e-3, f"{field}: {(r != o).sum()} of {r.size} differ"
        elif field == "area":
            np.testing.assert_allclose(o, r, atol=1e-3 * image_size ** 2, err_msg=field)
        elif r.dtype.kind == "f":
            atol = 1e-4 if field in ("scores", "score", "sem_seg") else 1e-3 * image_size
            np.testing.assert_allclose(o, r, rtol=1e-4, atol=atol, err_msg=field)
        else:
            np.testing.assert_array_equal(o, r, err_msg=field)
    else:
        assert ref == out, field


def check_model(name: str, capture_size=CAPTURE_SIZE, run_size=RUN_SIZE) -> None:
    model = zoo.get(name).eval()
    with torch.no_grad():
        graph = dexport.capture(model, ([{"image": image(capture_size, 0)}],))
    onnx_model = emit_onnx(graph)
    flat = graph.input_schema.flatten(([{"image": image(run_size, 1)}],))
    with torch.no_grad():
        ref = graph.output_schema.rebuild(run(graph, flat))
    out = graph.output_schema.rebuild([torch.from_numpy(a) for a in run_onnx(onnx_model, flat)])
    assert_matches(ref, out, "", max(run_size))


TINY = [n for n in zoo.names() if n.endswith("_tiny")]
R50 = [n for n in zoo.names() if "R50" in n]


@pytest.mark.parametrize("name", TINY)
def test_tiny_zoo_model_in_onnxruntime_matches_the_interpreter(name):
    check_model(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", R50)
def test_r50_zoo_model_in_onnxruntime_matches_the_interpreter(name):
    check_model(name, (128, 160), (160, 128))
