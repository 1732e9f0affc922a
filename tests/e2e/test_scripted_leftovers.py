"""Issue 11, item 4: each TorchScript leftover, in a small scripted function called inside
a trace, is folded or lowered and the ONNX artifact matches eager on inputs of other
sizes (and values that take the other path), or the export is refused with a reason."""
from __future__ import annotations

from typing import List, Optional

import onnx
import pytest
import torch

import dexport
from dexport.ir import UnsupportedOpsError
from dexport.ir.errors import DexportError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@torch.jit.script
def early_return(x: torch.Tensor) -> torch.Tensor:
    for i in range(x.size(0)):  # the result before the return is prim::Uninitialized
        if bool(x[i].sum() > 0.0):
            return x[i] * 2.0
    return x.sum(0)


@torch.jit.script
def constant_appends(x: torch.Tensor) -> torch.Tensor:
    rows: List[torch.Tensor] = []
    for i in range(3):
        rows.append(x * float(i + 1))
    return torch.cat(rows, 1)


@torch.jit.script
def on_its_device(x: torch.Tensor) -> torch.Tensor:
    return torch.ones(x.size(1), device=x.device, dtype=x.dtype) + x


@torch.jit.script
def checks_rank(x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 2:
        raise ValueError("expected a 2-D tensor, got {} dims".format(x.dim()))
    return x + 1.0


@torch.jit.script
def size_list_slice(x: torch.Tensor) -> torch.Tensor:
    return x.reshape([-1] + x.shape[1:])[:, :2]


@torch.jit.script
def edited_size_list(x: torch.Tensor) -> torch.Tensor:
    sizes = list(x.shape)
    sizes[0] = 1
    return x.sum(0).reshape(sizes) * x


@torch.jit.script
def size_list_items(x: torch.Tensor) -> torch.Tensor:
    s = x.size()
    return x * float(len(s)) + float(s[-1]) + float(s[0])


@torch.jit.script
def optional_in_loop(x: torch.Tensor, w: Optional[torch.Tensor]) -> torch.Tensor:
    out = x
    for i in range(x.size(0)):  # TorchScript carries w through the loop, refined each trip
        out = out + x[i]
        if w is not None:
            out = out * w
    return out


@torch.jit.script
def running_max(x: torch.Tensor) -> torch.Tensor:
    best: Optional[torch.Tensor] = None
    for i in range(x.size(0)):  # an Optional set on the first trip: only the run decides
        if best is None:
            best = x[i]
        else:
            best = torch.maximum(best, x[i])
    if best is not None:
        return best
    return x.sum(0)


@torch.jit.script
def int_round_trip(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor(x.size(0) // 2)
    return x[: int(k) + 1].sum(0)


@torch.jit.script
def tensor_as_index(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor(x.size(0) - 1)
    return x[:k].sum(0) + x.narrow(0, k, 1).sum(0)  # IntImplicit; narrow.Tensor


@torch.jit.script
def grows_in_a_dynamic_loop(x: torch.Tensor) -> torch.Tensor:
    rows: List[torch.Tensor] = []
    for i in range(x.size(0)):
        rows.append(x[i] * float(i))
    return torch.stack(rows).sum(0)


class Head(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn, self.lin = fn, torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.fn(self.lin(x))


# construct -> (function, an op the capture must hold, so the test checks what it says)
EXPORTED = {
    "prim::Uninitialized": (early_return, "prim::Uninitialized"),
    "aten::append.t (constant trips)": (constant_appends, "aten::append.t"),
    "prim::device": (on_its_device, "prim::device"),
    "aten::format / aten::dim": (checks_rank, "aten::format"),
    "aten::slice.t / aten::add.t": (size_list_slice, "aten::slice.t"),
    "aten::list.t / aten::_set_item.t": (edited_size_list, "aten::_set_item.t"),
    "aten::__getitem__.t / aten::len.t": (size_list_items, "aten::len.t"),
    "aten::__isnot__ (types decide)": (lambda x: optional_in_loop(x, None), "aten::__isnot__"),
    "aten::Int of aten::tensor": (int_round_trip, "aten::tensor.int"),
    "aten::IntImplicit / aten::narrow.Tensor": (tensor_as_index, "aten::IntImplicit"),
}


@pytest.mark.parametrize("construct", [
    *EXPORTED,
    # An Optional whose None-ness the run decides would need ONNX Optional values
    # (Optional / OptionalHasElement / OptionalGetElement) through the Loop.
    pytest.param("aten::__is__ (run decides)", marks=pytest.mark.xfail(
        strict=True, raises=UnsupportedOpsError, reason="aten::__is__, aten::__isnot__, prim::unchecked_cast")),
])
def test_scripted_leftover_exports_and_matches_eager(construct, tmp_path):
    fn, op = EXPORTED.get(construct, (running_max, "aten::__is__"))
    torch.manual_seed(0)
    model = Head(fn).eval()
    example = (torch.randn(3, 4),)
    assert op in {n.op for n in dexport.capture(model, example).nodes()}
    # other row counts, and values on both sides of the data-dependent branch
    checks = [(torch.randn(5, 4) + 1.0,), (torch.randn(2, 4) - 3.0,), (torch.randn(1, 4),)]
    result = dexport.export(model, example, tmp_path / "m", check_inputs=checks)
    assert result.verification.ok, result.verification.format_table()
    onnx.checker.check_model(onnx.load(str(tmp_path / "m" / "model.onnx")))


def test_a_list_grown_in_a_loop_of_dynamic_trips_is_refused_with_the_reason(tmp_path):
    with pytest.raises(DexportError) as info:
        dexport.export(Head(grows_in_a_dynamic_loop).eval(), (torch.randn(3, 4),), tmp_path / "m")
    err = info.value
    assert err.op == "aten::append.t" and "grows inside a scripted loop" in err.what and err.hint
    assert not (tmp_path / "m").exists()
