"""The scripting frontend: torch.jit.script of a model (or one of its methods) captured
with its control flow, run by the interpreter, exported to ONNX and TorchScript, right
on inputs whose branches and trip counts differ from the example's."""
from typing import Dict, List, Tuple

import pytest
import torch
from torch import nn

import dexport
from dexport.ir import verify
from dexport.ir.errors import CaptureError, DexportError
from dexport.ir.interpreter import run_structured
from dexport.ir.parser import parse
from dexport.ir.printer import print_graph
from dexport.passes import PassManager


class PerChannelGate(nn.Module):
    """A data-dependent Python loop and branch: every channel is added or subtracted
    depending on its mean, and rows are kept until their running sum passes a limit."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.scale = 3
        self.limit = 2.0

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        y = torch.relu_(self.bn(self.conv(x)))
        acc = torch.zeros_like(y[:, 0])
        for i in range(y.shape[1]):
            if bool(y[:, i].mean() > 0.3):
                acc = acc + y[:, i]
            else:
                acc = acc - y[:, i] * self.scale
        total = torch.zeros(1)
        kept = 0
        while kept < x.shape[0] and bool(total.sum() < self.limit):
            total = total + acc[kept].abs().mean()
            kept += 1
        return {"acc": acc, "total": total, "kept": torch.tensor(kept)}


def _gate():
    torch.manual_seed(0)
    model = PerChannelGate().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model


def _images(n, h, w, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, h, w, generator=g) + shift


# Held-out inputs: other batch sizes and resolutions, and shifts that flip the branches
# and change the while loop's trip count.
HELD_OUT = [(_images(2, 9, 7, 1),), (_images(3, 6, 11, 2, shift=1.0),), (_images(1, 5, 5, 3, shift=-1.0),)]


def _close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4, msg=k)


def test_control_flow_is_captured_and_interpreted_like_eager_on_other_inputs():
    model = _gate()
    graph = dexport.capture(model, (_images(1, 8, 8, 0),), method="scripting")
    ops = {n.op for n in graph.nodes()}
    assert {"prim::Loop", "prim::If"} <= ops
    assert str(graph.inputs[0].type) == "f32[N,3,H,W]"  # batch and resolution symbolic, no probes
    verify(graph)
    branches_taken = set()
    for (x,) in HELD_OUT:
        with torch.no_grad():
            expected = model(x)
        _close(run_structured(graph, (x,)), expected)
        branches_taken.add(int(expected["kept"]))
    assert len(branches_taken) > 1  # the held-out inputs do run the while loop differently


def test_tracing_refuses_the_data_dependent_branch_and_scripting_exports_it(tmp_path):
    model = _gate()
    example = (_images(1, 8, 8, 0),)
    with pytest.raises(DexportError, match="value"):
        dexport.export(model, example, tmp_path / "traced", format="onnx", method="tracing")
    assert not (tmp_path / "traced").exists()
    for fmt in ("onnx", "torchscript"):
        result = dexport.export(model, example, tmp_path / fmt, format=fmt, method="scripting",
                                check_inputs=HELD_OUT[:2])
        assert result.verification.ok
        loaded = dexport.load(tmp_path / fmt)
        (x,) = HELD_OUT[2]
        with torch.no_grad():
            _close(loaded(x), model(x))


def test_passes_keep_scripted_behaviour_and_the_text_round_trips():
    model = _gate()
    graph = dexport.capture(model, (_images(1, 8, 8, 0),), method="scripting")
    PassManager("functionalize,canonicalize,cse,fold-constants,infer-types,dce", verify_each=True).run(graph)
    assert not any(n.op.endswith("_") and n.op.startswith("aten::relu") for n in graph.nodes())
    text = print_graph(graph)
    again = parse(text)
    assert print_graph(again) == text
    for (x,) in HELD_OUT:
        with torch.no_grad():
            _close(run_structured(graph, (x,)), model(x))


def test_scopes_and_source_lines_are_the_models():
    graph = dexport.capture(_gate(), (_images(1, 8, 8, 0),), method="scripting")
    conv = next(n for n in graph.nodes() if n.op.startswith("aten::conv2d"))
    assert conv.meta.scope == "conv"
    # The model's own loops carry its lines (torch's functional code inlined by scripting
    # has loops of its own, whose lines are not the user's and are left out).
    loops = {n.meta.source.rsplit("/", 1)[-1] for n in graph.nodes() if n.op == "prim::Loop"}
    assert {f"test_scripting.py:{_line_of('for i in range')}", f"test_scripting.py:{_line_of('while kept')}"} <= loops


def _line_of(text: str) -> int:
    import inspect
    lines, start = inspect.getsourcelines(PerChannelGate.forward)
    return start + next(i for i, line in enumerate(lines) if text in line)


class Structured(nn.Module):
    """Tuple, list and dict arguments and results."""

    def forward(self, pair: Tuple[torch.Tensor, torch.Tensor], items: List[torch.Tensor],
                named: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        total = pair[0] * pair[1]
        for t in items:
            total = total + t.sum()
        out: Dict[str, torch.Tensor] = {}
        out["scaled"] = total * named["w"]
        out["count"] = torch.tensor(len(items))
        return total, out


def test_structured_arguments_and_results():
    model = Structured()
    args = ((torch.randn(2, 3), torch.randn(2, 3)), [torch.randn(4), torch.randn(5)], {"w": torch.randn(3)})
    graph = dexport.capture(model, args, method="scripting")
    PassManager("functionalize,canonicalize,cse,fold-constants,infer-types,dce", verify_each=True).run(graph)
    # The structures built in the graph fold away: tensors only in the end.
    assert not {"prim::DictConstruct", "prim::TupleConstruct", "aten::_set_item.str"} & {n.op for n in graph.nodes()}
    other = ((torch.randn(5, 3), torch.randn(5, 3)), [torch.randn(7), torch.randn(1)], {"w": torch.randn(3)})
    got, expected = run_structured(graph, other), model(*other)
    torch.testing.assert_close(got[0], expected[0])
    _close(got[1], expected[1])


class ForwardNotScriptable(nn.Module):
    """A list-API forward scripting cannot compile, and a tensor method it can."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, batch, **options):
        return [self.tensor_entry(x["x"]) for x in batch]

    def tensor_entry(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 2:
            return self.lin(x).softmax(-1)
        return self.lin(x)


def test_only_the_named_method_is_compiled():
    model = ForwardNotScriptable()
    graph = dexport.capture(model, (torch.randn(3, 4),), method="scripting", inference_func="tensor_entry")
    for rows in (1, 5):
        x = torch.randn(rows, 4)
        torch.testing.assert_close(run_structured(graph, (x,)), model.tensor_entry(x))


def test_code_torchscript_cannot_compile_is_a_capture_error_at_the_users_line():
    with pytest.raises(CaptureError) as info:
        dexport.capture(ForwardNotScriptable(), ([{"x": torch.randn(3, 4)}],), method="scripting")
    err = info.value
    assert "torch.jit.script cannot compile" in str(err)
    assert err.source and err.source.split(":")[0].endswith("test_scripting.py")
    assert "method='tracing'" in str(err)


def test_a_python_inference_function_is_refused_with_the_way_out():
    with pytest.raises(CaptureError, match="name of the model's method"):
        dexport.capture(ForwardNotScriptable(), (torch.randn(3, 4),), method="scripting",
                        inference_func=lambda m, x: m.tensor_entry(x))


def test_scripting_is_registered_without_probes():
    from dexport.frontends import get_frontend
    assert not get_frontend("scripting").needs_probes


def test_the_ir_text_of_a_scripted_mask_rcnn_round_trips_through_the_parser():
    from dexport.cli import sample_images
    from dexport.driver import batched_inputs
    from dexport.models import zoo
    graph = dexport.capture(zoo.get("mask_rcnn_tiny"), batched_inputs((sample_images(1, 96, seed=0),)),
                            method="scripting", inference_func="forward_batched")
    assert any(n.op == "prim::If" for n in graph.nodes())
    text = print_graph(graph)
    again = parse(text, params=graph.params)
    verify(again)
    assert print_graph(again) == text
