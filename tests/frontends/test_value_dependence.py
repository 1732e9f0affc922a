"""Tracing refuses value-dependent control flow (dexport.frontends.value_dependence): a Python
branch or value taken from the input tensors' values is a CaptureError naming the op,
scope and source line; size-dependent conversions, counts that only check consistency
and the zoo's own models still capture."""
import inspect
import warnings

import pytest
import torch
import torch.nn as nn

import dexport
from dexport.ir import CaptureError
from dexport.models import zoo
from dexport.frontends import value_dependence
from dexport.frontends.value_dependence import content_probe


def _line_of(func, text: str) -> str:
    lines, start = inspect.getsourcelines(func)
    return f"tests/frontends/test_value_dependence.py:{start + next(i for i, l in enumerate(lines) if text in l)}"


def _refused(model, inputs, **kwargs) -> CaptureError:
    with pytest.raises(CaptureError) as info:
        dexport.capture(model, inputs, **kwargs)
    return info.value


def _assert_one_path_message(err: CaptureError) -> None:
    text = str(err)
    assert "tracing records one path" in text
    assert "--method scripting" in text and "planned" in text


# --------------------------------------------------------------------------- models

class ScalarBranch(nn.Module):
    """The issue's model, with structured I/O: ``x*2 if x.sum() > 0 else x-1``."""

    def forward(self, inputs: dict):
        x = inputs["x"]
        y = x * 2 if x.sum() > 0 else x - 1
        return {"y": y, "n": inputs["n"]}


class Head(nn.Module):
    def forward(self, x):
        return x.relu() if bool((x > 0).any()) else x


class WithHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = Head()

    def forward(self, x):
        return self.head(x + 1)


class BakedItem(nn.Module):
    def forward(self, x):
        try:  # a model that swallows the error is refused all the same
            k = x.max().item()
        except Exception:
            k = 1.0
        return x * k


class SizeConversions(nn.Module):
    """Python ints taken from sizes, and a loop over rows: sizes, not values."""

    def forward(self, x):
        n = int(x.shape[0])
        rows = [row * 2 for row in x]
        half = x.shape[1] // 2
        if x.shape[-1] > 2 and len(x) == n:
            print(x.sum())  # printing a value cannot change the graph
        return torch.stack(rows).reshape(n, -1)[:, :half]


class ParameterBranch(nn.Module):
    """A branch on a parameter's value: the same on every input."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([2.0]))

    def forward(self, x):
        return x * self.scale if self.scale.sum() > 0 else x


class UnwatchedBranch(nn.Module):
    """torch.equal answers a Python bool without a tensor conversion: only the content
    probe sees this branch."""

    def forward(self, x):
        return x * 2 if torch.equal(x.round(), x) else x - 1


class UnwatchedConstant(nn.Module):
    """Same ops on both paths, another baked constant."""

    def forward(self, x):
        return x * (2.0 if torch.equal(x.round(), x) else 3.0)


def _with_forward_batched(name: str, forward_batched) -> nn.Module:
    """The zoo model ``name`` with ``forward_batched`` replaced (the list API calls it)."""
    model = zoo.get(name)
    model.__class__ = type(f"Changed_{type(model).__name__}", (type(model),),
                           {"forward_batched": forward_batched})
    return model


def _branching_forward_batched(self, images, image_sizes, output_sizes=None):
    if images.mean() > 40:  # a branch on image content
        images = images * 0.25
    return type(self).__mro__[1].forward_batched(self, images, image_sizes, output_sizes)


def branching_detector():
    """A detector whose batched entry point branches on the images' content (a factory
    for `dexport export --model tests.frontends.test_value_dependence:branching_detector`)."""
    return _with_forward_batched("mask_rcnn_tiny", _branching_forward_batched)


def _sized_forward_batched(self, images, image_sizes, output_sizes=None):
    n = int(images.shape[0])  # a size: the probes make it a symbol
    image_sizes = image_sizes.reshape(n, 2)
    return type(self).__mro__[1].forward_batched(self, images, image_sizes, output_sizes)


def sized_detector():
    return _with_forward_batched("mask_rcnn_tiny", _sized_forward_batched)


def _count_forward_batched(self, images, image_sizes, output_sizes=None):
    out = type(self).__mro__[1].forward_batched(self, images, image_sizes, output_sizes)
    k = len(out["scores"])  # the number of detections, baked into the scores below
    return {**out, "scores": out["scores"] * (k / (k + 1))}


# --------------------------------------------------------------------------- refused

def test_scalar_branch_is_refused_with_op_scope_and_source():
    err = _refused(ScalarBranch(), ({"x": torch.ones(3), "n": torch.tensor(2)},))
    assert err.op == "aten::Bool"
    assert err.scope == ""
    assert err.source == _line_of(ScalarBranch.forward, "x.sum() > 0")
    assert "Python bool" in str(err) and "silently wrong" in str(err)
    _assert_one_path_message(err)


def test_branch_in_a_submodule_names_its_scope():
    err = _refused(WithHead(), (torch.rand(2, 3),))
    assert err.scope == "head" and err.source == _line_of(Head.forward, "(x > 0).any()")


def test_scalar_branch_export_writes_nothing(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(CaptureError):
        dexport.export(ScalarBranch(), ({"x": -torch.ones(3), "n": torch.tensor(2)},), out)
    assert not out.exists()


def test_value_taken_by_item_is_refused_even_when_swallowed():
    err = _refused(BakedItem(), (torch.rand(4),))
    assert err.op == "aten::item"
    assert err.source == _line_of(BakedItem.forward, ".item()")


_METHODS = ("__bool__", "__int__", "__index__", "__float__", "item", "tolist", "numpy", "__len__",
            "__iter__", "__repr__", "__format__")
_ORIGINAL_METHODS = {m: torch.Tensor.__dict__.get(m) for m in _METHODS}


def test_tensor_methods_are_restored_after_a_refusal():
    _refused(ScalarBranch(), ({"x": torch.ones(3), "n": torch.tensor(2)},))
    assert {m: torch.Tensor.__dict__.get(m) for m in _METHODS} == _ORIGINAL_METHODS


def test_branch_without_a_conversion_is_caught_by_the_content_probe():
    err = _refused(UnwatchedBranch(), (torch.tensor([1.0, 2.0, 3.0]),))
    assert "content probe" in str(err) and "differs" in str(err)
    _assert_one_path_message(err)


def test_constant_without_a_conversion_is_caught_by_the_content_probe():
    err = _refused(UnwatchedConstant(), (torch.tensor([1.0, 2.0, 3.0]),))
    assert err.op == "aten::mul.Tensor"
    assert "constant 2.0" in str(err) and "3.0" in str(err)
    assert err.source == _line_of(UnwatchedConstant.forward, "torch.equal")


def test_detector_with_a_content_branch_is_refused():
    """The issue's detector: 5/5 images matched at export, 17 detections where eager gave 0."""
    images = [{"image": torch.rand(3, 64, 64) * 255}]
    from dexport.driver import build_graph
    with pytest.raises(CaptureError) as info:
        build_graph(branching_detector(), (images,))
    err = info.value
    assert err.op == "aten::Bool" and err.scope == ""
    assert err.source == _line_of(_branching_forward_batched, "images.mean() > 40")
    _assert_one_path_message(err)


def test_cli_export_of_a_content_branch_exits_2(tmp_path, capsys):
    from dexport.cli import main
    out = tmp_path / "art"
    rc = main(["export", "--model", "tests.frontends.test_value_dependence:branching_detector",
               "--output", str(out), "--size", "64"])
    assert rc == 2 and not out.exists()
    err = capsys.readouterr().err
    assert "aten::Bool" in err and "test_value_dependence.py" in err and "--method scripting" in err


def test_count_baked_into_a_constant_is_refused():
    """A detection count read into Python is left to the probes: baked into the graph,
    it differs on the probes and is refused."""
    model = _with_forward_batched("mask_rcnn_tiny", _count_forward_batched)
    from dexport.cli import sample_images
    from dexport.driver import build_graph
    with pytest.raises(CaptureError, match="constant"):
        build_graph(model, (sample_images(1, 64, seed=0),))


# --------------------------------------------------------------------------- still captured

def test_size_conversions_loops_over_rows_and_printing_are_not_refused(capsys):
    model = SizeConversions()
    x = torch.rand(2, 6, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        graph = dexport.capture(model, (x,))
    other = torch.rand(2, 6, 3)
    torch.testing.assert_close(graph(other), model(other))
    # The tracer's own warnings still name the user's line, not dexport's.
    tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    assert not [w for w in tracer if w.filename == value_dependence.__file__]
    mine = {w.lineno for w in tracer if w.filename.endswith("test_value_dependence.py")}
    assert int(_line_of(SizeConversions.forward, "int(x.shape[0])").rsplit(":", 1)[1]) in mine
    # Nodes made inside a watched conversion (the loop's unbind) keep the user's line.
    unbind = next(n for n in graph.nodes() if n.op.startswith("aten::unbind"))
    assert unbind.meta.source == _line_of(SizeConversions.forward, "for row in x")


def test_branch_on_a_parameter_is_not_refused():
    graph = dexport.capture(ParameterBranch(), (torch.rand(3),))
    x = torch.rand(3)
    torch.testing.assert_close(graph(x), x * 2)


def test_detector_with_a_size_conversion_exports_and_verifies(tmp_path):
    from dexport.cli import main
    out = tmp_path / "art"
    assert main(["export", "--model", "tests.frontends.test_value_dependence:sized_detector",
                 "--output", str(out), "--size", "64"]) == 0


def test_content_probe_keeps_sizes_ranges_and_integer_tensors():
    images = torch.rand(2, 3, 8, 8) * 255
    sizes = torch.tensor([[8, 8], [7, 6]])
    probe = content_probe(({"images": images, "sizes": sizes}, 3))
    assert probe[1] == 3 and probe[0]["sizes"] is sizes
    changed = probe[0]["images"]
    assert changed.shape == images.shape
    assert changed.min() >= images.min() and changed.max() <= images.max()
    assert (changed != images).float().mean() > 0.9 and changed.mean() < images.mean() - 20
    assert content_probe((torch.tensor([1, 2]), "text")) is None
