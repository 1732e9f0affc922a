"""Symbolic dim expressions: text round trip, evaluation, binding and fitting."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from dexport.ir.dims import DimExpr, Factor, fit, parse_dim
from dexport.ir.errors import IRParseError
from dexport.ir.types import TensorType, parse_type

SAMPLES = {"N": (1, 2, 3), "H": (96, 100, 130), "W": (128, 70, 161)}


@pytest.mark.parametrize("text", ["N", "3*N", "-H", "H-1", "2*N+7", "8*ceil(H/32)",
                                  "H*N*W", "256*ceil(H/32)*floor(W/4)", "-3*W+2"])
def test_print_parse_round_trip(text):
    expr = parse_dim(text)
    assert isinstance(expr, DimExpr)
    assert str(expr) == text
    assert str(parse_dim(str(expr))) == text


def test_parse_orders_factors_and_reads_ints():
    assert str(parse_dim("W*N*H")) == "H*N*W"
    assert parse_dim("12") == 12 and parse_dim("-3") == -3
    for bad in ["", "N+", "ceil(H)", "N**2", "H/4", "N+1*H", "(N)"]:
        with pytest.raises(IRParseError):
            parse_dim(bad)


def test_expressions_live_in_tensor_types():
    t = parse_type("f32[N,256,8*ceil(H/32),8*ceil(W/32)]")
    assert isinstance(t, TensorType) and str(t) == "f32[N,256,8*ceil(H/32),8*ceil(W/32)]"
    assert parse_dim(t.shape[2]).evaluate({"H": 100}) == 32


def test_evaluate_and_substitute():
    expr = parse_dim("2*N*ceil(H/32)+1")
    assert expr.evaluate({"N": 3, "H": 65}) == 2 * 3 * 3 + 1
    partial = expr.substitute({"N": 2})
    assert str(partial) == "4*ceil(H/32)+1"
    assert partial.substitute({"H": 64}) == 9
    assert parse_dim("N").substitute({"N": 5}) == 5
    assert Factor("H", "floor", 4).value(7) == 1 and Factor("H", "ceil", 4).value(7) == 2


@pytest.mark.parametrize("expected", ["N", "3*N", "8*ceil(H/32)", "floor(W/2)", "3*H*W",
                                      "64*ceil(H/32)*N*ceil(W/32)", "H-1", "2*N+5"])
def test_fit_recovers_the_expression(expected):
    expr = parse_dim(expected)
    target = tuple(expr.evaluate({s: v[i] for s, v in SAMPLES.items()}) for i in range(3))
    found = fit(target, SAMPLES)
    assert found is not None
    # Any expression equal on every sample is right; the simplest is the one written.
    assert str(found) == expected


def test_fit_gives_up_on_data():
    assert fit((5, 17, 4), SAMPLES) is None
    # Two samples: an affine map would fit anything, so only products are tried.
    two = {k: v[:2] for k, v in SAMPLES.items()}
    assert fit((7, 9), two) is None
    assert str(fit((2, 4), two)) == "2*N"


@given(st.integers(1, 5), st.sampled_from(["", "ceil", "floor"]), st.sampled_from([2, 8, 32]),
       st.integers(-3, 3))
def test_fit_matches_on_every_sample(coef, kind, divisor, offset):
    factor = Factor("H", kind, divisor if kind else 1)
    expr = DimExpr(coef, (factor,), offset)
    target = tuple(expr.evaluate({"H": h}) for h in SAMPLES["H"])
    found = fit(target, SAMPLES)
    if found is not None:
        for i in range(3):
            assert found.evaluate({s: v[i] for s, v in SAMPLES.items()}) == target[i]
    else:
        # Only an affine form over a factor with < 3 distinct values can be missed.
        assert len({factor.value(h) for h in SAMPLES["H"]}) < 3 and offset != 0
