"""The op registry: what every op name means (arity, kernel, output types).

Two kinds of ops live here:

* **torch ops** — ATen (``aten::add.Tensor``), prim ops with a torch schema
  (``prim::device``) and custom ops registered with ``torch.library``
  (``dexport::nms``). They are looked up lazily from ``torch.ops`` on first use
  and cached: the schema, the arity and the kernel all come from torch, so
  dexport never restates what torch already knows. A custom op whose outputs
  follow from its inputs can add a precise type rule with ``register_type_rule``.
* **dexport-owned ops** — the structural ops of the IR (constants, params,
  lists, tuples, control flow, records), registered with ``register_op``.
  ``registered_ops()`` lists them.

The ops dexport defines live in its dialects (``dexport.ir.dialects``: ``prim``,
``struct``, ``dexport``), which this module imports at its end, so every op is
known once ``dexport.ir.ops`` is imported.

A kernel is ``kernel(node, *input_values) -> tuple`` (one entry per output);
a type rule is ``type_rule(node) -> list[Type]`` (the output types implied by
the node's inputs and attributes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from dexport.ir.errors import DexportError
from dexport.ir.types import (ANY, BOOL, DEVICE, DTYPE, FLOAT, INT, NONE, STR, ListType,
                              OptionalType, ScalarType, TensorType, TupleType, Type,
                              tensor_type_of)

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
_TYPE_RULES: dict[tuple[str, str, str], TypeRule] = {}  # by split_op_name


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


def register_type_rule(name: str, type_rule: TypeRule) -> None:
    """Give the torch op ``name`` (e.g. a ``torch.library`` custom op) a type rule more
    precise than its schema's (which knows only "a Tensor"). One rule per op."""
    key = _overload_key(name)
    if key in _TYPE_RULES:
        raise DexportError(f"op {name!r} already has a type rule", op=name,
                           hint="an op's type rule is defined once, by the dialect that owns the op")
    if any(_overload_key(cached) == key for cached in _TORCH_CACHE):
        raise DexportError(f"op {name!r} was looked up before its type rule was registered", op=name,
                           hint="register type rules when the dialect module is imported")
    _TYPE_RULES[key] = type_rule


def _overload_key(name: str) -> tuple[str, str, str]:
    # "dexport::nms" and "dexport::nms.default" name the same overload.
    return split_op_name(name)

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
    ns, base, overload_name = split_op_name(name)
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
                 _TYPE_RULES.get((ns, base, overload_name)) or _schema_type_rule(schema), schema, overload.__doc__ or "")


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


def _dict_set_item(node, d, key, value):
    d[key] = value
    return ()


# The same for dicts (TorchScript's Dict(str, t) and Dict(int, t); overload names
# as torch spells them: `__getitem__.Dict_str` reads, `_set_item.str` writes).
for _key in ("str", "int"):
    _GENERIC_LIST_KERNELS.update({
        f"aten::__getitem__.Dict_{_key}": lambda node, d, key: (d[key],),
        f"aten::len.Dict_{_key}": lambda node, d: (len(d),),
        f"aten::_set_item.{_key}": _dict_set_item,
        f"aten::keys.{_key}": lambda node, d: (list(d.keys()),),
        f"aten::values.{_key}": lambda node, d: (list(d.values()),),
        f"aten::__contains__.{_key}": lambda node, d, key: (key in d,),
        f"aten::get.{_key}": lambda node, d, key: (d.get(key),),
        f"aten::get.default_{_key}": lambda node, d, key, default: (d.get(key, default),),
        f"aten::dict.Dict_{_key}": lambda node, d: (dict(d),),
    })
# Sizes through the tensor's own shape: torch.ops.aten.size returns plain ints, which
# on a fake tensor would fix its symbolic dims to numbers (infer-types).
_GENERIC_LIST_KERNELS["aten::size"] = lambda node, x: (list(x.shape),)


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


def node_error(node, what: str, hint: str) -> DexportError:
    """A kernel's error about ``node``, naming its op, scope and source line."""
    return DexportError(what, op=node.op, scope=node.meta.scope, source=node.meta.source, hint=hint)


def constant_input(node, index: int, default: Any = None) -> Any:
    """The value of input ``index`` when a ``prim::Constant`` produces it, else
    ``default`` (type rules use it for sizes given as constant arguments)."""
    producer = node.inputs[index].node
    if producer is not None and producer.op == "prim::Constant":
        return producer.attrs["value"]
    return default


# The dialects register their ops with the functions above; importing them here means
# looking up any op dexport defines needs nothing but this module.
import dexport.ir.dialects  # noqa: E402,F401
