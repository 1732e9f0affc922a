"""Ordinary (non-zoo) models for the TorchScript backend tests, as ``module:factory``
specs the CLI can import."""
import warnings
from typing import Optional

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Conv + eval-mode BatchNorm + in-place relu_, then a pooled linear head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = self.bn(self.conv(x))
        y.relu_()
        return self.head(y.mean(dim=(2, 3)))


class Structured(nn.Module):
    """Takes a dict, returns a dict holding a tuple: structured I/O through the schemas."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 3)

    def forward(self, inputs):
        h = self.proj(inputs["features"]) * inputs["scale"]
        return {"logits": h, "stats": (h.sum(dim=1), h.amax(dim=1) - h.size(0))}


def small_cnn():
    torch.manual_seed(0)
    model = SmallCNN().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model, (torch.randn(2, 3, 16, 16),), [(torch.randn(3, 3, 24, 20),)]


def structured():
    torch.manual_seed(1)
    model = Structured().eval()

    def inputs(n, seed):
        g = torch.Generator().manual_seed(seed)
        return ({"features": torch.randn(n, 6, generator=g), "scale": torch.rand(n, 1, generator=g)},)
    return model, inputs(4, 0), [inputs(7, 1)]


def _scripted(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 deprecates torch.jit.script
        return torch.jit.script(fn)


def _running_total(x: torch.Tensor, limit: Optional[torch.Tensor]) -> torch.Tensor:
    total = torch.zeros_like(x[0])
    best: Optional[torch.Tensor] = None
    for i in range(x.size(0)):
        row = x[i]
        if best is None:
            best = row
        else:
            best = torch.maximum(best, row)
        if limit is not None:
            row = torch.minimum(row, limit)
        total = total + row
    if best is not None:
        total = total + best
    return total


def _first_above(x: torch.Tensor, threshold: float) -> torch.Tensor:
    for i in range(x.size(0)):  # an early return: TorchScript carries prim::Uninitialized
        if bool(x[i].sum() > threshold):
            return x[i] * 2.0
    return x.sum(0)


running_total, first_above = _scripted(_running_total), _scripted(_first_above)


class ControlFlow(nn.Module):
    """Scripted loops, ifs, Optionals and an early return called inside a trace."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        y = self.lin(x).sigmoid()
        return running_total(y, None), first_above(y * 3.0, 4.0)


def control_flow():
    torch.manual_seed(0)
    checks = [(torch.randn(5, 4),), (torch.randn(1, 4) - 3.0,), (torch.randn(7, 4) + 3.0,)]
    return ControlFlow().eval(), (torch.randn(3, 4),), checks
