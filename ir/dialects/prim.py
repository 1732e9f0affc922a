"""The prim dialect: constants, parameters, lists, tuples and control flow.

These ops have no torch schema dexport could call (or, for ``prim::If``/``prim::Loop``,
they carry blocks), so dexport defines their kernels and type rules itself; the names
are TorchScript's, so a captured jit graph maps onto them one to one.
"""
from __future__ import annotations

import torch

from dexport.ir.ops import node_error, register_op, register_type_rule, type_of_constant, unify_types
from dexport.ir.types import ANY, BOOL, FLOAT, INT, TENSOR, ListType, TensorType, TupleType, tensor_type_of


def _constant_kernel(node):
    return (node.attrs["value"],)


def _param_kernel(node):
    graph = node.graph
    name = node.attrs["name"]
    if graph is None or name not in graph.params:
        raise node_error(node, f"parameter {name!r} is not in graph.params",
                         "add the tensor with graph.add_param(name, tensor)")
    return (graph.params[name],)


def _param_type(node):
    graph = node.graph
    tensor = graph.params.get(node.attrs["name"]) if graph is not None else None
    return [tensor_type_of(tensor) if tensor is not None else TENSOR]


def _unpack_kernel(node, seq):
    if len(seq) != len(node.outputs):
        raise node_error(node, f"{node.op} of {len(seq)} elements into {len(node.outputs)} outputs",
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


class _Uninitialized:
    """The run-time value of ``prim::Uninitialized``: TorchScript's placeholder for a
    variable no path has assigned yet (early returns, breaks). Reading it as a tensor
    fails loudly; passing it along (loop-carried, returned by the untaken branch) is fine."""
    __slots__ = ()

    def __repr__(self) -> str:
        return "<uninitialized>"

    def __bool__(self) -> bool:
        raise TypeError("an uninitialized value (prim::Uninitialized) was read")


UNINITIALIZED = _Uninitialized()


def _if_kernel(node, cond):
    from dexport.ir.interpreter import run_if
    return run_if(node, cond)


def _if_type(node):
    per_block = [[v.type for v in b.returns] for b in node.blocks]
    return [unify_types(list(ts)) for ts in zip(*per_block)]


def _loop_kernel(node, max_trip, cond, *carried):
    from dexport.ir.interpreter import run_loop
    return run_loop(node, max_trip, cond, carried)


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


def _tuple_index_type(node):
    t, index = node.inputs[0].type, node.inputs[1]
    i = index.node.attrs.get("value") if index.node is not None and index.node.op == "prim::Constant" else None
    if isinstance(t, TupleType) and isinstance(i, int) and -len(t.elems) <= i < len(t.elems):
        return [t.elems[i]]
    return [node.outputs[0].type]


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
register_op("prim::DictConstruct", num_inputs=None, num_outputs=1,
            kernel=lambda node, *kv: (dict(zip(kv[0::2], kv[1::2])),),
            type_rule=lambda node: [ANY], doc="A dict of the inputs (key, value, key, value, ...).")
register_op("prim::TupleIndex", num_inputs=2, num_outputs=1, kernel=lambda node, t, i: (t[i],),
            type_rule=_tuple_index_type, doc="Item inputs[1] (an int) of a tuple.")
register_op("prim::NumToTensor", num_inputs=1, num_outputs=1,
            kernel=lambda node, x: (torch.ops.prim.NumToTensor.Scalar(x),),
            type_rule=_num_to_tensor_type,
            doc="A 0-d tensor holding a number (int -> i64, float -> f64, bool -> b8).")
register_op("prim::Uninitialized", num_inputs=0, num_outputs=1, kernel=lambda node: (UNINITIALIZED,),
            type_rule=lambda node: [node.outputs[0].type],
            doc="A placeholder for a value no path has assigned yet (TorchScript's early returns); "
                "runs as the sentinel dexport.ir.dialects.prim.UNINITIALIZED.")
register_op("prim::unchecked_cast", num_inputs=1, num_outputs=1, kernel=lambda node, x: (x,),
            type_rule=lambda node: [node.outputs[0].type],
            doc="TorchScript's refinement of an Optional to its element type: the value unchanged.")
# torch's own kernels cannot take None for their generic arguments.
register_op("aten::__is__", num_inputs=2, num_outputs=1, kernel=lambda node, a, b: (a is b,),
            type_rule=lambda node: [BOOL], doc="Python's `a is b` (TorchScript's `x is None`).")
register_op("aten::__isnot__", num_inputs=2, num_outputs=1, kernel=lambda node, a, b: (a is not b,),
            type_rule=lambda node: [BOOL], doc="Python's `a is not b` (TorchScript's `x is not None`).")
register_op("prim::If", num_inputs=1, num_outputs=None, kernel=_if_kernel, type_rule=_if_type,
            doc="Runs blocks[0] if the condition holds, else blocks[1]; their returns are the outputs.")
register_op("prim::Loop", num_inputs=None, num_outputs=None, kernel=_loop_kernel,
            type_rule=lambda node: [v.type for v in node.inputs[2:]],
            doc="TorchScript loop: inputs (max_trip, cond, carried...); the body takes "
                "(iter, carried...) and returns (cond, carried...); outputs the final carried.")


def _scalar_tensor_rule(default: torch.dtype):
    """``torch.tensor(number)`` in scripted code: a 0-d tensor of the dtype argument,
    or the number's default dtype (the fake kernel cannot run on a symbolic number)."""
    def rule(node):
        dtype = node.inputs[1].node.attrs.get("value") if len(node.inputs) > 1 and node.inputs[1].node is not None \
            and node.inputs[1].node.op == "prim::Constant" else None
        return [TensorType(dtype if isinstance(dtype, torch.dtype) else default, ())]
    return rule


for _overload, _default in (("int", torch.int64), ("float", torch.float32), ("bool", torch.bool)):
    register_type_rule(f"aten::tensor.{_overload}", _scalar_tensor_rule(_default))


def _list_item_type(node):
    t = node.inputs[0].type
    return [t.elem if isinstance(t, ListType) else node.outputs[0].type]


register_type_rule("aten::__getitem__.t", _list_item_type)
