"""Differential capture (probe_inputs) and the fix-batch-dim pass on small hand-made models."""
from __future__ import annotations

import warnings

import pytest
import torch

import dexport
from dexport.ir.errors import CaptureError, PassError
from dexport.ir.parser import parse
from dexport.ir.printer import print_graph
from dexport.ir.verifier import verify
from dexport.passes import PassManager, get_pass


def _capture(model, example, probes=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer warns about the very constants under test
        return dexport.capture(model, example, probe_inputs=probes)


def _size_tags(graph):
    return [t for n in graph.nodes() for t in n.meta.tags if t.startswith("size=")]


class BakedSizes(torch.nn.Module):
    """Sizes taken into Python: int(x.shape[0]) and a product of dims become constants."""

    def forward(self, x):
        n, c, h, w = (int(s) for s in x.shape)
        flat = x.reshape(n, c * h * w)
        rows = x.view(n * c, h, w)
        return flat.sum(dim=1), rows.mean(dim=0)[: h - 1]


EXAMPLE = (torch.randn(1, 3, 8, 10),)
PROBES = [(torch.randn(2, 3, 12, 6),), (torch.randn(3, 3, 5, 9),)]


def test_probes_tag_baked_sizes_and_symbolic_types():
    g = _capture(BakedSizes(), EXAMPLE, PROBES)
    assert str(g.inputs[0].type) == "f32[N,3,H,W]"
    assert _size_tags(g) == ["size=N", "size=3*H*W", "size=3*N", "size=H", "size=W",
                             "size=H-1"]
    assert [str(v.type) for v in g.outputs] == ["f32[N]", "f32[H-1,W]"]
    assert g.example_shapes  # interior dims are still only observed
    verify(g)
    # Tags and symbolic dims survive the text form.
    text = print_graph(g)
    assert print_graph(parse(text, g.params)) == text


@pytest.mark.parametrize("batch,size", [(1, (8, 10)), (4, (7, 13)), (2, (16, 5))])
def test_fix_batch_dim_dynamic_runs_at_any_batch_and_resolution(batch, size):
    g = _capture(BakedSizes(), EXAMPLE, PROBES)
    PassManager("fix-batch-dim,dce", verify_each=True).run(g)
    # Every tagged constant became a computation (which keeps the tag) on input sizes.
    tagged = [n for n in g.nodes() if any(t.startswith("size=") for t in n.meta.tags)]
    assert tagged and all(n.op != "prim::Constant" for n in tagged)
    assert len(g.find_nodes("aten::size.int")) >= 3
    assert not g.example_shapes  # no data-dependent op, every dim explained
    x = torch.randn(batch, 3, *size)
    for got, want in zip(g(x), BakedSizes()(x)):
        torch.testing.assert_close(got, want)


def test_a_plain_trace_bakes_the_batch_and_the_pass_needs_probes():
    g = _capture(BakedSizes(), EXAMPLE)
    with pytest.raises(dexport.DexportError, match="aten::reshape failed"):
        g(torch.randn(2, 3, 8, 10))  # the traced reshape still says batch 1
    with pytest.raises(PassError, match="no symbolic batch dim N") as err:
        get_pass("fix-batch-dim").run(g)
    assert "probe_inputs" in err.value.hint
    assert get_pass("fix-batch-dim", batch=1, resolution="fixed").run(g) is False
    with pytest.raises(PassError, match="traced at batch 1"):
        get_pass("fix-batch-dim", batch=2, resolution="fixed").run(g)
    with pytest.raises(PassError, match="fixed traced resolution"):
        get_pass("fix-batch-dim", batch=1).run(g)


def test_fixed_batch_binds_types_and_size_constants():
    g = _capture(BakedSizes(), EXAMPLE, PROBES)
    PassManager("fix-batch-dim{batch=4}", verify_each=True).run(g)
    assert str(g.inputs[0].type) == "f32[4,3,H,W]"
    assert [str(v.type) for v in g.outputs] == ["f32[4]", "f32[H-1,W]"]
    # The batch-only constant is now 12 (3 * 4); the others are computed from H and W.
    assert "size=3*N" not in _size_tags(g) and "size=12" not in _size_tags(g)
    x = torch.randn(4, 3, 9, 11)
    for got, want in zip(g(x), BakedSizes()(x)):
        torch.testing.assert_close(got, want)
    assert get_pass("fix-batch-dim", batch=4).run(g) is False  # idempotent


def test_fixed_resolution_needs_a_resolution_that_was_not_probed():
    g = _capture(BakedSizes(), EXAMPLE, PROBES)
    with pytest.raises(PassError, match="resolution is symbolic"):
        get_pass("fix-batch-dim", resolution="fixed").run(g)
    batch_only = [(torch.randn(2, 3, 8, 10),), (torch.randn(3, 3, 8, 10),)]
    g = _capture(BakedSizes(), EXAMPLE, batch_only)
    assert str(g.inputs[0].type) == "f32[N,3,8,10]"
    assert get_pass("fix-batch-dim", resolution="fixed").run(g)
    x = torch.randn(5, 3, 8, 10)
    for got, want in zip(g(x), BakedSizes()(x)):
        torch.testing.assert_close(got, want)


class PerImageLoop(torch.nn.Module):
    def forward(self, x):
        return torch.stack([image * (i + 1) for i, image in enumerate(x)])


def test_a_per_image_python_loop_is_a_clear_error():
    with pytest.raises(CaptureError) as err:
        _capture(PerImageLoop(), EXAMPLE, PROBES)
    e = err.value
    assert "differs from the example's" in e.what and "probe_inputs[0]" in e.what
    assert e.source and e.source.endswith(f":{PerImageLoop.forward.__code__.co_firstlineno + 1}")
    assert "per-image Python loop" in e.hint and "forward_batched" in e.hint


class DataConstant(torch.nn.Module):
    def forward(self, x):
        k = int((x > 0).sum())  # a value from the data, baked by the trace
        return x.flatten()[:k]


def test_a_constant_from_tensor_data_is_refused():
    # Refused while tracing, before the probes compare constants (dexport.frontends.value_dependence).
    with pytest.raises(CaptureError, match="computed from the input values") as err:
        _capture(DataConstant(), EXAMPLE, PROBES)
    assert err.value.op == "aten::Int" and "tensor ops" in err.value.hint


class ListOfImages(torch.nn.Module):
    def forward(self, images):
        return [image.sum() for image in images]


def test_a_batch_sized_python_list_is_refused_with_a_hint():
    with pytest.raises(CaptureError, match="input schema") as err:
        _capture(ListOfImages(), ([torch.randn(3, 4, 4)],),
                 [([torch.randn(3, 4, 4), torch.randn(3, 4, 4)],)])
    assert "forward_batched" in err.value.hint


def test_probes_must_vary_height_and_width_independently():
    square = [(torch.randn(2, 3, 12, 12),), (torch.randn(3, 3, 5, 5),)]
    with pytest.raises(CaptureError, match="independently"):
        _capture(BakedSizes(), (torch.randn(1, 3, 8, 8),), square)


class Nonzero(torch.nn.Module):
    def forward(self, x):
        return torch.nonzero(x > 0)


def test_data_dependent_sizes_get_fresh_symbols_and_keep_example_shapes():
    g = _capture(Nonzero(), EXAMPLE, PROBES)
    assert str(g.outputs[0].type) == "i64[n0,4]"
    get_pass("fix-batch-dim").run(g)
    assert g.example_shapes  # counts seen on samples are not facts
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(g(x), Nonzero()(x))


def test_pipeline_text_options():
    p = PassManager("fix-batch-dim{batch=1,resolution=fixed}").passes[0]
    assert p.options.batch == 1 and p.options.resolution == "fixed"
    assert PassManager("fix-batch-dim").passes[0].options.batch == "dynamic"
