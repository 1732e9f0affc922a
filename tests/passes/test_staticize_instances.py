"""staticize-instances: user models (plain torch + the static Instances of
dexport.scripting_with_instances) scripted, imported (objects -> struct records),
then scalar-replaced: no struct:: op is left, and the interpreter agrees with eager
on inputs not used for anything else."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import dexport
from dexport.frontends.jit_importer import JitImporter
from dexport.frontends.tracing import relative_source_path
from dexport.ir import interpreter
from dexport.ir.dialects.struct import Record
from dexport.ir.dialects.structures import Boxes, Instances
from dexport.ir.errors import PassError
from dexport.passes import PassManager, get_pass

FIELDS = {"pred_boxes": Boxes, "scores": torch.Tensor, "pred_classes": torch.Tensor}
MASK_FIELDS = {**FIELDS, "pred_masks": torch.Tensor}
_LOCATION = re.compile(r'File "([^"]+)", line (\d+)')


def _source_of(text: str) -> str:
    m = _LOCATION.search(text)
    return f"{relative_source_path(m.group(1))}:{m.group(2)}" if m else ""


def _import(model: nn.Module, fields=FIELDS):
    """The scripted model's inlined graph in the IR (what the scripting frontend does)."""
    scripted = dexport.scripting_with_instances(model, fields)
    jit_graph = scripted.graph.copy()
    torch._C._jit_pass_inline(jit_graph)
    return JitImporter(scripted, "", _source_of, example_shapes=False, scripted=True).convert(jit_graph)


def _staticized(model: nn.Module, fields=FIELDS):
    graph = _import(model, fields)
    assert graph.find_nodes("struct::set"), "the importer made records of the objects"
    PassManager("staticize-instances,dce", verify_each=True).run(graph)
    assert not [n.op for n in graph.nodes() if n.op.startswith("struct::")]
    return graph


def _line_of(fn, text: str) -> int:
    import inspect
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if text in line)


def _assert_same_instances(got, want):
    assert type(got) is Instances and type(want) is Instances
    assert tuple(got.image_size) == tuple(want.image_size)
    assert set(got.fields) == set(want.fields)
    for name, value in want.fields.items():
        other = got.fields[name]
        if isinstance(value, Boxes):
            value, other = value.tensor, other.tensor
        torch.testing.assert_close(other, value, rtol=0, atol=0)


class BranchAndSelect(nn.Module):
    """Fields set through set(), attributes and both arms of a data-dependent If, a
    has() test, Boxes inside, and Instances.__getitem__ (which copies only set fields)."""

    def forward(self, x: torch.Tensor):
        inst = Instances((x.shape[0], 4))
        inst.scores = x.sum(dim=1).sigmoid()
        inst.set("pred_boxes", Boxes(x.abs().cumsum(dim=1)))
        if bool(x.sum() > 0):
            inst.pred_classes = x.argmax(dim=1)
        else:
            inst.pred_classes = x.argmin(dim=1) + 10
        if inst.has("pred_classes"):
            inst.scores = inst.scores * 2
        keep = inst.scores > 1.0
        return inst[keep]


@pytest.mark.parametrize("x", [torch.randn(7, 4, generator=torch.Generator().manual_seed(1)) + 0.5,
                               -torch.rand(5, 4, generator=torch.Generator().manual_seed(2)) - 0.1,
                               torch.zeros(0, 4)], ids=["then", "else", "empty"])
def test_branches_and_getitem(x):
    graph = _staticized(BranchAndSelect())
    got = interpreter.run_structured(graph, (x,))
    _assert_same_instances(got, BranchAndSelect()(x))
    # only tensors (and the image size) leave the graph; the schema rebuilds the record
    assert graph.output_schema.kind == "Instances"
    assert graph.output_schema.fields == ("image_size", "pred_boxes", "scores", "pred_classes")


def test_records_run_in_the_interpreter_before_the_pass():
    graph = _import(BranchAndSelect())
    assert graph.find_nodes("struct::construct") and graph.find_nodes("struct::get")
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))
    (record,) = interpreter.run(graph, [x])
    want = BranchAndSelect()(x)
    assert isinstance(record, Record) and record.kind == "Instances"
    torch.testing.assert_close(record.fields["scores"], want.scores)
    torch.testing.assert_close(record.fields["pred_boxes"].fields["tensor"], want.pred_boxes.tensor)
    assert record.fields["image_size"] == want.image_size


class LoopCarried(nn.Module):
    """A record changed on every trip of a data-dependent loop (object mutation and
    re-binding), returned in a tuple with a tensor."""

    def forward(self, x: torch.Tensor):
        inst = Instances((x.shape[0], x.shape[1]))
        inst.scores = x.sum(dim=1)
        inst.pred_classes = torch.arange(x.shape[0])
        total = torch.zeros(())
        for i in range(int(x.shape[1])):
            inst.scores = inst.scores * 0.5 + x[:, i].mean() - 0.3
            inst = inst[inst.scores > -0.6]
            total = total + inst.scores.sum()
        return inst, total


def test_loop_carried_record_and_tuple_output():
    graph = _staticized(LoopCarried())
    assert graph.find_nodes("prim::Loop")
    for seed, shape in [(4, (9, 3)), (5, (4, 6)), (6, (3, 0))]:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
        got_inst, got_total = interpreter.run_structured(graph, (x,))
        want_inst, want_total = LoopCarried()(x)
        _assert_same_instances(got_inst, want_inst)
        torch.testing.assert_close(got_total, want_total)


class MasksOnOnePath(nn.Module):
    def forward(self, x: torch.Tensor):
        inst = Instances((x.shape[0], 1))
        inst.scores = x.sum(dim=1)
        if bool(x.sum() > 0):
            inst.pred_masks = x > 0
        return inst


def test_field_set_on_one_path_is_an_error_naming_both_paths():
    graph = _import(MasksOnOnePath(), MASK_FIELDS)
    with pytest.raises(PassError) as info:
        get_pass("staticize-instances").run(graph)
    err = info.value
    file = "tests/passes/test_staticize_instances.py"
    if_line = _line_of(MasksOnOnePath.forward, "if bool(")
    set_line = _line_of(MasksOnOnePath.forward, "inst.pred_masks =")
    assert "'pred_masks' is set on one path and not on the other" in err.what
    assert f"the then branch (from {file}:{set_line}) sets it at {file}:{set_line}" in err.what
    assert "the else branch" in err.what and "leaves it unset" in err.what
    assert err.source == f"{file}:{if_line}"
    assert "on both paths" in err.hint


class MasksSetInLoopOnly(nn.Module):
    def forward(self, x: torch.Tensor):
        inst = Instances((x.shape[0], 1))
        inst.scores = x.sum(dim=1)
        for i in range(int(x.shape[0])):
            inst.pred_masks = x > i
        return inst


def test_field_first_set_inside_a_loop_is_an_error():
    graph = _import(MasksSetInLoopOnly(), MASK_FIELDS)
    with pytest.raises(PassError, match="'pred_masks' is unset before the loop .* depends on the number of trips"):
        get_pass("staticize-instances").run(graph)


class IntoAList(nn.Module):
    """Records stored in a list stay records there (rebuilt from their fields)."""

    def forward(self, x: torch.Tensor):
        out: list[Instances] = []
        for i in range(int(x.shape[0])):
            inst = Instances((i, 1))
            inst.scores = x[i]
            out.append(inst)
        return out


def test_record_in_a_list_is_rebuilt_from_its_fields():
    graph = _import(IntoAList(), FIELDS)
    get_pass("staticize-instances").run(graph)
    assert not graph.find_nodes("struct::set") and not graph.find_nodes("struct::get")
    assert len(graph.find_nodes("struct::construct")) == 1
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(8))
    (records,) = interpreter.run(graph, [x])
    assert [r.fields["image_size"] for r in records] == [(0, 1), (1, 1), (2, 1)]
    for r, row in zip(records, x):
        torch.testing.assert_close(r.fields["scores"], row)
        assert r.fields["pred_classes"] is None


def test_pass_without_records_changes_nothing():
    graph = _import(BranchAndSelect())
    PassManager("staticize-instances").run(graph)
    text = str(graph)
    assert not get_pass("staticize-instances").run(graph)
    assert str(graph) == text


@pytest.mark.parametrize("stage", ["imported", "staticized"])
def test_ir_text_round_trips(stage):
    from dexport.ir.parser import parse
    graph = _import(LoopCarried()) if stage == "imported" else _staticized(LoopCarried())
    text = str(graph)
    assert ("struct::set" in text) == (stage == "imported")
    assert str(parse(text, dict(graph.params))) == text


class OverLiteralNames(nn.Module):
    """A loop over a literal list of names (as the zoo's Postprocess builds its dict)."""

    def forward(self, x: torch.Tensor):
        total = torch.zeros(())
        for name in ["a", "bb", "ccc"]:
            total = total + x.sum() * len(name)
        return total


def test_canonicalize_unrolls_a_loop_over_a_literal_list():
    # torch's generic list kernels (len.t, __getitem__.t) cannot run from Python, so it is
    # canonicalize that reads them off the constant list; the loop is then unrolled.
    graph = _import(OverLiteralNames())
    assert graph.find_nodes("prim::Loop")
    PassManager("canonicalize,dce").run(graph)
    assert not graph.find_nodes("prim::Loop") and not graph.find_nodes("aten::__getitem__.t")
    x = torch.randn(3, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(interpreter.run(graph, [x])[0], OverLiteralNames()(x))


class ClipInPlace(nn.Module):
    """A field's object changed in place (Boxes.clip) on one path: the record sees it."""

    def forward(self, x: torch.Tensor):
        inst = Instances((x.shape[0], 4))
        inst.pred_boxes = Boxes(x * 10)
        if bool(x.sum() > 0):
            inst.pred_boxes.clip((5, 6))
        inst.scores = inst.pred_boxes.area()
        return inst


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_field_object_changed_in_place(sign):
    graph = _staticized(ClipInPlace())
    x = sign * torch.rand(6, 4, generator=torch.Generator().manual_seed(10))
    _assert_same_instances(interpreter.run_structured(graph, (x,)), ClipInPlace()(x))


class BoxesThroughALoop(nn.Module):
    """A record inside a loop-carried record: its fields are carried too."""

    def forward(self, x: torch.Tensor):
        inst = Instances((x.shape[0], 4))
        inst.pred_boxes = Boxes(x.abs() * 10)
        inst.scores = x.sum(dim=1)
        for i in range(int(x.shape[0])):
            inst.pred_boxes.scale(0.5, 2.0)
            inst = inst[inst.pred_boxes.area() > float(i)]
        return inst


def test_record_in_a_loop_carried_record():
    graph = _staticized(BoxesThroughALoop())
    for seed, rows in [(11, 5), (12, 2), (13, 0)]:
        x = torch.randn(rows, 4, generator=torch.Generator().manual_seed(seed))
        _assert_same_instances(interpreter.run_structured(graph, (x,)), BoxesThroughALoop()(x))


def test_pass_is_idempotent_on_records_left_in_lists():
    graph = _import(IntoAList(), FIELDS)
    assert get_pass("staticize-instances").run(graph)
    text = str(graph)
    assert not get_pass("staticize-instances").run(graph)
    assert str(graph) == text
