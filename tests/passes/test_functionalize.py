"""functionalize: in-place and out= ops become functional, writes through views included."""
import pytest
import torch
from torch import nn

import dexport
from dexport.capture import capture
from dexport.ir.errors import DexportError, PassError
from dexport.ir.interpreter import run
from dexport.ir.verifier import verify
from dexport.passes import PassManager
from dexport.passes.effects import graph_mutates


def _functionalize(model, example, *checks):
    g = capture(model.eval(), (example,), method="tracing")
    assert graph_mutates(g)
    PassManager("functionalize", verify_each=True).run(g)
    assert not graph_mutates(g)
    verify(g, "tensors-only")
    for x in (example, *checks):
        with torch.no_grad():
            torch.testing.assert_close(run(g, [x])[0], model(x.clone()))
    return g


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _fresh(x):
    return x * 1.0


FAMILIES = {
    "add_": lambda x: _fresh(x).add_(x, alpha=2),
    "mul_": lambda x: _fresh(x).mul_(3),
    "relu_": lambda x: _fresh(x).relu_(),
    "clamp_": lambda x: _fresh(x).clamp_(-0.5, 0.5),
    "fill_": lambda x: _fresh(x).fill_(2.5) + x,
    "fill_tensor": lambda x: _fresh(x).fill_(x.sum()) ,
    "zero_": lambda x: _fresh(x).zero_() + x,
    "copy_": lambda x: _fresh(x).copy_(x[0:1].sin()),
    "index_put_": lambda x: _fresh(x).index_put_((torch.tensor([0, 2]),), torch.tensor(7.0)),
    "masked_fill_": lambda x: _fresh(x).masked_fill_(x > 0, -1.0),
    "hardswish_": lambda x: nn.functional.hardswish(_fresh(x), inplace=True),
    "hardtanh_": lambda x: nn.functional.hardtanh(_fresh(x), inplace=True),
    "sigmoid_": lambda x: _fresh(x).sigmoid_(),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_inplace_family(name):
    _functionalize(Fn(FAMILIES[name]), torch.randn(3, 4), torch.randn(3, 4))


def _select_write(x):
    out = torch.zeros_like(x)
    out[:, 0] = x[:, 1]
    return out


def _slice_write(x):
    out = x * 2
    out[1:, 2:] += 1.0
    return out


def _view_write(x):
    out = x + 1
    out.view(-1)[:4].add_(1.0)
    return out


def _reshape_write(x):
    out = x + 1
    out.reshape(2, -1).mul_(2)
    return out


def _view_read_after_write(x):
    out = x + 1
    row = out[0]              # view taken before the write
    out.mul_(10)
    later = out[1]            # view of the new base
    return row + later


def _two_views(x):
    out = x + 0
    a = out[:, 0:2]
    b = out[:, 1:3]           # overlaps a
    a.add_(100)
    return b.clone() + out.sum()


def _transpose_write(x):
    out = x + 0
    out.t()[0].fill_(3.0)
    return out


def _list_after_write(x):
    out = x + 0
    parts = [out, x]
    out.add_(1)
    return torch.cat(parts)


@pytest.mark.parametrize("fn", [_select_write, _slice_write, _view_write, _reshape_write,
                                _view_read_after_write, _two_views, _transpose_write, _list_after_write])
def test_writes_through_views(fn):
    g = _functionalize(Fn(fn), torch.randn(3, 4), torch.randn(3, 4))
    assert not any(n.op.endswith("_") for n in g.nodes())


def test_write_into_graph_input_refused():
    g = capture(Fn(lambda x: x.add_(1)).eval(), (torch.randn(3),), method="tracing")
    with pytest.raises(PassError, match="graph input") as e:
        PassManager("functionalize").run(g)
    assert e.value.op == "aten::add_.Tensor" and "clone" in e.value.hint


def test_write_through_expand_refused():
    def fn(x):
        base = x[0:1] + 0
        base.expand(3, 4).contiguous()
        big = base.expand(3, 4)
        return big.clone()
    g = capture(Fn(fn).eval(), (torch.randn(3, 4),), method="tracing")
    PassManager("functionalize").run(g)  # no write: nothing refused
    g2 = capture(Fn(lambda x: (x + 0).unsqueeze(0).expand(2, 3, 4).select(0, 0).add_(1)).eval(),
                 (torch.randn(3, 4),), method="tracing")
    with pytest.raises(PassError, match="no known inverse"):
        PassManager("functionalize").run(g2)


def test_tensors_only_verifier_rejects_mutation():
    g = capture(Fn(lambda x: _fresh(x).relu_()).eval(), (torch.randn(3),), method="tracing")
    with pytest.raises(DexportError, match="writes to one of its arguments") as e:
        verify(g, "tensors-only")
    assert e.value.op == "aten::relu_"


def test_functional_property_check_and_full_cse():
    def fn(x):
        y = x + 1
        y.relu_()
        return (x * 2) + (x * 2) + y
    g = capture(Fn(fn).eval(), (torch.randn(3),), method="tracing")
    with pytest.raises(PassError, match="functional"):
        from dexport.passes.base import Pass, register_pass

        @register_pass
        class _NeedsFunctional(Pass):
            name = "test-needs-functional"
            requires = ("functional",)

            def run(self, graph):
                return False
        PassManager("test-needs-functional").run(g)
    PassManager("functionalize,test-needs-functional,cse,dce").run(g)
    assert sum(n.op == "aten::mul.Tensor" for n in g.nodes()) == 1


class InplaceBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.act(self.conv(x))
        return nn.functional.hardswish(y, inplace=True)


def test_inplace_relu_and_hardswish_model():
    _functionalize(InplaceBlock(), torch.randn(1, 3, 8, 8), torch.randn(2, 3, 8, 8))


class ViewWrites(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        out = torch.zeros_like(x)
        out[:, 0] = y[:, 1]
        out.view(-1)[:5].add_(1.0)
        return out + 1


def test_onnx_export_of_view_writes_matches_eager(tmp_path):
    torch.manual_seed(0)
    model = ViewWrites().eval()
    result = dexport.export(model, (torch.randn(1, 3, 16, 16),), tmp_path / "vw",
                            check_inputs=[(torch.randn(2, 3, 16, 16),)])
    assert result.verification.ok, result.verification.format_table()
