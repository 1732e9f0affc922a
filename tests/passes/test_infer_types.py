"""infer-types: fake-tensor propagation fills what capture left unknown and never
contradicts what it knew."""
import pytest
import torch

from dexport.driver import batched_inputs, build_graph, default_pipeline
from dexport.ir.errors import PassError
from dexport.ir.interpreter import run, run_structured
from dexport.ir.parser import parse
from dexport.ir.types import TensorType
from dexport.models import zoo
from dexport.passes import PassManager, get_pass

CONV = """graph(%x: f32[N,3,H,W]) {
  %w: f32[8,3,3,3] = prim::Param() {name="w"}
  %none: None = prim::Constant() {value=None}
  %s: list[int] = prim::Constant() {value=[2, 2]}
  %p: list[int] = prim::Constant() {value=[1, 1]}
  %g: int = prim::Constant() {value=1}
  %y: Tensor = aten::conv2d(%x, %w, %none, %s, %p, %p, %g)
  %z: f32[*] = aten::relu(%y)
  %f: Tensor = aten::flatten.using_ints(%z, %g, %g)
  %m: Tensor = aten::gt.Scalar(%z, %g)
  %nz: Tensor = aten::nonzero(%m)
  %k: DECLARED = aten::sigmoid(%z)
  return (%f, %nz, %k)
}
"""


def _graph(declared="Tensor", example_shapes=False, x_type="f32[N,3,H,W]"):
    text = CONV.replace("DECLARED", declared).replace("f32[N,3,H,W]", x_type)
    return parse(("#! example_shapes\n" if example_shapes else "") + text,
                 params={"w": torch.randn(8, 3, 3, 3)})


def _types(g):
    return {v.name_hint: str(v.type) for n in g.nodes() for v in n.outputs if v.name_hint}


def test_untyped_values_get_dtype_rank_and_symbolic_shapes():
    g = _graph()
    assert get_pass("infer-types").run(g)
    types = _types(g)
    assert types["y"] == types["z"] == types["f"] == types["k"] == "f32[N,8,ceil(H/2),ceil(W/2)]"
    assert types["m"] == "b8[N,8,ceil(H/2),ceil(W/2)]"
    assert types["nz"] == "i64[n0,4]"  # a data-dependent size is a fresh symbol
    assert not get_pass("infer-types").run(g)  # nothing left to fill in


def test_expression_dims_of_the_inputs_stay_symbolic():
    g = parse("""graph(%x: f32[N,8*ceil(H/32)]) {
  %y: Tensor = aten::relu(%x)
  return (%y)
}
""")
    get_pass("infer-types").run(g)
    assert str(g.outputs[0].type) == "f32[N,8*ceil(H/32)]"


def test_known_types_are_kept():
    # A named dim and an int stay as declared; only the unknown dim is filled in.
    g = _graph("f32[N,8,P,?]")
    get_pass("infer-types").run(g)
    assert _types(g)["k"] == "f32[N,8,P,ceil(W/2)]"


@pytest.mark.parametrize("declared, why, every_node", [
    ("i64[*]", "dtype f32 vs i64", False), ("f32[N,?]", "rank 4 vs 2", False),
    ("f32[N,8,4,?]", "dim 2: 5 vs 4", False),
    ("f32[N,8]", "rank 4 vs 2", True),  # complete types are run and checked only with every_node
])
def test_a_contradiction_is_a_pass_error_naming_the_node(declared, why, every_node):
    g = _graph(declared, x_type="f32[N,3,10,12]")
    with pytest.raises(PassError) as err:
        get_pass("infer-types", every_node=every_node).run(g)
    assert "aten::sigmoid" in str(err.value) and declared in str(err.value) and why in str(err.value)


def test_example_shapes_graphs_get_no_int_dims_as_facts():
    g = _graph(example_shapes=True, x_type="f32[2,3,H,32]")
    assert get_pass("infer-types").run(g)
    types = _types(g)
    assert types["y"] == "f32[?,?,ceil(H/2),?]"  # dtype, rank and the symbolic dim only
    assert types["nz"] == "i64[n0,?]"
    # Example sizes are never compared: the declared (example) 5 is not a contradiction ...
    g = _graph("f32[2,8,4,?]", example_shapes=True, x_type="f32[2,3,10,32]")
    get_pass("infer-types").run(g)
    assert _types(g)["k"] == "f32[2,8,4,?]"
    # ... but a dtype or rank still is.
    with pytest.raises(PassError, match="rank 4 vs 3"):
        get_pass("infer-types").run(_graph("f32[2,8,?]", example_shapes=True, x_type="f32[2,3,10,32]"))


def test_if_outputs_get_what_both_branches_agree_on():
    g = parse("""graph(%x: f32[N,4], %c: bool) {
  %r: Tensor = prim::If(%c) {
    block0() {
      %a: Tensor = aten::relu(%x)
      return (%a)
    }
    block1() {
      %b: Tensor = aten::neg(%x)
      return (%b)
    }
  }
  return (%r)
}
""")
    get_pass("infer-types").run(g)
    node = next(iter(g.nodes()))
    assert [str(b.returns[0].type) for b in node.blocks] == ["f32[N,4]", "f32[N,4]"]
    assert str(g.outputs[0].type) == "f32[N,4]"


def test_results_do_not_change_and_the_verifier_accepts_every_step():
    g = _graph()
    x = torch.randn(2, 3, 11, 14)
    before = run(g, [x])
    PassManager("infer-types{every_node=true}", verify_each=True).run(g)
    after = run(g, [x])
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    for value, result in zip(g.outputs, after):
        assert isinstance(value.type, TensorType) and value.type.rank == result.dim()


def test_it_runs_before_decompose_in_the_default_pipeline():
    passes = default_pipeline().split(",")
    assert passes.index("infer-types") == passes.index("decompose{target=onnx}") - 1


@pytest.mark.slow  # every node of a detector on fake tensors: about 15 s
def test_a_zoo_detector_checks_out_node_by_node_under_verify_each():
    from tests.e2e.test_export_onnx import images
    example = (images(1, 64, seed=0),)
    g, _ = build_graph(zoo.get("mask_rcnn_tiny"), example, pipeline="canonicalize,cse,fold-constants")
    flat = list(batched_inputs(example))
    before = run(g, flat)
    PassManager("infer-types{every_node=true}", verify_each=True).run(g)  # no contradiction anywhere
    assert all(torch.equal(a, b) for a, b in zip(before, run(g, flat)))


def test_a_zoo_detector_runs_it_in_the_default_pipeline_under_verify_each():
    from tests.e2e.test_export_onnx import images
    example = (images(1, 64, seed=0),)
    g, pipeline = build_graph(zoo.get("mask_rcnn_tiny"), example)  # verify_each=True
    assert "infer-types" in pipeline
    flat = batched_inputs(example)
    with torch.no_grad():
        eager = zoo.get("mask_rcnn_tiny").eval().forward_batched(*flat)
        ours = run_structured(g, flat)
    assert sorted(ours) == sorted(eager)
    assert all(torch.allclose(ours[k].float(), eager[k].float(), atol=1e-4) for k in eager)


def test_values_inside_a_loop_body_are_filled_in():
    g = parse("""graph(%x: f32[N,4], %n: int) {
  %c: bool = prim::Constant() {value=True}
  %l: f32[N,4] = prim::Loop(%n, %c, %x) {
    block0(%i: int, %acc: f32[N,4]) {
      %s: Tensor = aten::mul.Tensor(%acc, %x)
      return (%c, %s)
    }
  }
  return (%l)
}
""")
    x = torch.randn(3, 4)
    before = run(g, [x, 3])
    assert get_pass("infer-types").run(g)
    body = next(n for n in g.nodes() if n.blocks).blocks[0]
    assert [str(n.outputs[0].type) for n in body.nodes] == ["f32[N,4]"]
    assert torch.equal(before[0], run(g, [x, 3])[0])


LOOP_CARRIES = """graph(%x: f32[N,4], %n: int) {
  %c: bool = prim::Constant() {value=True}
  %zero: int = prim::Constant() {value=0}
  %one: int = prim::Constant() {value=1}
  %half: float = prim::Constant() {value=0.5}
  %init: Tensor = aten::mul.Scalar(%x, %half)
  %acc_out: Tensor, %rows_out: Tensor = prim::Loop(%n, %c, %init, %x) {
    block0(%i: int, %acc: Tensor, %rows: Tensor) {
      %s: Tensor = aten::add.Tensor(%acc, %x, %one)
      %pair: list[Tensor] = prim::ListConstruct(%rows, %x)
      %grown: Tensor = aten::cat(%pair, %zero)
      return (%c, %s, %grown)
    }
  }
  return (%acc_out, %rows_out)
}
"""


def test_loop_carried_values_get_what_the_initial_values_and_every_trip_agree_on():
    g = parse(LOOP_CARRIES)
    x = torch.randn(3, 4)
    before = run(g, [x, 2])
    assert get_pass("infer-types").run(g)
    loop = next(n for n in g.nodes() if n.op == "prim::Loop")
    # acc keeps f32[N,4] on every trip; rows grows along dim 0, so that dim is unknown
    assert [str(v.type) for v in loop.outputs] == ["f32[N,4]", "f32[?,4]"]
    assert [str(p.type) for p in loop.blocks[0].params[1:]] == ["f32[N,4]", "f32[?,4]"]
    assert [str(v.type) for v in loop.blocks[0].returns[1:]] == ["f32[N,4]", "f32[?,4]"]
    assert all(torch.equal(a, b) for a, b in zip(before, run(g, [x, 2])))


def test_a_loop_whose_body_changes_a_dtype_learns_no_dtype_for_it():
    g = parse(LOOP_CARRIES.replace("%s: Tensor = aten::add.Tensor(%acc, %x, %one)",
                                   "%s: Tensor = aten::gt.Scalar(%acc, %half)"))
    get_pass("infer-types").run(g)
    loop = next(n for n in g.nodes() if n.op == "prim::Loop")
    assert loop.outputs[0].type.dtype is None and str(loop.outputs[1].type) == "f32[?,4]"
