"""Lowering tables are layered data: a child table inherits its parent's lowerings and
adds or overrides its own (caffe2-flavoured ONNX = the ONNX table + caffe2 ops), and
every real backend's table covers every op of dexport's own dialect."""
import numpy as np
import pytest
import torch

from dexport.backends import LoweringTable
from dexport.backends.base import builtin_backends
from dexport.backends.onnx import LOWERINGS, check_support, emit_onnx, run_onnx
from dexport.ir import parse
from dexport.ir.errors import DexportError, UnsupportedOpsError
from dexport.ir.ops import has_op, registered_ops

GRAPH = """graph(%x: f32[N,4]) {
  %a: f32[N,4] = aten::relu(%x)
  %b: f32[N,4] = caffe2::Twice(%a)  # head @ h.py:1
  return (%b)
}"""


def _twice(ctx, node):
    x = ctx.input(node, 0)
    return [ctx.op("Add", x, x)]


def test_a_child_table_inherits_its_parent_and_adds_its_own_ops():
    child = LoweringTable("caffe2-test", parent=LOWERINGS, entries={"caffe2::Twice": _twice})
    assert child.lookup("aten::relu") is LOWERINGS.lookup("aten::relu")  # falls back to the parent
    assert "caffe2::Twice" in child and "caffe2::Twice" not in LOWERINGS  # the parent is unchanged
    assert child.own_ops() == ["caffe2::Twice"]
    assert set(child.ops()) == set(LOWERINGS.ops()) | {"caffe2::Twice"} and child.ops() == sorted(child.ops())
    assert child.lookup("foo::bar") is None and child.get("foo::bar") is None
    with pytest.raises(KeyError):
        child["foo::bar"]


def test_a_child_entry_overrides_the_parents_and_emission_uses_the_child_table():
    graph = parse(GRAPH)
    with pytest.raises(UnsupportedOpsError, match="caffe2::Twice"):
        emit_onnx(graph)
    child = LoweringTable("caffe2-test", parent=LOWERINGS, entries={"caffe2::Twice": _twice})
    assert check_support(graph, child) == [] and [m.op for m in check_support(graph)] == ["caffe2::Twice"]
    x = np.array([[-1, 2, -3, 4]], dtype=np.float32)
    np.testing.assert_array_equal(run_onnx(emit_onnx(graph, table=child), [x])[0], [[0, 4, 0, 8]])

    def negated_relu(ctx, node):  # an override: this table's relu is another one
        return [ctx.op("Neg", ctx.op("Relu", ctx.input(node, 0)))]
    child["aten::relu"] = negated_relu
    assert child["aten::relu"] is negated_relu and LOWERINGS["aten::relu"] is not negated_relu
    np.testing.assert_array_equal(run_onnx(emit_onnx(graph, table=child), [x])[0], [[0, -4, 0, -8]])
    del child["aten::relu"]
    assert child["aten::relu"] is LOWERINGS["aten::relu"]


def test_registering_an_op_twice_in_one_table_is_an_error_but_a_child_may_override():
    table = LoweringTable("t", entries={"foo::a": _twice})
    with pytest.raises(DexportError, match="already has a lowering in the 't' table"):
        table.register("foo::a")(_twice)
    child = LoweringTable("c", parent=table)
    child.register("foo::a")(_twice)  # its own entry, not a clash with the parent's
    assert child.own_ops() == ["foo::a"]


def test_a_table_imports_its_lowering_modules_on_first_lookup():
    table = LoweringTable("lazy", modules=("tests.backends.lazy_lowerings_missing",))
    with pytest.raises(ModuleNotFoundError):
        table.lookup("aten::relu")


def _dexport_ops() -> list[str]:
    """Every op of dexport's own dialect: torch.library ops in the ``dexport`` namespace
    and ops registered with the IR. Private ones (``_roi_align_backward``, an autograd
    helper of training) never appear in an exported graph."""
    assert has_op("dexport::nms")  # loads the op library
    names = {n for n in torch._C._dispatch_get_all_op_names() if n.startswith("dexport::")}
    names |= {n for n in registered_ops() if n.startswith("dexport::")}
    return sorted(n for n in names if not n.split("::", 1)[1].startswith("_"))


def test_every_dexport_op_has_a_lowering_in_every_real_backend():
    ops = _dexport_ops()
    assert "dexport::roi_align" in ops and "dexport::paste_masks" in ops
    real = builtin_backends()
    assert [b.name for b in real] == ["onnx", "torchscript"]
    missing = [(b.name, op) for b in real for op in ops if not b.supports(op)]
    assert missing == []
