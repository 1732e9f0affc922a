"""Pass registry and typed options."""
from dataclasses import dataclass
from typing import Literal

import pytest

from dexport.ir import PassError
from dexport.passes import Pass, get_pass, register_pass, registered
from dexport.passes.base import parse_options


@dataclass(frozen=True)
class _Opts:
    batch: int | Literal["dynamic"] = "dynamic"
    scale: float = 1.0
    strict: bool = False
    label: str = "x"
    limit: int | None = None


def test_builtin_passes_are_registered_and_sorted():
    names = registered()
    assert names == sorted(names)
    assert {"cse", "dce", "fold-constants", "canonicalize"} <= set(names)


@pytest.mark.parametrize("raw, expected", [
    ({}, _Opts()),
    ({"batch": "1"}, _Opts(batch=1)),
    ({"batch": 2}, _Opts(batch=2)),
    ({"batch": "dynamic"}, _Opts(batch="dynamic")),
    ({"scale": "0.5", "strict": "true", "label": "12"}, _Opts(scale=0.5, strict=True, label="12")),
    ({"scale": 2, "strict": True}, _Opts(scale=2.0, strict=True)),
    ({"limit": "none"}, _Opts(limit=None)),
    ({"limit": "7"}, _Opts(limit=7)),
])
def test_options_parse_text_and_values(raw, expected):
    assert parse_options(_Opts, raw, owner="t") == expected


@pytest.mark.parametrize("raw, message", [
    ({"batch": "dyn"}, r"option 'batch' expects int or one of dynamic, got 'dyn'"),
    ({"batch": 1.5}, "expects int or one of dynamic"),
    ({"batch": True}, "expects int or one of dynamic"),
    ({"strict": "maybe"}, "option 'strict' expects bool"),
    ({"strict": 1}, "option 'strict' expects bool"),
    ({"scale": "fast"}, "option 'scale' expects float"),
    ({"label": 3}, "option 'label' expects str"),
    ({"colour": "red"}, "has no option 'colour'"),
])
def test_bad_options_are_pass_errors(raw, message):
    with pytest.raises(PassError, match=message):
        parse_options(_Opts, raw, owner="t")


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(PassError, match="pass 'fold-constants' has no option 'colour'") as err:
        get_pass("fold-constants", colour="red")
    assert "max_elements (int)" in err.value.hint


def test_get_pass_and_spec_round_trip():
    p = get_pass("fold-constants", max_elements="10", inline_elements=4)
    assert p.options.max_elements == 10 and p.options.inline_elements == 4
    assert p.spec() == "fold-constants{max_elements=10,inline_elements=4}"
    assert get_pass("canonicalize", debug="true").spec() == "canonicalize{debug=true}"
    assert get_pass("dce").spec() == "dce"


def test_a_pass_class_takes_options_directly():
    class Configurable(Pass):
        name = "configurable"
        Options = _Opts

    assert Configurable(batch="3").options == _Opts(batch=3)
    with pytest.raises(PassError, match="pass 'configurable': option 'batch'"):
        Configurable(batch="x")


def test_unknown_pass_suggests_close_names():
    with pytest.raises(PassError, match="unknown pass 'csee'") as err:
        get_pass("csee")
    assert "did you mean 'cse'" in err.value.hint


def test_register_rejects_a_second_class_under_a_taken_name():
    class Other(Pass):
        name = "dce"

    with pytest.raises(PassError, match="already registered"):
        register_pass(Other)


def test_register_requires_a_name():
    class Nameless(Pass):
        pass

    with pytest.raises(PassError, match="has no name"):
        register_pass(Nameless)
