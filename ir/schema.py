"""Structured input/output schemas.

A model takes and returns rich structures (tuples, lists, dicts, records such
as Instances); graphs and backends speak flat tuples of tensors. ``flatten``
turns a structure into its tensors plus a ``Schema`` that can ``rebuild`` the
structure from the same number of tensors, and ``schema.to_json()`` stores the
schema in a graph or an artifact.

Non-tensor leaves (int, float, bool, str, None) are *constants* of the schema:
they are not inputs of the graph, so ``schema.flatten`` refuses a structure
whose constants differ from the captured ones rather than silently computing
with the old value.

Record classes are registered with ``register_record(cls, ...)``: a record is
flattened through its fields, so an ``Instances`` holding ``Boxes`` becomes a
record schema whose field schemas are themselves records or tensors.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from dexport.ir.errors import SchemaError

_CONST_TYPES = (int, float, bool, str, type(None))


@dataclass(frozen=True)
class _Record:
    cls: type
    kind: str
    to_fields: Callable[[Any], dict]
    from_fields: Callable[[dict], Any]


_RECORDS_BY_CLASS: dict[type, _Record] = {}
_RECORDS_BY_KIND: dict[str, _Record] = {}


def register_record(cls: type, *, kind: str | None = None,
                    to_fields: Callable[[Any], dict] | None = None,
                    from_fields: Callable[[dict], Any] | None = None) -> None:
    """Teach the schemas a record class.

    ``to_fields(obj)`` returns an ordered dict of the object's parts (each itself
    flattenable); ``from_fields(parts)`` builds the object back. By default the
    parts are ``vars(obj)`` and the object is rebuilt with ``cls(**parts)``.
    """
    kind = kind or cls.__name__
    rec = _Record(cls, kind, to_fields or (lambda obj: dict(vars(obj))),
                  from_fields or (lambda parts: cls(**parts)))
    other = _RECORDS_BY_KIND.get(kind)
    if other is not None and other.cls is not cls:
        raise SchemaError(f"record kind {kind!r} is already registered for {other.cls.__qualname__}",
                          hint="register the class under another kind=")
    _RECORDS_BY_CLASS[cls] = rec
    _RECORDS_BY_KIND[kind] = rec


def registered_records() -> list[str]:
    return sorted(_RECORDS_BY_KIND)


# --------------------------------------------------------------------------- schemas

class Schema:
    """How to rebuild one structure from a flat list of tensors."""
    num_leaves: int

    def rebuild(self, flat: Sequence) -> Any:
        flat = list(flat)
        if len(flat) != self.num_leaves:
            raise SchemaError(f"expected {self.num_leaves} flat values to rebuild {self.describe()}, "
                              f"got {len(flat)}")
        return self._rebuild(iter(flat))

    def flatten(self, obj: Any, path: str = "inputs") -> list[torch.Tensor]:
        """Flatten ``obj``, checking that it has this schema's structure and constants."""
        out: list[torch.Tensor] = []
        self._flatten(obj, path, out)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def describe(self) -> str:
        return type(self).__name__

    # subclasses implement:
    def _rebuild(self, it): raise NotImplementedError
    def _flatten(self, obj, path, out): raise NotImplementedError
    def to_dict(self) -> dict: raise NotImplementedError


def _mismatch(path: str, expected: str, obj: Any) -> SchemaError:
    return SchemaError(f"{path}: expected {expected}, got {type(obj).__name__}",
                       hint="pass inputs with the same structure as the example inputs used for capture")


@dataclass(frozen=True)
class TensorSchema(Schema):
    num_leaves = 1

    def _rebuild(self, it):
        return next(it)

    def _flatten(self, obj, path, out):
        if not isinstance(obj, torch.Tensor):
            raise _mismatch(path, "a tensor", obj)
        out.append(obj)

    def to_dict(self):
        return {"t": "tensor"}


@dataclass(frozen=True)
class ConstSchema(Schema):
    value: Any
    num_leaves = 0

    def _rebuild(self, it):
        return self.value

    def _flatten(self, obj, path, out):
        if type(obj) is not type(self.value) or obj != self.value:
            raise SchemaError(
                f"{path}: the captured graph has the constant {self.value!r} here, got {obj!r}",
                hint="non-tensor values are baked into the graph at capture; pass the same value, "
                     "or pass it as a tensor so it becomes a graph input")

    def to_dict(self):
        return {"t": "const", "v": self.value}


@dataclass(frozen=True)
class SequenceSchema(Schema):
    kind: str  # "tuple" or "list"
    items: tuple[Schema, ...]

    @property
    def num_leaves(self):
        return sum(s.num_leaves for s in self.items)

    def _rebuild(self, it):
        values = [s._rebuild(it) for s in self.items]
        return tuple(values) if self.kind == "tuple" else values

    def _flatten(self, obj, path, out):
        expected_type = tuple if self.kind == "tuple" else list
        if not isinstance(obj, expected_type):
            raise _mismatch(path, f"a {self.kind}", obj)
        if len(obj) != len(self.items):
            raise SchemaError(f"{path}: expected a {self.kind} of {len(self.items)} items, got {len(obj)}",
                              hint="the graph was captured for a fixed number of items; re-capture "
                                   "with this many, or export with a dynamic batch")
        for i, (s, item) in enumerate(zip(self.items, obj)):
            s._flatten(item, f"{path}[{i}]", out)

    def describe(self):
        return f"{self.kind} of {len(self.items)}"

    def to_dict(self):
        return {"t": self.kind, "items": [s.to_dict() for s in self.items]}


@dataclass(frozen=True)
class DictSchema(Schema):
    keys: tuple
    values: tuple[Schema, ...]

    @property
    def num_leaves(self):
        return sum(s.num_leaves for s in self.values)

    def _rebuild(self, it):
        return {k: s._rebuild(it) for k, s in zip(self.keys, self.values)}

    def _flatten(self, obj, path, out):
        if not isinstance(obj, dict):
            raise _mismatch(path, "a dict", obj)
        if set(obj) != set(self.keys):
            missing = [k for k in self.keys if k not in obj]
            extra = [k for k in obj if k not in self.keys]
            raise SchemaError(f"{path}: dict keys differ from the captured ones (missing {missing}, "
                              f"unexpected {extra})", hint="pass the same keys as at capture")
        for k, s in zip(self.keys, self.values):
            s._flatten(obj[k], f"{path}[{k!r}]", out)

    def to_dict(self):
        return {"t": "dict", "keys": list(self.keys), "values": [s.to_dict() for s in self.values]}


@dataclass(frozen=True)
class RecordSchema(Schema):
    kind: str
    fields: tuple[str, ...]
    values: tuple[Schema, ...]

    @property
    def num_leaves(self):
        return sum(s.num_leaves for s in self.values)

    def _rebuild(self, it):
        rec = _RECORDS_BY_KIND.get(self.kind)
        if rec is None:
            raise SchemaError(f"record kind {self.kind!r} is not registered",
                              hint="import the module that registers it (dexport.register_record)")
        return rec.from_fields({f: s._rebuild(it) for f, s in zip(self.fields, self.values)})

    def _flatten(self, obj, path, out):
        rec = _RECORDS_BY_CLASS.get(type(obj))
        if rec is None or rec.kind != self.kind:
            raise _mismatch(path, f"a {self.kind} record", obj)
        parts = rec.to_fields(obj)
        if tuple(parts) != self.fields:
            raise SchemaError(f"{path}: {self.kind} has fields {list(parts)}, the graph was captured "
                              f"with {list(self.fields)}", hint="produce the same fields as at capture")
        for f, s in zip(self.fields, self.values):
            s._flatten(parts[f], f"{path}.{f}", out)

    def describe(self):
        return f"record {self.kind}"

    def to_dict(self):
        return {"t": "record", "kind": self.kind, "fields": list(self.fields),
                "values": [s.to_dict() for s in self.values]}


# --------------------------------------------------------------------------- building

def flatten(obj: Any, path: str = "inputs") -> tuple[list[torch.Tensor], Schema]:
    """Flatten a structure into its tensors and the schema that rebuilds it."""
    out: list[torch.Tensor] = []
    schema = _build(obj, path, out)
    return out, schema


def _build(obj: Any, path: str, out: list) -> Schema:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
        return TensorSchema()
    rec = _RECORDS_BY_CLASS.get(type(obj))
    if rec is not None:
        parts = rec.to_fields(obj)
        return RecordSchema(rec.kind, tuple(parts),
                            tuple(_build(v, f"{path}.{k}", out) for k, v in parts.items()))
    if isinstance(obj, (tuple, list)):
        kind = "tuple" if isinstance(obj, tuple) else "list"
        return SequenceSchema(kind, tuple(_build(v, f"{path}[{i}]", out) for i, v in enumerate(obj)))
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, (str, int)):
                raise SchemaError(f"{path}: dict key {k!r} of type {type(k).__name__} is not supported",
                                  hint="use str or int keys")
        return DictSchema(tuple(obj), tuple(_build(v, f"{path}[{k!r}]", out) for k, v in obj.items()))
    if isinstance(obj, _CONST_TYPES):
        return ConstSchema(obj)
    raise SchemaError(
        f"{path}: unsupported leaf type {type(obj).__module__}.{type(obj).__qualname__}",
        hint="pass tensors, numbers, strings, None, or tuples/lists/dicts of them; for a class of your "
             "own call dexport.register_record(cls, to_fields=..., from_fields=...)")


def schema_from_dict(d: dict) -> Schema:
    t = d["t"]
    if t == "tensor":
        return TensorSchema()
    if t == "const":
        return ConstSchema(d["v"])
    if t in ("tuple", "list"):
        return SequenceSchema(t, tuple(schema_from_dict(s) for s in d["items"]))
    if t == "dict":
        return DictSchema(tuple(d["keys"]), tuple(schema_from_dict(s) for s in d["values"]))
    if t == "record":
        return RecordSchema(d["kind"], tuple(d["fields"]), tuple(schema_from_dict(s) for s in d["values"]))
    raise SchemaError(f"unknown schema node type {t!r}", hint="the schema json is corrupt or from a newer dexport")


def schema_from_json(text: str) -> Schema:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise SchemaError(f"schema json does not parse: {e}") from None
    return schema_from_dict(d)
