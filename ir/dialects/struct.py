"""The struct dialect: records (a kind plus ordered named fields) as IR values.

``struct::construct`` builds one, ``struct::get`` reads a field, ``struct::set`` gives
a new record with one field added or replaced (functional: the input record is
unchanged, so a record is a plain SSA value); their run-time value
is a :class:`Record`, or a user structure registered with the schemas (such as
:class:`dexport.ir.dialects.structures.Instances`), whose fields ``struct::get``
reads as attributes.
"""
from __future__ import annotations

from typing import Any

from dexport.ir.ops import node_error, register_op
from dexport.ir.types import ANY, RecordType


class Record:
    """The run-time value of ``struct::construct``: a kind and ordered named fields."""
    __slots__ = ("kind", "fields")

    def __init__(self, kind: str, fields: dict[str, Any]):
        self.kind = kind
        self.fields = fields

    def __repr__(self) -> str:
        return f"Record({self.kind}, {list(self.fields)})"


def _construct_kernel(node, *inputs):
    fields = node.attrs["fields"]
    if len(fields) != len(inputs):
        raise node_error(node, f"struct::construct has {len(inputs)} inputs for {len(fields)} fields",
                         "give one input per name in the 'fields' attribute")
    return (Record(node.attrs["kind"], dict(zip(fields, inputs))),)


def _construct_type(node):
    fields = tuple(zip(node.attrs["fields"], (v.type for v in node.inputs)))
    return [RecordType(node.attrs["kind"], fields)]


def _get_kernel(node, record):
    name = node.attrs["field"]
    if isinstance(record, Record):
        if name not in record.fields:
            raise node_error(node, f"record {record.kind} has no field {name!r}",
                             f"its fields are {list(record.fields)}")
        return (record.fields[name],)
    return (getattr(record, name),)  # a user structure such as Instances


def _get_type(node):
    t = node.inputs[0].type
    if isinstance(t, RecordType):
        try:
            return [t.field(node.attrs["field"])]
        except KeyError:
            pass
    return [ANY]


def _set_kernel(node, record, value):
    if not isinstance(record, Record):
        raise node_error(node, f"struct::set takes a record, got {type(record).__name__}",
                         "build the record with struct::construct")
    return (Record(record.kind, {**record.fields, node.attrs["field"]: value}),)


def struct_set_type(node):
    """The record type with the field set to the value's type (added last when new)."""
    t = node.inputs[0].type
    name, value_type = node.attrs["field"], node.inputs[1].type
    if not isinstance(t, RecordType):
        return RecordType("?", ((name, value_type),))
    fields = list(t.fields)
    for i, (field_name, _) in enumerate(fields):
        if field_name == name:
            fields[i] = (name, value_type)
            break
    else:
        fields.append((name, value_type))
    return RecordType(t.kind, tuple(fields))


register_op("struct::construct", num_inputs=None, num_outputs=1, kernel=_construct_kernel,
            type_rule=_construct_type,
            doc="A record of attrs['kind'] whose attrs['fields'] are the inputs, in order.")
register_op("struct::get", num_inputs=1, num_outputs=1, kernel=_get_kernel,
            type_rule=_get_type, doc="The field attrs['field'] of a record.")
register_op("struct::set", num_inputs=2, num_outputs=1, kernel=_set_kernel,
            type_rule=lambda node: [struct_set_type(node)],
            doc="The record (input 0) with its field attrs['field'] set to input 1: a new record.")
