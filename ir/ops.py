"""The op registry: what every op name means (arity, kernel, output types).

Two kinds of ops live here:

* **torch ops** — ATen (``aten::add.Tensor``), prim ops with a torch schema
  (``prim::device``) and custom ops registered with ``torch.library``
  (``dexport::nms``). They are looked up lazily from ``torch.ops`` on first use
  and cached: the schema, the arity and the kernel all come from torch, so
  dexport never restates what torch already knows.
* **dexport-owned ops** — the structural ops of the IR (constants, params,
  lists, tuples, control flow, records), registered with ``register_op``.
  ``registered_ops()`` lists them.

A kernel is ``kernel(node, *input_values) -> tuple`` (one entry per output);
a type rule is ``type_rule(node) -> list[Type]`` (the output types implied by
the node's inputs and attributes).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from dexport.ir.errors import DexportError
from dexport.ir.types import (ANY, BOOL, DEVICE, DTYPE, FLOAT, INT, NONE, STR, TENSOR,
                              ListType, OptionalType, RecordType, ScalarType, TensorType,
                              TupleType, Type, tensor_type_of)

Kernel = Callable[..., tuple]
TypeRule = Callable[[Any], list]


@dataclass(frozen=True)
class OpDef:
    name: str
    num_inputs: int | None          # None: variadic
    num_outputs: int | None         # None: given by the node (e.g. prim::ListUnpack)
    kernel: Kernel
    type_rule: TypeRule | None = None
    schema: Any = None              # torch.FunctionSchema for torch ops, None for dexport-owned ones
    doc: str = ""


_OWNED: dict[str, OpDef] = {}
_TORCH_CACHE: dict[str, OpDef] = {}
# Namespaces whose torch.library registrations live in a dexport module that must be
# imported before the first lookup.
_LIBRARY_MODULES = {"dexport": "dexport.models.ops"}


def register_op(name: str, *, num_inputs: int | None, num_outputs: int | None,
                kernel: Kernel, type_rule: TypeRule | None = None, doc: str = "") -> OpDef:
    """Register a dexport-owned op. Registering a name twice is an error, so two
    modules cannot silently disagree about what an op means."""
    if name in _OWNED:
        raise DexportError(f"op {name!r} is already registered", op=name,
                           hint="pick another name, or extend the existing OpDef")
    if "::" not in name:
        raise DexportError(f"op name {name!r} has no namespace", op=name,
                           hint="name ops 'namespace::name', e.g. 'dexport::my_op'")
    opdef = OpDef(name, num_inputs, num_outputs, kernel, type_rule, None, doc)
    _OWNED[name] = opdef
    return opdef


def registered_ops() -> list[str]:
    """The dexport-owned op names, sorted."""
    return sorted(_OWNED)


def has_op(name: str) -> bool:
    try:
        get_op(name)
    except DexportError:
        return False
    return True


def get_op(name: str) -> OpDef:
    """The OpDef for ``name``; torch ops are resolved from ``torch.ops`` on first use."""
    opdef = _OWNED.get(name) or _TORCH_CACHE.get(name)
    if opdef is None:
        opdef = _TORCH_CACHE[name] = _torch_opdef(name)
    return opdef


# --------------------------------------------------------------------------- torch ops

def split_op_name(name: str) -> tuple[str, str, str]:
    """``"aten::add.Tensor"`` -> ``("aten", "add", "Tensor")``; no overload -> ``"default"``."""
    ns, sep, rest = name.partition("::")
    if not sep or not ns or not rest:
        raise DexportError(f"malformed op name {name!r}", op=name,
                           hint="op names look like 'aten::add.Tensor' or 'prim::If'")
    base, _, overload = rest.partition(".")
    return ns, base, overload or "default"


def overload_of(name: str) -> "torch._ops.OpOverload":
    """The torch ``OpOverload`` an op name means (``"aten::add.Tensor"`` ->
    ``torch.ops.aten.add.Tensor``; no overload -> ``.default``). The one place that
    resolves names against ``torch.ops``; raises ``DexportError`` for unknown ones."""
    ns, base, overload_name = split_op_name(name)
    if ns in _LIBRARY_MODULES:
        importlib.import_module(_LIBRARY_MODULES[ns])
    try:
        packet = getattr(getattr(torch.ops, ns), base)
    except (AttributeError, RuntimeError):
        raise DexportError(
            f"unknown op {name!r}: neither dexport nor torch defines it", op=name,
            hint="ATen ops use torch's schema name with overload (e.g. 'aten::add.Tensor'); "
                 "register custom ops with torch.library or dexport.ir.ops.register_op") from None
    try:
        return getattr(packet, overload_name)
    except (AttributeError, RuntimeError):
        known = ", ".join(f"{ns}::{base}" + ("" if o == "default" else f".{o}")
                          for o in packet.overloads())
        raise DexportError(f"op {name!r} has no overload {overload_name!r}", op=name,
                           hint=f"use one of: {known}") from None


def _torch_opdef(name: str) -> OpDef:
    overload = overload_of(name)
    schema = overload._schema
    args = schema.arguments
    variadic = "..." in str(schema)
    num_positional = sum(1 for a in args if not a.kwarg_only)
    kwarg_names = tuple(a.name for a in args if a.kwarg_only)
    num_returns = len(schema.returns)
    kernel = _GENERIC_LIST_KERNELS.get(name) or _torch_kernel(
        overload, num_positional, kwarg_names, num_returns, variadic)
    return OpDef(name, None if variadic else len(args), num_returns, kernel,
                 _schema_type_rule(schema), schema, overload.__doc__ or "")


def _torch_kernel(overload, num_positional: int, kwarg_names: tuple[str, ...],
                  num_returns: int, variadic: bool) -> Kernel:
    """A kernel that calls the OpOverload with inputs split into positional and
    keyword-only arguments as the schema says."""
    def kernel(node, *inputs):
        if kwarg_names and not variadic:
            out = overload(*inputs[:num_positional],
                           **dict(zip(kwarg_names, inputs[num_positional:])))
        else:
            out = overload(*inputs)
        if num_returns == 1:
            return (out,)
        return tuple(out) if num_returns else ()
    return kernel


def _set_item(node, lst, index, item):
    lst[index] = item
    return (lst,)


def _insert(node, lst, index, item):
    lst.insert(index, item)
    return ()


# Ops on generic lists (``t[]`` in the schema) cannot be called through torch.ops with
# Python lists; these are their TorchScript meanings in plain Python. Mutating ones
# change the list object itself, as TorchScript does.
_GENERIC_LIST_KERNELS: dict[str, Kernel] = {
    "aten::__getitem__.t": lambda node, lst, index: (lst[index],),
    "aten::len.t": lambda node, lst: (len(lst),),
    "aten::list.t": lambda node, lst: (list(lst),),
    "aten::add.t": lambda node, a, b: (a + b,),
    "aten::slice.t": lambda node, lst, start, end, step: (lst[start:end:step],),
    "aten::append.t": lambda node, lst, item: (lst.append(item), lst)[1:],
    "aten::_set_item.t": _set_item,
    "aten::insert.t": _insert,
    "aten::pop.t": lambda node, lst, index: (lst.pop(index),),
}


def _schema_type_rule(schema) -> TypeRule:
    types = [ir_type_from_jit(r.type) for r in schema.returns]
    return lambda node: list(types)


def ir_type_from_jit(t) -> Type:
    """The IR type for a TorchScript type (dtype and sizes of complete tensor types kept)."""
    if isinstance(t, torch.TensorType):
        sizes = t.varyingSizes()
        shape = None if sizes is None else tuple("?" if d is None else int(d) for d in sizes)
        return TensorType(t.dtype(), shape)
    if isinstance(t, (torch.IntType, torch.SymIntType)):
        return INT
    if isinstance(t, torch.FloatType):
        return FLOAT
    if isinstance(t, (torch.BoolType, torch.SymBoolType)):
        return BOOL
    if isinstance(t, torch.StringType):
        return STR
    if isinstance(t, torch.NoneType):
        return NONE
    if isinstance(t, torch.DeviceObjType):
        return DEVICE
    if isinstance(t, torch.NumberType):
        return ScalarType("Scalar")
    if isinstance(t, torch.ListType):
        return ListType(ir_type_from_jit(t.getElementType()))
    if isinstance(t, torch.TupleType):
        return TupleType(tuple(ir_type_from_jit(e) for e in t.elements()))
    if isinstance(t, torch.OptionalType):
        return OptionalType(ir_type_from_jit(t.getElementType()))
    return {"ScalarType": DTYPE, "Layout": ScalarType("Layout"),
            "MemoryFormat": ScalarType("MemoryFormat")}.get(str(t), ANY)


# --------------------------------------------------------------------------- helpers

def type_of_constant(value: Any) -> Type:
    """The IR type of a constant attribute value."""
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT
    if isinstance(value, float):
        return FLOAT
    if isinstance(value, str):
        return STR
    if value is None:
        return NONE
    if isinstance(value, torch.Tensor):
        return tensor_type_of(value)
    if isinstance(value, torch.dtype):
        return DTYPE
    if isinstance(value, torch.device):
        return DEVICE
    if isinstance(value, torch.layout):
        return ScalarType("Layout")
    if isinstance(value, torch.memory_format):
        return ScalarType("MemoryFormat")
    if isinstance(value, list):
        return ListType(unify_types([type_of_constant(v) for v in value]))
    if isinstance(value, tuple):
        return TupleType(tuple(type_of_constant(v) for v in value))
    return ANY


def unify_types(types: Sequence[Type]) -> Type:
    """The most precise type that covers all ``types`` (for list elements, If results)."""
    if not types:
        return ANY
    first = types[0]
    if all(t == first for t in types):
        return first
    if all(isinstance(t, TensorType) for t in types):
        dtypes = {t.dtype for t in types}
        ranks = {t.rank for t in types}
        dtype = first.dtype if len(dtypes) == 1 else None
        if len(ranks) == 1 and first.rank is not None:
            shape = tuple(dims[0] if all(d == dims[0] for d in dims) else "?"
                          for dims in zip(*(t.shape for t in types)))
            return TensorType(dtype, shape)
        return TensorType(dtype, None)
    return ANY


class Record:
    """The run-time value of ``struct::construct``: a kind and ordered named fields."""
    __slots__ = ("kind", "fields")

    def __init__(self, kind: str, fields: dict[str, Any]):
        self.kind = kind
        self.fields = fields

    def __repr__(self) -> str:
        return f"Record({self.kind}, {list(self.fields)})"


def _node_error(node, what: str, hint: str) -> DexportError:
    return DexportError(what, op=node.op, scope=node.meta.scope, source=node.meta.source, hint=hint)


# --------------------------------------------------------------------------- dexport-owned ops

def _constant_kernel(node):
    return (node.attrs["value"],)


def _param_kernel(node):
    graph = node.graph
    name = node.attrs["name"]
    if graph is None or name not in graph.params:
        raise _node_error(node, f"parameter {name!r} is not in graph.params",
                          "add the tensor with graph.add_param(name, tensor)")
    return (graph.params[name],)


def _param_type(node):
    graph = node.graph
    tensor = graph.params.get(node.attrs["name"]) if graph is not None else None
    return [tensor_type_of(tensor) if tensor is not None else TENSOR]


def _unpack_kernel(node, seq):
    if len(seq) != len(node.outputs):
        raise _node_error(node, f"{node.op} of {len(seq)} elements into {len(node.outputs)} outputs",
                          "the unpacked sequence's length differs from the one seen at capture")
    return tuple(seq)


def _list_unpack_type(node):
    t = node.inputs[0].type
    elem = t.elem if isinstance(t, ListType) else ANY
    return [elem] * len(node.outputs)


def _tuple_unpack_type(node):
    t = node.inputs[0].type
    if isinstance(t, TupleType) and len(t.elems) == len(node.outputs):
        return list(t.elems)
    return [ANY] * len(node.outputs)


def _num_to_tensor_type(node):
    dtype = {INT: torch.int64, FLOAT: torch.float64, BOOL: torch.bool}.get(node.inputs[0].type)
    return [TensorType(dtype, ())]


def _if_kernel(node, cond):
    from dexport.ir.interpreter import run_if
    return run_if(node, cond)


def _if_type(node):
    per_block = [[v.type for v in b.returns] for b in node.blocks]
    return [unify_types(list(ts)) for ts in zip(*per_block)]


def _loop_kernel(node, max_trip, cond, *carried):
    from dexport.ir.interpreter import run_loop
    return run_loop(node, max_trip, cond, carried)


def _struct_construct_kernel(node, *inputs):
    fields = node.attrs["fields"]
    if len(fields) != len(inputs):
        raise _node_error(node, f"struct::construct has {len(inputs)} inputs for {len(fields)} fields",
                          "give one input per name in the 'fields' attribute")
    return (Record(node.attrs["kind"], dict(zip(fields, inputs))),)


def _struct_construct_type(node):
    fields = tuple(zip(node.attrs["fields"], (v.type for v in node.inputs)))
    return [RecordType(node.attrs["kind"], fields)]


def _struct_get_kernel(node, record):
    name = node.attrs["field"]
    if isinstance(record, Record):
        if name not in record.fields:
            raise _node_error(node, f"record {record.kind} has no field {name!r}",
                              f"its fields are {list(record.fields)}")
        return (record.fields[name],)
    return (getattr(record, name),)  # a user structure such as Instances


def _struct_get_type(node):
    t = node.inputs[0].type
    if isinstance(t, RecordType):
        try:
            return [t.field(node.attrs["field"])]
        except KeyError:
            pass
    return [ANY]


_WRAPPED_NUMBER_DTYPES = {bool: torch.bool, int: torch.int64, float: torch.float64}


def _constant_type(node):
    value = node.attrs["value"]
    declared = node.outputs[0].type if len(node.outputs) == 1 else None
    # A trace records the number in `x + 0.5` as a 0-d tensor constant holding the
    # Python number (a "wrapped number": it does not take part in type promotion).
    if (isinstance(declared, TensorType) and declared.shape == ()
            and _WRAPPED_NUMBER_DTYPES.get(type(value)) == declared.dtype):
        return [declared]
    return [type_of_constant(value)]


register_op("prim::Constant", num_inputs=0, num_outputs=1, kernel=_constant_kernel,
            type_rule=_constant_type,
            doc="The constant attrs['value'].")
register_op("prim::Param", num_inputs=0, num_outputs=1, kernel=_param_kernel,
            type_rule=_param_type, doc="The tensor graph.params[attrs['name']].")
register_op("prim::ListConstruct", num_inputs=None, num_outputs=1,
            kernel=lambda node, *xs: (list(xs),),
            type_rule=lambda node: [ListType(unify_types([v.type for v in node.inputs]))],
            doc="A list of the inputs.")
register_op("prim::ListUnpack", num_inputs=1, num_outputs=None, kernel=_unpack_kernel,
            type_rule=_list_unpack_type, doc="The elements of a list, one output each.")
register_op("prim::TupleConstruct", num_inputs=None, num_outputs=1,
            kernel=lambda node, *xs: (tuple(xs),),
            type_rule=lambda node: [TupleType(tuple(v.type for v in node.inputs))],
            doc="A tuple of the inputs.")
register_op("prim::TupleUnpack", num_inputs=1, num_outputs=None, kernel=_unpack_kernel,
            type_rule=_tuple_unpack_type, doc="The elements of a tuple, one output each.")
register_op("prim::NumToTensor", num_inputs=1, num_outputs=1,
            kernel=lambda node, x: (torch.ops.prim.NumToTensor.Scalar(x),),
            type_rule=_num_to_tensor_type,
            doc="A 0-d tensor holding a number (int -> i64, float -> f64, bool -> b8).")
register_op("prim::If", num_inputs=1, num_outputs=None, kernel=_if_kernel, type_rule=_if_type,
            doc="Runs blocks[0] if the condition holds, else blocks[1]; their returns are the outputs.")
register_op("prim::Loop", num_inputs=None, num_outputs=None, kernel=_loop_kernel,
            type_rule=lambda node: [v.type for v in node.inputs[2:]],
            doc="TorchScript loop: inputs (max_trip, cond, carried...); the body takes "
                "(iter, carried...) and returns (cond, carried...); outputs the final carried.")
register_op("struct::construct", num_inputs=None, num_outputs=1, kernel=_struct_construct_kernel,
            type_rule=_struct_construct_type,
            doc="A record of attrs['kind'] whose attrs['fields'] are the inputs, in order.")
register_op("struct::get", num_inputs=1, num_outputs=1, kernel=_struct_get_kernel,
            type_rule=_struct_get_type, doc="The field attrs['field'] of a record.")
