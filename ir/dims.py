"""Symbolic dim expressions: the text of a symbolic tensor dim (``N``, ``8*ceil(H/32)``)
and of a size-derived constant, and how to find one from observed sizes.

An expression is ``coef * f1 * f2 * ... + offset`` where each factor is a symbol
``X``, ``ceil(X/d)`` or ``floor(X/d)`` (at most one factor per symbol). That covers
what detection models compute from an input size: the batch (``N``), a padded
feature-map side (``8*ceil(H/32)``), a flattened size (``3*H*W``), an offset
(``H-1``). Text is canonical (``str(parse(text)) == text`` for printed text), so
types that carry expressions print and parse back unchanged.

:func:`fit` finds the simplest expression that reproduces a size on every sample
(the example inputs and the probe inputs of a capture), trying simpler forms first.
"""
from __future__ import annotations

import functools
import itertools
import math
import re
from dataclasses import dataclass

from dexport.ir.errors import IRParseError

__all__ = ["Factor", "DimExpr", "parse_dim", "fit"]

_DIVISORS = (2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class Factor:
    symbol: str
    kind: str = ""  # "", "ceil" or "floor"
    divisor: int = 1

    def value(self, x: int) -> int:
        if self.kind == "ceil":
            return -(-x // self.divisor)
        if self.kind == "floor":
            return x // self.divisor
        return x

    def __str__(self) -> str:
        return f"{self.kind}({self.symbol}/{self.divisor})" if self.kind else self.symbol


@dataclass(frozen=True)
class DimExpr:
    """``coef * prod(factors) + offset``; factors are sorted by symbol."""
    coef: int
    factors: tuple[Factor, ...]
    offset: int = 0

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(f.symbol for f in self.factors)

    def evaluate(self, bindings: dict[str, int]) -> int:
        product = self.coef
        for f in self.factors:
            product *= f.value(bindings[f.symbol])
        return product + self.offset

    def substitute(self, bindings: dict[str, int]) -> "DimExpr | int":
        """Bind some symbols; an int when none is left."""
        coef, rest = self.coef, []
        for f in self.factors:
            if f.symbol in bindings:
                coef *= f.value(bindings[f.symbol])
            else:
                rest.append(f)
        if not rest or coef == 0:
            return coef + self.offset
        return DimExpr(coef, tuple(rest), self.offset)

    def __str__(self) -> str:
        body = "*".join(str(f) for f in self.factors)
        if self.coef == -1:
            body = "-" + body
        elif self.coef != 1:
            body = f"{self.coef}*{body}"
        if self.offset:
            body += f"{self.offset:+d}"
        return body


_TOKEN = re.compile(r"\s*(ceil|floor|[A-Za-z_][A-Za-z0-9_]*|\d+|[-+*/()])\s*")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _tokens(text: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise IRParseError(f"bad dim expression {text!r} at column {pos}")
        tokens.append(m.group(1))
        pos = m.end()
    return tokens


def parse_dim(text: str) -> "DimExpr | int":
    """Read an expression in the form ``str(DimExpr)`` prints, or a plain int."""
    if re.fullmatch(r"\s*-?\d+\s*", text):
        return int(text)
    tokens = _tokens(text)
    if not tokens:
        raise IRParseError("empty dim expression")
    pos = 0

    def take(expected: str | None = None) -> str:
        nonlocal pos
        tok = tokens[pos] if pos < len(tokens) else None
        if tok is None or (expected is not None and tok != expected):
            raise IRParseError(f"bad dim expression {text!r}: expected {expected or 'more'}, "
                               f"got {tok or 'the end'}")
        pos += 1
        return tok

    sign = -1 if tokens[0] == "-" else 1
    pos = 1 if sign < 0 else 0
    coef, factors = sign, []
    while True:
        tok = take()
        if tok.isdigit():
            coef *= int(tok)
        elif tok in ("ceil", "floor"):
            take("(")
            symbol = take()
            take("/")
            divisor = take()
            take(")")
            if not _IDENT.fullmatch(symbol) or not divisor.isdigit():
                raise IRParseError(f"bad dim expression {text!r}: expected {tok}(X/d)")
            factors.append(Factor(symbol, tok, int(divisor)))
        elif _IDENT.fullmatch(tok):
            factors.append(Factor(tok))
        else:
            raise IRParseError(f"bad dim expression {text!r}: unexpected {tok!r}")
        if pos < len(tokens) and tokens[pos] == "*":
            pos += 1
            continue
        break
    offset = 0
    if pos < len(tokens):
        op, number = take(), take()
        if op not in "+-" or not number.isdigit() or pos != len(tokens):
            raise IRParseError(f"bad dim expression {text!r}: only a +/- offset may follow")
        offset = int(number) if op == "+" else -int(number)
    if not factors:
        return coef + offset
    return DimExpr(coef, tuple(sorted(factors, key=lambda f: f.symbol)), offset)


def _terms(symbol: str) -> list[Factor]:
    """The factors tried for one symbol, simplest first."""
    terms = [Factor(symbol)]
    for d in _DIVISORS:
        terms += [Factor(symbol, "ceil", d), Factor(symbol, "floor", d)]
    return terms


def fit(target: tuple[int, ...], samples: dict[str, tuple[int, ...]]) -> DimExpr | None:
    """The simplest expression over the symbols of ``samples`` (symbol -> its value on
    each sample) whose value on every sample is ``target``; None if there is none.

    Tried in order: ``k*factor`` (plain symbols before ceil/floor forms), products of
    two and then three factors with an integer coefficient, and, with at least three
    samples, ``a*factor + b`` for a single factor taking three distinct values (fewer
    would let any affine map fit). A few thousand candidates, evaluated once per set
    of samples.
    """
    singles, products = _candidates(tuple(sorted(samples.items())))
    for factors, values in singles + products:
        expr = _scaled(target, values, factors)
        if expr is not None:
            return expr
    if len(target) >= 3:
        for factors, values in singles:
            expr = _affine(target, values, factors)
            if expr is not None:
                return expr
    return None


@functools.lru_cache(maxsize=8)
def _candidates(samples: tuple[tuple[str, tuple[int, ...]], ...]):
    """(single factors, products of 2-3 factors), each with its value on every sample."""
    table = dict(samples)
    symbols = sorted(table)
    count = len(samples[0][1])

    def with_values(factors):
        return factors, [math.prod(f.value(table[f.symbol][i]) for f in factors)
                         for i in range(count)]

    depth = len(_terms("X"))
    singles = [with_values((_terms(s)[d],)) for d in range(depth) for s in symbols]
    products = [with_values(factors) for size in (2, 3) if size <= len(symbols)
                for chosen in itertools.combinations(symbols, size)
                for factors in itertools.product(*(_terms(s) for s in chosen))]
    return singles, products


def _scaled(target, values, factors) -> DimExpr | None:
    if values[0] == 0 or target[0] % values[0]:
        return None
    coef = target[0] // values[0]
    if coef == 0 or any(coef * v != t for v, t in zip(values, target)):
        return None
    return DimExpr(coef, tuple(factors))


def _affine(target, values, factors) -> DimExpr | None:
    distinct = sorted(set(values))
    if len(distinct) < 3:
        return None
    i, j = values.index(distinct[0]), values.index(distinct[1])
    rise, run = target[j] - target[i], values[j] - values[i]
    if rise % run:
        return None
    coef = rise // run
    offset = target[i] - coef * values[i]
    if coef == 0 or any(coef * v + offset != t for v, t in zip(values, target)):
        return None
    return DimExpr(coef, tuple(factors), offset)
