"""Program: named graphs with an entry and a host graph; text form, verifier, running."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dexport.ir import (IRParseError, Program, VerificationError, load_program, parse,
                        parse_program, verify)
from tests.ir.strategies import graphs

MAIN = """graph(%x: f32[2,3]) {
  %w: f32[2,3] = prim::Param() {name="w"}
  %one: int = prim::Constant() {value=1}
  %y: f32[2,3] = aten::add.Tensor(%x, %w, %one)  # backbone @ models/net.py:3
  %z: f32[2,3] = aten::neg(%y)
  return (%y, %z)
}
"""
HOST = """graph(%y: f32[2,3], %z: f32[2,3]) {
  %m: f32[2,3] = aten::mul.Tensor(%y, %z)  # postprocess @ models/net.py:9 [postprocess]
  %r: f32[2,3] = aten::relu(%m)
  return (%r)
}
"""
W = torch.arange(6.0).reshape(2, 3)


def _program():
    return Program({"main": parse(MAIN, {"w": W}), "postprocess": parse(HOST)},
                   entry="main", host="postprocess")


def test_text_form_names_the_entry_and_prints_each_graph_in_order():
    text = str(_program())
    assert text == "#! program entry=main host=postprocess\n#! graph main\n" + MAIN + \
        "#! graph postprocess\n" + HOST
    assert str(parse_program(text, {"w": W})) == text
    only = Program({"main": parse(MAIN, {"w": W})})
    assert str(only).startswith("#! program entry=main\n#! graph main\n")
    assert str(parse_program(str(only))) == str(only)


def test_calling_runs_the_entry_then_the_host_on_its_flat_outputs():
    p = _program()
    x = torch.randn(2, 3)
    y = x + W
    torch.testing.assert_close(p(x), torch.relu(y * -y))
    p.host = None  # without a host, the entry's outputs
    got = p(x)
    assert isinstance(got, tuple) and len(got) == 2
    torch.testing.assert_close(got[1], -y)


def test_verifier_runs_over_every_graph_and_checks_the_host_signature():
    p = _program()
    verify(p, "typed")
    p.add("broken", parse(MAIN.replace("%one: int = prim::Constant()", "%one: float = prim::Constant()"),
                          {"w": W}))
    with pytest.raises(VerificationError, match=r"program graph 'broken': typed IR: output 0 %one: float "
                                                r"contradicts int") as err:
        verify(p, "typed")
    assert err.value.op == "prim::Constant" and ">>" in err.value.context
    verify(p)  # the captured stage does not check types
    del p.graphs["broken"]
    p.graphs["postprocess"] = parse(HOST.replace("%z: f32[2,3]) {", "%z: f32[2,3], %extra: f32[2,3]) {"))
    with pytest.raises(VerificationError, match="takes 3 inputs, the entry 'main' returns 2") as err:
        verify(p)
    assert "flat outputs" in err.value.hint
    p.graphs["postprocess"] = parse(HOST.replace("%z: f32[2,3]) {", "%z: i64[2,3]) {")
                                    .replace("aten::mul.Tensor(%y, %z)", "aten::mul.Tensor(%y, %y)"))
    with pytest.raises(VerificationError, match=r"output 1 of 'main' is f32\[2,3\], but input 1 of the host"):
        verify(p)
    p.entry = "device"
    with pytest.raises(VerificationError, match="the entry graph 'device' is missing"):
        verify(p)


def test_save_and_load_with_the_params_it_reads(tmp_path):
    p = _program()
    assert list(p.params()) == ["w"] and p.params()["w"] is W
    p.save(tmp_path / "program.ir")
    q = load_program(tmp_path / "program.ir", params={"w": W, "unused": torch.zeros(1)})
    assert str(q) == str(p) and (tmp_path / "program.ir").read_text() == str(p)
    assert list(q["main"].params) == ["w"] and q["postprocess"].params == {}
    x = torch.randn(2, 3)
    torch.testing.assert_close(q(x), p(x))


def test_names_and_parse_errors():
    p = _program()
    with pytest.raises(Exception, match="already has a graph named 'main'"):
        p.add("main", parse(HOST))
    with pytest.raises(Exception, match="bad graph name 'two words'"):
        p.add("two words", parse(HOST))
    with pytest.raises(Exception, match="has no graph 'nope'"):
        p["nope"]
    with pytest.raises(IRParseError, match="expected '#! program entry=NAME"):
        parse_program(MAIN)
    with pytest.raises(IRParseError, match="line 2: expected '#! graph NAME'"):
        parse_program("#! program entry=main\n" + MAIN)
    bad = str(p).replace("aten::relu(%m)", "aten::relu(%nowhere)")
    with pytest.raises(IRParseError, match=r"program graph 'postprocess' \(text from line 11\): IR text line 3"):
        parse_program(bad, {"w": W})


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(graphs(), min_size=1, max_size=3), st.data())
def test_any_program_round_trips(gs, data):
    names = data.draw(st.lists(st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,6}", fullmatch=True),
                               min_size=len(gs), max_size=len(gs), unique=True))
    host = data.draw(st.sampled_from([None] + names))
    p = Program(dict(zip(names, gs)), entry=names[0], host=host)
    params = {k: v for g in gs for k, v in g.params.items()}
    text = str(p)
    assert str(parse_program(text, params)) == text
