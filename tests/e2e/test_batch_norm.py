"""nn.BatchNorm in eval mode exports (aten::batch_norm lowered to BatchNormalization)
and matches eager on batches and resolutions not used for capture."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import dexport


def _randomize_stats(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) * 2 + 0.1)
            if m.affine:
                m.weight.data.copy_(torch.randn(m.weight.shape, generator=gen))
                m.bias.data.copy_(torch.randn(m.bias.shape, generator=gen))
    return model.eval()


class ResBlock(nn.Module):
    def __init__(self, affine: bool = True):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6, affine=affine)
        self.conv2, self.bn2 = nn.Conv2d(6, 6, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(6, eps=1e-3)
        self.down = nn.Sequential(nn.Conv2d(3, 6, 1, stride=2, bias=False), nn.BatchNorm2d(6))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.down(x))


class Head1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.bn = nn.Linear(5, 4), nn.BatchNorm1d(4)
        self.conv, self.bn_seq = nn.Conv1d(4, 4, 3, padding=1), nn.BatchNorm1d(4)

    def forward(self, x):  # x: (N, L, 5)
        y = self.bn(self.fc(x).transpose(1, 2))
        return self.bn_seq(self.conv(y))


@pytest.mark.parametrize("affine", [True, False])
def test_resnet_block_with_batchnorm2d_matches_eager_elsewhere(affine, tmp_path):
    torch.manual_seed(0)
    model = _randomize_stats(ResBlock(affine))
    example = (torch.rand(1, 3, 16, 16),)
    checks = [(torch.rand(3, 3, 24, 20),), (torch.rand(2, 3, 33, 17),)]
    result = dexport.export(model, example, tmp_path / "bn2d", check_inputs=checks)
    assert result.verification.ok, result.verification.format_table()


def test_batchnorm1d_matches_eager_elsewhere(tmp_path):
    torch.manual_seed(0)
    model = _randomize_stats(Head1d())
    checks = [(torch.rand(3, 9, 5),), (torch.rand(2, 4, 5),)]
    result = dexport.export(model, (torch.rand(1, 6, 5),), tmp_path / "bn1d", check_inputs=checks)
    assert result.verification.ok, result.verification.format_table()

