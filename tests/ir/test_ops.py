"""The op registry: torch ops resolved lazily from their schemas, dexport-owned ops
with kernels and type rules."""
import pytest
import torch

from dexport.ir import (BOOL, DTYPE, FLOAT, INT, DexportError, Graph, ListType, RecordType,
                        TensorType, TupleType)
from dexport.ir.dialects.struct import Record
from dexport.ir.ops import (get_op, has_op, ir_type_from_jit, register_op, registered_ops,
                            type_of_constant, unify_types)

F32 = TensorType(torch.float32, (2, 3))


def test_aten_op_from_torch_schema():
    op = get_op("aten::add.Tensor")
    assert op.schema.name == "aten::add" and op.schema.overload_name == "Tensor"
    assert (op.num_inputs, op.num_outputs) == (3, 1)
    x = torch.ones(2)
    # alpha is keyword-only in the schema; the kernel passes it by name.
    (out,) = op.kernel(None, x, x, 3)
    assert torch.equal(out, torch.full((2,), 4.0))
    assert get_op("aten::add.Tensor") is op  # cached


def test_default_overload_and_multiple_returns():
    assert get_op("aten::relu").schema.overload_name == ""
    op = get_op("aten::max.dim")
    values, indices = op.kernel(None, torch.tensor([[1.0, 5.0], [7.0, 2.0]]), 1, False)
    assert values.tolist() == [5.0, 7.0] and indices.tolist() == [1, 0]
    assert op.type_rule(None) == [TensorType(), TensorType()]


def test_list_return_is_one_output():
    op = get_op("aten::split.Tensor")
    assert op.num_outputs == 1
    (parts,) = op.kernel(None, torch.arange(4), 2, 0)
    assert [p.tolist() for p in parts] == [[0, 1], [2, 3]]


def test_prim_ops_with_torch_schemas():
    x = torch.zeros(2, 5)
    assert get_op("aten::size.int").kernel(None, x, 1) == (5,)
    assert get_op("aten::Int.Tensor").kernel(None, torch.tensor(7)) == (7,)
    assert get_op("prim::device").kernel(None, x) == (torch.device("cpu"),)
    assert get_op("aten::ScalarImplicit").kernel(None, torch.tensor(2.5)) == (2.5,)
    assert get_op("aten::size.int").type_rule(None) == [INT]


def test_unknown_op_says_what_to_do():
    with pytest.raises(DexportError, match="unknown op 'aten::no_such_op'") as info:
        get_op("aten::no_such_op")
    assert "aten::add.Tensor" in info.value.hint
    assert not has_op("aten::no_such_op") and not has_op("nonamespace")


def test_unknown_overload_lists_the_known_ones():
    with pytest.raises(DexportError, match="no overload 'Bogus'") as info:
        get_op("aten::add.Bogus")
    assert "aten::add.Tensor" in info.value.hint and "aten::add.Scalar" in info.value.hint


def test_registered_ops_and_duplicates():
    owned = registered_ops()
    for name in ("prim::Constant", "prim::Param", "prim::If", "prim::Loop", "prim::ListConstruct",
                 "prim::TupleUnpack", "prim::NumToTensor", "struct::construct", "struct::get"):
        assert name in owned
    assert owned == sorted(owned)
    with pytest.raises(DexportError, match="already registered"):
        register_op("prim::Constant", num_inputs=0, num_outputs=1, kernel=lambda node: (0,))


def test_register_a_new_op():
    register_op("test_ops::twice", num_inputs=1, num_outputs=1, kernel=lambda node, x: (2 * x,),
                type_rule=lambda node: [node.inputs[0].type])
    op = get_op("test_ops::twice")
    assert op.kernel(None, 4) == (8,) and op.schema is None
    assert "test_ops::twice" in registered_ops()


def _node(g, op, inputs, n_out=1, **attrs):
    return g.create_node(op, inputs, [TensorType()] * n_out, attrs)


def test_structural_kernels_and_type_rules():
    g = Graph()
    x = g.add_input(F32, "x")
    n = g.add_input(INT, "n")
    lst = _node(g, "prim::ListConstruct", [x, x])
    assert get_op(lst.op).type_rule(lst) == [ListType(F32)]
    lst.outputs[0].type = ListType(F32)
    unpack = _node(g, "prim::ListUnpack", [lst.output], n_out=2)
    assert get_op(unpack.op).type_rule(unpack) == [F32, F32]
    with pytest.raises(DexportError, match="of 3 elements into 2 outputs"):
        get_op(unpack.op).kernel(unpack, [1, 2, 3])
    tup = _node(g, "prim::TupleConstruct", [x, n])
    assert get_op(tup.op).type_rule(tup) == [TupleType((F32, INT))]
    tup.outputs[0].type = TupleType((F32, INT))
    tunpack = _node(g, "prim::TupleUnpack", [tup.output], n_out=2)
    assert get_op(tunpack.op).type_rule(tunpack) == [F32, INT]
    assert get_op(tup.op).kernel(tup, 1, 2) == ((1, 2),)
    num = _node(g, "prim::NumToTensor", [n])
    assert get_op(num.op).type_rule(num) == [TensorType(torch.int64, ())]
    assert get_op(num.op).kernel(num, 3)[0].dtype == torch.int64


def test_struct_ops():
    g = Graph()
    boxes = g.add_input(TensorType(torch.float32, ("n", 4)), "boxes")
    scores = g.add_input(TensorType(torch.float32, ("n",)), "scores")
    make = _node(g, "struct::construct", [boxes, scores], kind="Instances", fields=["boxes", "scores"])
    rtype = get_op(make.op).type_rule(make)[0]
    assert rtype == RecordType("Instances", (("boxes", boxes.type), ("scores", scores.type)))
    (rec,) = get_op(make.op).kernel(make, "B", "S")
    assert isinstance(rec, Record) and rec.fields == {"boxes": "B", "scores": "S"}
    make.outputs[0].type = rtype
    get_ = _node(g, "struct::get", [make.output], field="scores")
    assert get_op(get_.op).type_rule(get_) == [scores.type]
    assert get_op(get_.op).kernel(get_, rec) == ("S",)
    missing = _node(g, "struct::get", [make.output], field="masks")
    with pytest.raises(DexportError, match="has no field 'masks'"):
        get_op(missing.op).kernel(missing, rec)


def test_param_reads_graph_params():
    g = Graph()
    w = g.add_param("conv.weight", torch.ones(2))
    assert get_op("prim::Param").kernel(w.node)[0] is g.params["conv.weight"]
    assert get_op("prim::Param").type_rule(w.node) == [TensorType(torch.float32, (2,))]
    del g.params["conv.weight"]
    with pytest.raises(DexportError, match="'conv.weight' is not in graph.params"):
        get_op("prim::Param").kernel(w.node)


def test_constant_types():
    assert type_of_constant(True) == BOOL and type_of_constant(2) == INT
    assert type_of_constant(2.5) == FLOAT and type_of_constant(torch.float16) == DTYPE
    assert type_of_constant([1, 2]) == ListType(INT)
    assert type_of_constant(torch.zeros(2, dtype=torch.int64)) == TensorType(torch.int64, (2,))


def test_unify_types_keeps_what_agrees():
    a = TensorType(torch.float32, (2, 3))
    b = TensorType(torch.float32, (4, 3))
    assert unify_types([a, b]) == TensorType(torch.float32, ("?", 3))
    assert unify_types([a, TensorType(torch.int64, (2,))]) == TensorType(None, None)


def test_jit_types_convert():
    t = torch._C.parse_schema("f(Tensor[] a, int? b, (float, bool) c) -> Tensor")
    types = [ir_type_from_jit(a.type) for a in t.arguments]
    assert [str(x) for x in types] == ["list[Tensor]", "optional[int]", "tuple[float, bool]"]


def test_generic_list_ops_run_on_python_lists():
    lst = [3, 4, 5]
    assert get_op("aten::__getitem__.t").kernel(None, lst, -1) == (5,)
    assert get_op("aten::len.t").kernel(None, lst) == (3,)
    assert get_op("aten::slice.t").kernel(None, lst, 1, None, 1) == ([4, 5],)
    assert get_op("aten::add.t").kernel(None, lst, [6]) == ([3, 4, 5, 6],)
    (same,) = get_op("aten::append.t").kernel(None, lst, 7)
    assert same is lst and lst == [3, 4, 5, 7]  # mutates, as in TorchScript
    get_op("aten::_set_item.t").kernel(None, lst, 0, 9)
    assert get_op("aten::pop.t").kernel(None, lst, 0) == (9,) and lst == [4, 5, 7]


def test_overload_of_resolves_op_names_against_torch_ops():
    from dexport.ir.ops import overload_of
    assert overload_of("aten::add.Tensor") is torch.ops.aten.add.Tensor
    assert overload_of("aten::relu") is torch.ops.aten.relu.default
    with pytest.raises(DexportError, match="unknown op 'aten::no_such_op'"):
        overload_of("aten::no_such_op")
    with pytest.raises(DexportError, match="has no overload 'Nope'") as err:
        overload_of("aten::add.Nope")
    assert "aten::add.Tensor" in err.value.hint
