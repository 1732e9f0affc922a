"""Zoo models captured at batch 1 and one resolution, made batch-polymorphic with
probe_inputs + fix-batch-dim, run by the IR interpreter at batch 2 and 3 and other
resolutions: the results equal eager forward_batched."""
from __future__ import annotations

import warnings

import pytest
import torch

import dexport
from dexport.ir.verifier import verify
from dexport.models import zoo
from dexport.models.data import ShapesDataset
from dexport.passes import PassManager

# One model by default (captures are the slow part); the whole zoo is marked slow.
DEFAULT = ["mask_rcnn_tiny"]
SLOW = ["faster_rcnn_tiny", "keypoint_rcnn_tiny", "retinanet_tiny", "cascade_mask_rcnn_tiny",
        "pointrend_tiny", "panoptic_fpn_tiny"]


def _batch(name: str, count: int, size: tuple[int, int], start: int = 0):
    data = ShapesDataset("val", num_images=start + count, image_size=size,
                         keypoints_only=name.startswith("keypoint"))
    images = torch.stack([data[i]["image"] for i in range(start, start + count)])
    sizes = torch.tensor([list(size)] * count)
    return images, sizes, sizes.clone()


def _forward_batched(model, *args):
    return model.forward_batched(*args)


def _check(name: str) -> None:
    model = zoo.get(name, weights=None)
    probes = [_batch(name, 2, (72, 100), 1), _batch(name, 3, (120, 88), 3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = dexport.capture(model, _batch(name, 1, (96, 128)), inference_func=_forward_batched,
                                probe_inputs=probes)
    PassManager("fix-batch-dim{batch=dynamic,resolution=dynamic}").run(graph)
    verify(graph)
    if hasattr(model, "rpn"):  # reached through rpn.propose / roi_heads.detect, not forward
        scopes = {(n.op, n.meta.scope) for n in graph.nodes() if n.op.startswith("dexport::")}
        assert {("dexport::batched_nms", "rpn"), ("dexport::batched_nms", "roi_heads")} <= scopes
    assert [str(v.type) for v in graph.inputs] == ["f32[N,3,H,W]", "i64[N,2]", "i64[N,2]"]
    output_types = {k: str(v.type) for k, v in zip(graph.output_schema.keys, graph.outputs)}
    assert output_types["counts"] == "i64[N]" and output_types["boxes"].endswith(",4]")
    # Batch 2 with one image at a smaller size on the canvas and another output size;
    # batch 3 at a resolution no sample had.
    images, sizes, out_sizes = _batch(name, 2, (136, 100), 2)
    sizes[1] = torch.tensor([110, 84])
    out_sizes[1] = torch.tensor([70, 50])
    for inputs in [(images, sizes, out_sizes), _batch(name, 3, (64, 160), 4)]:
        with torch.no_grad():
            expected = model.forward_batched(*inputs)
        got = graph(*inputs)
        assert list(got) == list(expected)
        assert expected["counts"].sum() > 0
        for key, want in expected.items():
            assert got[key].shape == want.shape and got[key].dtype == want.dtype, key
            if want.is_floating_point():
                torch.testing.assert_close(got[key], want, rtol=1e-4, atol=1e-4)
            else:
                assert torch.equal(got[key], want), key


@pytest.mark.parametrize("name", DEFAULT)
def test_zoo_model_is_batch_polymorphic(name):
    _check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_zoo_model_is_batch_polymorphic_slow(name):
    _check(name)
