"""PassManager: pipeline text, requires/establishes, and the instruments."""
import os
from dataclasses import dataclass

import pytest
import torch

from dexport.ir import PassError, parse_type
from dexport.ir.parser import parse
from dexport.ir.printer import print_graph
from dexport.passes import Instrument, Pass, PassManager, get_pass, parse_pipeline

TEXT = """graph(%x: f32[2,3]) {
  %one: int = prim::Constant() {value=1}
  %a: f32[2,3] = aten::add.Tensor(%x, %x, %one)
  %b: f32[2,3] = aten::add.Tensor(%x, %x, %one)
  %c: f32[2,3] = aten::mul.Tensor(%a, %b)
  %dead: f32[2,3] = aten::relu(%c)
  return (%c)
}
"""


def _graph():
    return parse(TEXT)


# --------------------------------------------------------------------------- test-only passes

class ChangeAlpha(Pass):
    """Deliberately wrong: turns every constant 1 into 2."""
    name = "change-alpha"

    def run(self, graph):
        changed = False
        for n in graph.nodes():
            if n.op == "prim::Constant" and n.attrs["value"] == 1:
                n.attrs["value"] = 2
                changed = True
        return changed


class Nothing(Pass):
    name = "nothing"

    def run(self, graph):
        return False


class Crash(Pass):
    name = "crash"

    def run(self, graph):
        raise ValueError("boom")


# --------------------------------------------------------------------------- pipeline text

def test_pipeline_text_with_options_and_spaces():
    passes = parse_pipeline(' cse , dce,fold-constants{max_elements=10, inline_elements = 2} ,canonicalize{debug="true"}')
    assert [p.name for p in passes] == ["cse", "dce", "fold-constants", "canonicalize"]
    assert passes[2].options.max_elements == 10 and passes[2].options.inline_elements == 2
    assert passes[3].options.debug is True
    pm = PassManager(passes)
    assert pm.pipeline_text == "cse,dce,fold-constants{max_elements=10,inline_elements=2},canonicalize{debug=true}"
    assert PassManager(pm.pipeline_text).pipeline_text == pm.pipeline_text


def test_string_options_with_separators_round_trip():
    class Labelled(Pass):
        name = "labelled"

        @dataclass(frozen=True)
        class Options:
            label: str = "x"

    spec = Labelled(label="a,b{c}=d e").spec()
    assert spec == 'labelled{label="a,b{c}=d e"}'
    assert Labelled(label="").spec() == 'labelled{label=""}'
    reader_value = parse_pipeline('fold-constants{max_elements="12"}')[0].options.max_elements
    assert reader_value == 12


def test_empty_pipeline_and_empty_braces():
    assert parse_pipeline("") == [] and parse_pipeline("  ") == []
    assert parse_pipeline("dce{}")[0].name == "dce"


@pytest.mark.parametrize("text, message, pos", [
    ("cse,foo", "unknown pass 'foo'", 4),
    ("cse,,dce", "expected a pass name", 4),
    ("dce,fold-constants{colour=1}", "pass 'fold-constants' has no option 'colour'", 4),
    ("fold-constants{max_elements=big}", "option 'max_elements' expects int, got 'big'", 0),
    ("fold-constants{max_elements=1", "expected ',' or '}' after an option, got the end", 29),
    ("fold-constants{max_elements}", "expected '=' after option 'max_elements', got '}'", 27),
    ("fold-constants{max_elements=1,max_elements=2}", "option 'max_elements' given twice", 30),
    ("dce}", "expected ',' between passes, got '}'", 3),
    ('fold-constants{max_elements="1}', "unterminated quoted value", 28),
])
def test_pipeline_errors_name_the_position(text, message, pos):
    with pytest.raises(PassError) as err:
        parse_pipeline(text)
    e = err.value
    assert message in e.what and f"at position {pos} " in e.what
    assert e.context == f"{text}\n{' ' * pos}^"


def test_unknown_pass_in_text_keeps_the_suggestion():
    with pytest.raises(PassError) as err:
        PassManager("dce,csee")
    assert "did you mean 'cse'" in err.value.hint


# --------------------------------------------------------------------------- running

def test_result_reports_changed_passes_and_timing():
    g = _graph()
    result = PassManager("canonicalize,cse,dce", timing=True).run(g)
    assert [r.changed for r in result.records] == [False, True, True]
    assert result.changed and result.changed_passes == ["cse", "dce"]
    assert all(r.seconds is not None and r.seconds >= 0 for r in result.records)
    lines = result.report().splitlines()
    assert lines[0].split() == ["#", "pass", "changed", "seconds"]
    assert lines[2].split()[:3] == ["1", "cse", "yes"]
    assert PassManager("dce").run(_graph()).records[0].seconds is None


def test_dumps_are_named_by_index_and_pass(tmp_path):
    g = _graph()
    before = print_graph(g)
    PassManager("cse,dce", dump_dir=tmp_path / "dumps").run(g)
    names = sorted(os.listdir(tmp_path / "dumps"))
    assert names == ["000_cse.after.ir", "000_cse.before.ir", "001_dce.after.ir", "001_dce.before.ir"]
    read = lambda n: (tmp_path / "dumps" / n).read_text()
    assert read("000_cse.before.ir") == before
    assert read("000_cse.after.ir") == read("001_dce.before.ir")
    assert read("001_dce.after.ir") == print_graph(g)
    assert "aten::relu" in read("001_dce.before.ir") and "aten::relu" not in read("001_dce.after.ir")


def test_validation_names_the_first_pass_that_changed_outputs():
    g = _graph()
    x = torch.randn(2, 3)
    pm = PassManager([Nothing(), "cse", ChangeAlpha(), "dce"], validate_with=(x,))
    with pytest.raises(PassError) as err:
        pm.run(g)
    what = err.value.what
    assert "pass 'change-alpha' (#2 in the pipeline) changed the graph's outputs" in what
    expected = float(((3 * x) * (3 * x) - (2 * x) * (2 * x)).abs().max())
    assert "output 0 differs by max abs error" in what
    assert float(what.split("max abs error ")[1].split()[0]) == pytest.approx(expected, rel=1e-4)


def test_validation_catches_a_pass_that_claims_no_change():
    class Sneaky(ChangeAlpha):
        name = "sneaky"

        def run(self, graph):
            super().run(graph)
            return False

    with pytest.raises(PassError, match=r"pass 'sneaky' \(#0 in the pipeline\) changed the graph's outputs"):
        PassManager([Sneaky()], validate_with=(torch.randn(2, 3),)).run(_graph())


def test_validation_passes_for_correct_passes_and_respects_atol():
    x = torch.randn(2, 3)
    PassManager("cse,dce,canonicalize,fold-constants", validate_with=(x,)).run(_graph())
    # ChangeAlpha changes outputs by 5x^2; a huge atol accepts that.
    PassManager([ChangeAlpha()], validate_with=x, atol=1e9).run(_graph())


def test_validation_skips_passes_that_change_the_signature():
    class DropOutput(ChangeAlpha):
        name = "drop-output"
        changes_signature = True

    PassManager([DropOutput(), "dce"], validate_with=(torch.randn(2, 3),)).run(_graph())


def test_validation_reports_a_graph_that_no_longer_runs():
    class BreakShape(Pass):
        name = "break-shape"

        def run(self, graph):
            x = graph.inputs[0]
            add = next(n for n in graph.nodes() if n.op == "aten::mul.Tensor")
            t = graph.create_node("aten::t", [x], [x.type], before=add)
            add.replace_input(1, t.output)
            return True

    with pytest.raises(PassError, match=r"pass 'break-shape' \(#0 in the pipeline\): the graph no longer runs"):
        PassManager([BreakShape()], validate_with=(torch.randn(2, 3),)).run(_graph())


def test_crashing_pass_becomes_a_pass_error():
    with pytest.raises(PassError, match=r"pass 'crash' \(#1 in the pipeline\) crashed: ValueError: boom"):
        PassManager(["dce", Crash()]).run(_graph())


def test_instrument_hooks_nest_around_each_pass():
    calls = []

    class Recorder(Instrument):
        def __init__(self, tag):
            self.tag = tag

        def before_pipeline(self, graph):
            calls.append((self.tag, "start"))

        def before_pass(self, index, p, graph):
            calls.append((self.tag, "before", index, p.name))

        def after_pass(self, index, p, graph, record):
            calls.append((self.tag, "after", index, record.changed))

    PassManager("dce", instruments=[Recorder("outer"), Recorder("inner")]).run(_graph())
    assert calls == [("outer", "start"), ("inner", "start"),
                     ("outer", "before", 0, "dce"), ("inner", "before", 0, "dce"),
                     ("inner", "after", 0, True), ("outer", "after", 0, True)]


# --------------------------------------------------------------------------- requires / establishes

class MakesFrozen(Nothing):
    name = "makes-frozen"
    establishes = ("frozen",)


class NeedsFrozen(Nothing):
    name = "needs-frozen"
    requires = ("frozen",)


class Thaws(ChangeAlpha):
    name = "thaws"
    invalidates = ("frozen",)


def test_requires_must_be_established_first():
    with pytest.raises(PassError, match=r"pass 'needs-frozen' \(#0 in the pipeline\) requires 'frozen'"):
        PassManager([NeedsFrozen()]).run(_graph())
    PassManager([MakesFrozen(), NeedsFrozen()]).run(_graph())
    PassManager([NeedsFrozen()], assume=["frozen"]).run(_graph())


def test_a_pass_that_changed_the_graph_invalidates():
    with pytest.raises(PassError, match="requires 'frozen', which no earlier pass established"):
        PassManager([MakesFrozen(), Thaws(), NeedsFrozen()]).run(_graph())
    g = _graph()
    PassManager([ChangeAlpha()]).run(g)  # no constant 1 left: Thaws changes nothing below
    PassManager([MakesFrozen(), Thaws(), NeedsFrozen()]).run(g)


class Counts(Pass):
    """Records that it ran."""
    name = "counts"
    runs = 0

    def run(self, graph):
        Counts.runs += 1
        return False


def test_an_unmet_requirement_fails_before_any_pass_runs():
    Counts.runs = 0
    with pytest.raises(PassError) as err:
        PassManager([Counts(), NeedsFrozen(), MakesFrozen()]).run(_graph())
    e = err.value
    assert "pass 'needs-frozen' (#1 in the pipeline) requires 'frozen', which no earlier pass establishes" in e.what
    assert e.hint.startswith("no registered pass establishes 'frozen'")
    assert Counts.runs == 0  # nothing ran


def test_the_hint_names_the_registered_pass_that_establishes_it():
    from dexport.passes.base import _REGISTRY, register_pass
    try:
        register_pass(MakesFrozen)
        with pytest.raises(PassError) as err:
            PassManager([NeedsFrozen()]).run(_graph())
        assert err.value.hint == "run one of these passes before it: makes-frozen"
    finally:
        _REGISTRY.pop("makes-frozen", None)


def test_decompose_with_an_unknown_target_fails_before_any_pass_runs():
    Counts.runs = 0
    with pytest.raises(PassError, match=r"pass 'decompose\{target=nowhere\}' \(#1 in the pipeline\): "
                                        r"decompose: unknown target 'nowhere'"):
        PassManager([Counts(), get_pass("decompose", target="nowhere")]).run(_graph())
    assert Counts.runs == 0


def test_fix_batch_dim_dynamic_requires_a_probed_batch():
    g = _graph()  # inputs f32[2,3]: no symbolic N
    with pytest.raises(PassError, match=r"pass 'fix-batch-dim' \(#0 in the pipeline\) requires "
                                        r"'batch-probed': the graph's inputs \(f32\[2,3\]\) have no "
                                        r"symbolic batch dim N") as err:
        PassManager("fix-batch-dim").run(g)
    assert "probe_inputs" in err.value.hint
    assert get_pass("fix-batch-dim", batch=2).requires == ()
    g = parse(TEXT.replace("f32[2,3]", "f32[N,3]"))
    PassManager("fix-batch-dim,dce").run(g)  # the check reads the property off the graph


def test_a_stage_requirement_is_checked_with_the_verifier():
    class NeedsTensorsOnly(Nothing):
        name = "needs-tensors-only"
        requires = ("tensors-only",)

    PassManager([NeedsTensorsOnly()]).run(_graph())


# --------------------------------------------------------------------------- verify after each pass

class UseBeforeDef(Pass):
    """Deliberately broken: moves the last node to the front of the graph."""
    name = "use-before-def"

    def run(self, graph):
        last = graph.block.return_node.prev
        last.move_before(next(graph.nodes()))
        return True


def test_verify_each_names_the_broken_pass_with_the_verifier_message(tmp_path):
    g = _graph()
    pm = PassManager(["cse", UseBeforeDef(), "dce"], verify_each=True, dump_dir=tmp_path)
    with pytest.raises(PassError) as err:
        pm.run(g)
    e = err.value
    assert e.what.startswith("pass 'use-before-def' (#1 in the pipeline) left a graph that fails the 'typed' verifier: ")
    assert e.op == "aten::relu" and ">>" in e.context
    # the after-dump of the broken pass is written before the verifier runs
    assert (tmp_path / "001_use-before-def.after.ir").exists()
    assert not (tmp_path / "002_dce.before.ir").exists()


def test_without_verify_each_the_broken_graph_goes_through():
    PassManager(["cse", UseBeforeDef()]).run(_graph())


def test_a_stage_requirement_the_graph_fails():
    class NeedsBackendReady(Nothing):
        name = "needs-backend-ready"
        requires = ("backend-ready",)

    g = parse("""graph(%x: f32[2]) {
  %r: record Box{t: f32[2]} = struct::construct(%x) {kind="Box", fields=["t"]}
  %y: f32[2] = struct::get(%r) {field="t"}
  return (%y)
}
""")
    with pytest.raises(PassError, match=r"pass 'needs-backend-ready' \(#0 in the pipeline\) requires a "
                                        r"'backend-ready' graph, and the verifier rejects it"):
        PassManager([NeedsBackendReady()]).run(g)
    # an assumed property is taken on trust
    PassManager([NeedsBackendReady()], assume=["backend-ready"]).run(g)


def test_verify_each_checks_the_strictest_established_stage():
    class MakesRecord(Pass):
        """Deliberately breaks tensors-only while claiming to keep it."""
        name = "makes-record"

        def run(self, graph):
            x = graph.inputs[0]
            rec = graph.create_node("struct::construct", [x], [parse_type("record Box{t: f32[2,3]}")],
                                    {"kind": "Box", "fields": ["t"]}, before=graph.block.return_node)
            get = graph.create_node("struct::get", [rec.output], [x.type], {"field": "t"},
                                    before=graph.block.return_node)
            graph.set_outputs([get.output])
            return True

    PassManager([MakesRecord()], verify_each=True).run(_graph())
    with pytest.raises(PassError, match="fails the 'tensors-only' verifier"):
        PassManager([MakesRecord()], verify_each=True, assume=["tensors-only"]).run(_graph())


# --------------------------------------------------------------------------- shared helpers

def test_max_abs_error_counts_equal_specials_as_equal_and_nan_as_infinite():
    from dexport.passes import abs_errors, max_abs_error
    inf, nan = float("inf"), float("nan")
    a = torch.tensor([1.0, inf, nan, -inf])
    assert max_abs_error(a, a.clone()) == 0.0
    assert max_abs_error(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 2.0], dtype=torch.float64)) == 0.5
    assert abs_errors(torch.tensor([nan, 1.0, inf]), torch.tensor([1.0, 1.0, 2.0])).tolist() == [inf, 0.0, inf]
    assert max_abs_error(torch.empty(0), torch.empty(0)) == 0.0
    assert max_abs_error(torch.tensor([3], dtype=torch.int64), torch.tensor([1], dtype=torch.int64)) == 2.0


def test_the_inline_threshold_has_one_home():
    from dexport.ir.graph import SMALL_TENSOR_NUMEL
    assert get_pass("fold-constants").options.inline_elements == SMALL_TENSOR_NUMEL
