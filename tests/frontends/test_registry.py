"""Frontends are registered objects; whether probe captures are needed is the
frontend's property, which dexport.capture and the export driver ask."""
import pytest
import torch

import dexport
from dexport.frontends import Frontend, frontend_names, get_frontend, register_frontend
from dexport.frontends.base import unregister_frontend
from dexport.ir.errors import CaptureError


class Scale(torch.nn.Module):
    def forward(self, x):
        return x * 2


class CountingFrontend(Frontend):
    """Tracing underneath, but declared as a frontend whose graphs need no probes."""
    name = "counting"
    needs_probes = False

    def __init__(self):
        self.calls = 0

    def capture(self, model, example_inputs, *, inference_func=None):
        self.calls += 1
        return get_frontend("tracing").capture(model, example_inputs, inference_func=inference_func)


@pytest.fixture
def counting():
    frontend = register_frontend(CountingFrontend())
    yield frontend
    unregister_frontend(frontend.name)


def test_tracing_is_registered_and_needs_probes():
    assert "tracing" in frontend_names() and get_frontend("tracing").needs_probes


def test_unknown_method_lists_the_registered_ones(counting):
    with pytest.raises(CaptureError, match=r"unknown capture method 'magic'[\s\S]*counting, scripting, tracing"):
        dexport.capture(Scale(), (torch.randn(2, 3),), method="magic")


def test_probe_inputs_go_only_to_frontends_that_need_them(counting):
    probes = [(torch.randn(3, 5),), (torch.randn(4, 7),)]
    graph = dexport.capture(Scale(), (torch.randn(2, 3),), method="counting", probe_inputs=probes)
    assert counting.calls == 1 and graph.example_shapes  # captured once, no differential capture
    traced = dexport.capture(Scale(), (torch.randn(2, 3),), probe_inputs=probes)
    assert str(traced.inputs[0].type) != str(graph.inputs[0].type)  # tracing's probes made dims symbolic
