"""Structured I/O schemas: flatten -> rebuild is identity, json round-trips, and
mismatching inputs are refused with a clear error."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dexport.ir.errors import SchemaError
from dexport.ir.schema import flatten, register_record, schema_from_json


class Point:
    def __init__(self, xy, label):
        self.xy = xy
        self.label = label


register_record(Point, kind="test.Point")

_tensors = st.builds(lambda n, s: torch.arange(n, dtype=torch.float32) * s,
                     st.integers(0, 4), st.floats(-3, 3, allow_nan=False))
_consts = st.one_of(st.integers(-5, 5), st.floats(-2, 2, allow_nan=False), st.booleans(),
                    st.text(max_size=3), st.none())
_leaves = st.one_of(_tensors, _consts, st.builds(Point, _tensors, st.text(max_size=2)))
structures = st.recursive(
    _leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.tuples(inner, inner),
                            st.dictionaries(st.one_of(st.text(max_size=3), st.integers(0, 3)),
                                            inner, max_size=3)),
    max_leaves=12)


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a is b
    if isinstance(a, Point):
        return isinstance(b, Point) and _same(a.xy, b.xy) and a.label == b.label
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@settings(max_examples=150, deadline=None)
@given(structures)
def test_flatten_rebuild_is_identity(obj):
    flat, schema = flatten(obj)
    assert all(isinstance(t, torch.Tensor) for t in flat)
    assert _same(schema.rebuild(flat), obj)
    again = schema_from_json(schema.to_json())
    assert again == schema and again.to_json() == schema.to_json()
    assert _same(again.rebuild(flat), obj)
    assert all(a is b for a, b in zip(schema.flatten(obj), flat))


def test_unsupported_leaf_names_the_path():
    with pytest.raises(SchemaError, match=r"inputs\[0\]\['img'\]: unsupported leaf type .*object") as e:
        flatten(({"img": object()},))
    assert "register_record" in str(e.value)


def test_changed_constant_is_refused():
    _, schema = flatten(({"image": torch.zeros(1), "height": 480},))
    with pytest.raises(SchemaError, match="constant 480 here, got 240"):
        schema.flatten(({"image": torch.zeros(1), "height": 240},))


def test_wrong_count_and_keys_are_refused():
    _, schema = flatten(([torch.zeros(1)],))
    with pytest.raises(SchemaError, match="list of 1 items, got 2"):
        schema.flatten(([torch.zeros(1), torch.zeros(1)],))
    _, schema = flatten(({"a": torch.zeros(1)},))
    with pytest.raises(SchemaError, match=r"missing \['a'\], unexpected \['b'\]"):
        schema.flatten(({"b": torch.zeros(1)},))
    with pytest.raises(SchemaError, match="expected 1 flat values"):
        schema.rebuild([])
