"""A traced graph's dims are examples of one input: shape-based rewrites must not
treat them as facts (regression: canonicalize dropped reshape(-1, 1, 4) that was a
no-op only at the traced resolution)."""
import torch

import dexport
from dexport.ir import parse
from dexport.passes import PassManager


class GridAnchors(torch.nn.Module):
    """Builds one box per feature-map cell, as an anchor generator does."""

    def forward(self, feature):
        h, w = feature.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                                torch.arange(w, dtype=torch.float32), indexing="ij")
        shifts = torch.stack([xs, ys, xs, ys], dim=-1).reshape(-1, 1, 4)
        return (shifts + torch.ones(1, 2, 4)).reshape(-1, 4)


def test_reshape_that_was_a_noop_at_capture_survives_canonicalize():
    model = GridAnchors()
    graph = dexport.capture(model, (torch.zeros(1, 8, 1, 1),))  # a 1x1 map: reshape is a no-op here
    assert graph.example_shapes
    PassManager("canonicalize,cse,dce").run(graph)
    other = torch.zeros(1, 8, 2, 3)
    torch.testing.assert_close(graph(other), model(other), rtol=0, atol=0)


def test_example_shapes_round_trips_through_text():
    graph = dexport.capture(GridAnchors(), (torch.zeros(1, 8, 2, 2),))
    text = str(graph)
    assert text.startswith("#! example_shapes\n")
    again = parse(text)
    assert again.example_shapes and str(again) == text
    assert graph.clone().example_shapes


def test_hand_built_graphs_keep_shape_facts():
    text = """graph(%x: f32[2,3]) {
  %0: list[int] = prim::Constant() {value=[2, 3]}
  %1: f32[2,3] = aten::reshape(%x, %0)
  return (%1)
}"""
    graph = parse(text)
    assert not graph.example_shapes
    PassManager("canonicalize,dce").run(graph)
    assert [n.op for n in graph.nodes()] == []
