"""Dumps a person can open: IR text that parses back, DOT, SVG, TorchScript IR files."""
import xml.etree.ElementTree as ET

import pytest
import torch

from dexport.dump import dump_ir, dump_torchscript_IR
from dexport.ir import DexportError, Graph, TensorType, parse

F32 = TensorType(torch.float32, (1, "H"))


def _graph_with_if():
    g = Graph()
    x = g.add_input(F32, "x")
    c = g.add_input(TensorType(torch.bool, ()), "c")
    relu = g.create_node("aten::relu", [x], [F32])
    branch = g.create_node("prim::If", [c], [F32])
    then, other = branch.add_block(), branch.add_block()
    then.set_returns([relu.output])
    neg = g.create_node("aten::neg", [x], [F32], block=other)
    other.set_returns([neg.output])
    g.set_outputs([branch.output])
    return g


def test_dump_ir_writes_text_dot_and_svg(tmp_path):
    g = _graph_with_if()
    paths = dump_ir(g, tmp_path / "dumps")
    assert str(parse(paths["ir"].read_text())) == str(g)
    dot = paths["dot"].read_text()
    assert dot.startswith("digraph dexport {") and "prim::If" in dot and "aten::relu" in dot
    assert "in0 -> " in dot and "-> out0" in dot
    svg = ET.parse(paths["svg"]).getroot()  # well-formed XML
    texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert "prim::If" in texts and "(1 nested nodes)" in texts
    assert sorted(p.name for p in (tmp_path / "dumps").iterdir()) == ["graph.dot", "graph.ir", "graph.svg"]


def test_dump_ir_is_byte_identical_across_runs(tmp_path):
    a = dump_ir(_graph_with_if(), tmp_path / "a")
    b = dump_ir(_graph_with_if(), tmp_path / "b")
    assert all(a[k].read_bytes() == b[k].read_bytes() for k in a)


def test_dump_torchscript_IR(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    traced = torch.jit.trace(model, torch.randn(1, 3, 8, 8))
    paths = dump_torchscript_IR(traced, tmp_path)
    assert set(paths) == {"model.txt", "model_ts_code.txt", "model_ts_IR.txt", "model_ts_IR_inlined.txt"}
    assert "aten::_convolution" in paths["model_ts_IR_inlined.txt"].read_text()
    assert "torch._convolution" in paths["model_ts_code.txt"].read_text()
    assert "Conv2d" in paths["model.txt"].read_text()


def test_dump_torchscript_IR_refuses_eager_modules(tmp_path):
    with pytest.raises(DexportError, match="needs a traced or scripted module"):
        dump_torchscript_IR(torch.nn.ReLU(), tmp_path)
