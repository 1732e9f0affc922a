"""third-party-ops: torchvision's detection ops, defined here with torchvision's schemas
and independent reference kernels (tests/thirdparty_ops.py), are recognised at capture
and become dexport ops with the same results, in the IR interpreter and in ONNX."""
from __future__ import annotations

import pytest
import torch

import dexport
from dexport.cli import main
from dexport.passes.rewrite import Rewriter
from dexport.passes.thirdparty import RECOGNISED_OPS, RULES
from tests import thirdparty_ops as tv

# At scales 0.5 and 0.25 some corners land on halves (roi_pool rounds them away from
# zero); the last roi lies outside the image (roi_pool's bins are all empty there).
ROIS = torch.tensor([[0, 1.0, 2.0, 9.5, 10.0], [1, 0.2, 0.3, 3.0, 2.0], [1, -2.0, -1.0, 20.0, 14.0],
                     [0, 5.0, 5.0, 5.3, 5.2], [1, -30.0, -9.0, -20.0, -2.0]])


def random_boxes(n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    corner = torch.rand(n, 2, generator=gen) * 20
    return torch.cat((corner, corner + torch.rand(n, 2, generator=gen) * 10 + 1), 1), torch.rand(n, generator=gen)


class Ops(torch.nn.Module):
    """Every recognised op, with both roi_align modes and adaptive and fixed sampling."""

    def forward(self, x, rois, boxes, scores):
        return (tv.nms(boxes, scores, 0.4),
                tv.roi_align(x, rois, (3, 2), 0.5, 0, True),
                tv.roi_align(x, rois, 2, 0.5, 2, False),
                tv.ps_roi_align(x, rois, 2, 0.5, 2),
                tv.roi_pool(x, rois, (3, 2), 0.5),
                tv.roi_pool(x, rois, 4, 0.25))


def inputs(seed: int, size=(12, 16)):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 8, *size, generator=gen), ROIS, *random_boxes(40, seed))


def test_the_schemas_are_torchvisions():
    for name in ("nms", "roi_align", "ps_roi_align", "roi_pool"):
        assert f"torchvision::{name}" in RECOGNISED_OPS
        schema = getattr(torch.ops.torchvision, name).default._schema
        assert str(schema) == "torchvision::" + tv.SCHEMAS[name]


def test_capture_leaves_only_dexport_ops_with_the_same_results():
    graph = dexport.capture(Ops(), inputs(0))
    ops = {n.op for n in graph.nodes()}
    assert not any(op.startswith("torchvision::") for op in ops), ops
    assert {"dexport::nms", "dexport::roi_align", "dexport::roi_pool"} <= ops
    for seed, size in ((1, (12, 16)), (2, (20, 10))):  # other values and sizes than the capture's
        args = inputs(seed, size)
        with torch.no_grad():
            expected, actual = Ops()(*args), graph(*args)
        assert torch.equal(expected[0], actual[0])
        for e, a in zip(expected[1:], actual[1:]):
            torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


def test_onnx_matches_the_reference_kernels(tmp_path):
    result = dexport.export(Ops(), inputs(0), tmp_path / "ops", check_inputs=[inputs(1), inputs(2, (20, 10))])
    assert result.verification.ok, result.verification.format_table()


class PsRoiAlignWithMapping(torch.nn.Module):
    def forward(self, x, rois):
        return torch.ops.torchvision.ps_roi_align(x, rois, 0.5, 2, 2, 2)


def test_ps_roi_align_is_left_when_its_channel_mapping_is_used():
    graph = dexport.capture(PsRoiAlignWithMapping(), inputs(0)[:2])
    rewriter = Rewriter(RULES, debug=True)
    assert rewriter.apply(graph) == 0
    assert [n.op for n in graph.nodes() if n.op.startswith("torchvision::")] == ["torchvision::ps_roi_align"]
    assert "channel mapping output is used" in rewriter.report()


class RoiPoolWithArgmax(torch.nn.Module):
    def forward(self, x, rois):
        return torch.ops.torchvision.roi_pool(x, rois, 0.5, 2, 2)


def test_roi_pool_is_left_when_its_argmax_is_used():
    graph = dexport.capture(RoiPoolWithArgmax(), inputs(0)[:2])
    rewriter = Rewriter(RULES, debug=True)
    assert rewriter.apply(graph) == 0
    assert [n.op for n in graph.nodes() if n.op.startswith("torchvision::")] == ["torchvision::roi_pool"]
    assert "argmax output is used" in rewriter.report()


def test_roi_pool_kernel_matches_the_reference():
    """dexport's vectorised kernel against the bin-by-bin reference on many rois, halves
    and rois past the borders included."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 9, 11, generator=gen)
    corner = torch.rand(16, 2, generator=gen) * 30 - 5
    rois = torch.cat((torch.randint(0, 2, (16, 1), generator=gen).float(), corner,
                      corner + torch.rand(16, 2, generator=gen) * 25), 1)
    rois = torch.cat((rois, ROIS))
    for scale in (1.0, 0.5, 0.25):
        for size in ((3, 2), (2, 5)):
            expected = tv.roi_pool(x, rois, size, scale)
            assert torch.equal(torch.ops.dexport.roi_pool(x, rois, scale, *size), expected), (scale, size)


def test_check_lists_no_torchvision_op(capsys):
    assert main(["export", "--check", "--model", "tests.e2e.corpus_ssd:ssd_factory"]) == 0
    out = capsys.readouterr().out
    assert "torchvision" not in out and "has an ONNX lowering" in out


@pytest.mark.parametrize("aligned", [True, False])
def test_reference_kernel_agrees_with_dexports(aligned):
    """The two kernels were written apart; they meet on both coordinate conventions."""
    from dexport.ir.dialects import dexport as ops
    x = inputs(3)[0]
    for ratio in (0, 2):
        torch.testing.assert_close(ops.roi_align(x, ROIS, 0.5, 3, 2, ratio, aligned),
                                   tv.reference_roi_align(x, ROIS, 0.5, 3, 2, ratio, aligned), atol=1e-5, rtol=1e-5)
