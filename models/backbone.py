"""ResNet backbones (R50 and a tiny variant) feeding a feature pyramid (FPN).

Everything here is plain torch and traces at any input resolution: no sizes are
baked in, the top-down path upsamples by a fixed factor of 2. Inputs must be
padded to a multiple of ``FPN.size_divisibility`` (32) so every pyramid level is
exactly twice the next coarser one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BackboneConfig", "FrozenBatchNorm2d", "ConvNorm", "BasicBlock", "BottleneckBlock",
    "ResNet", "LastLevelMaxPool", "LastLevelP6P7", "FPN", "build_resnet", "build_backbone",
]


@dataclass(frozen=True)
class BackboneConfig:
    """Decides the backbone: ``depth=50`` is a standard ResNet-50, ``depth=0`` the tiny one.

    ``top_block`` picks what sits above P5: "maxpool" gives P6 (R-CNN), "p6p7" gives P6
    and P7 from C5 (RetinaNet). ``freeze_at`` freezes the stem (1) and the first
    ``freeze_at - 1`` stages, as pretrained detectors do; tiny models train from scratch.
    """
    depth: int = 50
    widths: tuple[int, ...] = (256, 512, 1024, 2048)
    stem_channels: int = 64
    fpn_channels: int = 256
    top_block: str = "maxpool"
    freeze_at: int = 2

    @staticmethod
    def tiny(**overrides) -> "BackboneConfig":
        base = dict(depth=0, widths=(16, 32, 64, 128), stem_channels=16, fpn_channels=32,
                    freeze_at=0)
        base.update(overrides)
        return BackboneConfig(**base)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters, stored as buffers.

    Detection batches are too small for batch statistics, so the backbone uses the
    statistics of pretraining. Written as a single multiply-add so every exporter
    sees two elementwise ops rather than a training-aware batch_norm.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class ConvNorm(nn.Sequential):
    """Conv2d without bias followed by FrozenBatchNorm2d (the norm provides the shift)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.norm = FrozenBatchNorm2d(cout)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual shortcut (projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = ConvNorm(cin, cout, 3, stride)
        self.conv2 = ConvNorm(cout, cout, 3)
        self.shortcut = ConvNorm(cin, cout, 1, stride) if (cin != cout or stride != 1) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity)


class BottleneckBlock(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand, plus a residual shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        mid = cout // 4
        self.conv1 = ConvNorm(cin, mid, 1)
        self.conv2 = ConvNorm(mid, mid, 3, stride)
        self.conv3 = ConvNorm(mid, cout, 1)
        self.shortcut = ConvNorm(cin, cout, 1, stride) if (cin != cout or stride != 1) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity)


class ResNet(nn.Module):
    """Stem (7x7/2 conv + 3x3/2 max-pool) and four stages res2..res5 (strides 4..32)."""

    def __init__(self, block: type[nn.Module], blocks_per_stage: tuple[int, ...],
                 widths: tuple[int, ...], stem_channels: int, freeze_at: int = 0):
        super().__init__()
        self.stem = ConvNorm(3, stem_channels, 7, stride=2)
        self.stage_names = [f"res{i + 2}" for i in range(len(widths))]
        self.out_channels = dict(zip(self.stage_names, widths))
        self.out_strides = {name: 4 * 2 ** i for i, name in enumerate(self.stage_names)}
        cin = stem_channels
        for i, (name, width, count) in enumerate(zip(self.stage_names, widths, blocks_per_stage)):
            stride = 1 if i == 0 else 2
            layers = []
            for j in range(count):
                layers.append(block(cin, width, stride if j == 0 else 1))
                cin = width
            self.add_module(name, nn.Sequential(*layers))
        self._freeze(freeze_at)

    def _freeze(self, freeze_at: int) -> None:
        modules = [self.stem] + [getattr(self, n) for n in self.stage_names]
        for module in modules[:freeze_at]:
            for p in module.parameters():
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = F.relu(self.stem(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        outputs: dict[str, torch.Tensor] = {}
        # The stages are the children after the stem, in order (a loop over names with
        # getattr would not script).
        for name, stage in self.named_children():
            if name != "stem":
                x = stage(x)
                outputs[name] = x
        return outputs


class LastLevelMaxPool(nn.Module):
    """P6 = stride-2 subsampling of P5 (the R-CNN FPN's extra level for large anchors)."""

    in_feature = "p5"
    num_levels = 1

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [F.max_pool2d(x, kernel_size=1, stride=2, padding=0)]


class LastLevelP6P7(nn.Module):
    """P6 = 3x3/2 conv of C5, P7 = 3x3/2 conv of relu(P6) (RetinaNet's extra levels)."""

    in_feature = "res5"
    num_levels = 2

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.p6 = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(cout, cout, 3, stride=2, padding=1)
        for conv in (self.p6, self.p7):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p6 = self.p6(x)
        return [p6, self.p7(F.relu(p6))]


class FPN(nn.Module):
    """Feature pyramid over a ResNet: lateral 1x1 + output 3x3 per level, top-down sum.

    ``forward(images)`` returns a dict ``{"p2": ..., "p6": ...}`` (names in
    ``out_features``); ``out_strides`` maps each name to its stride and all levels have
    ``out_channels`` channels.
    """

    size_divisibility = 32

    def __init__(self, bottom_up: ResNet, out_channels: int, top_block: nn.Module | None):
        super().__init__()
        # Also an instance attribute: scripted code reads no class attributes.
        self.size_divisibility = FPN.size_divisibility
        self.bottom_up = bottom_up
        self.in_features = list(bottom_up.stage_names)
        self.lateral = nn.ModuleList()
        self.output = nn.ModuleList()
        for name in self.in_features:
            lateral = nn.Conv2d(bottom_up.out_channels[name], out_channels, 1)
            output = nn.Conv2d(out_channels, out_channels, 3, padding=1)
            for conv in (lateral, output):
                nn.init.kaiming_uniform_(conv.weight, a=1)
                nn.init.zeros_(conv.bias)
            self.lateral.append(lateral)
            self.output.append(output)
        self.top_block = top_block
        self.top_block_input = top_block.in_feature if top_block is not None else ""
        first = int(math.log2(bottom_up.out_strides[self.in_features[0]]))
        extra = top_block.num_levels if top_block is not None else 0
        self.out_features = [f"p{first + i}" for i in range(len(self.in_features) + extra)]
        self.out_strides = {name: 2 ** (first + i) for i, name in enumerate(self.out_features)}
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        bottom_up = self.bottom_up(x)
        laterals: list[torch.Tensor] = []
        for i, lateral in enumerate(self.lateral):
            laterals.append(lateral(bottom_up[self.in_features[i]]))
        # Walk from the coarsest level down, adding the upsampled coarser sum.
        for i in range(len(laterals) - 2, -1, -1):
            laterals[i] = laterals[i] + F.interpolate(laterals[i + 1], scale_factor=2.0,
                                                      mode="nearest")
        results: list[torch.Tensor] = []
        for i, output in enumerate(self.output):
            results.append(output(laterals[i]))
        if self.top_block is not None:
            source = results[-1] if self.top_block_input == "p5" else bottom_up["res5"]
            results.extend(self.top_block(source))
        outputs: dict[str, torch.Tensor] = {}
        for name, result in zip(self.out_features, results):
            outputs[name] = result
        return outputs


def build_resnet(cfg: BackboneConfig) -> ResNet:
    """The bottom-up network alone: R50 (bottleneck, [3,4,6,3]) or tiny (basic, 1 per stage)."""
    if cfg.depth == 50:
        return ResNet(BottleneckBlock, (3, 4, 6, 3), cfg.widths, cfg.stem_channels, cfg.freeze_at)
    if cfg.depth == 0:
        return ResNet(BasicBlock, (1,) * len(cfg.widths), cfg.widths, cfg.stem_channels,
                      cfg.freeze_at)
    raise ValueError(f"unsupported ResNet depth {cfg.depth}; use 50 or 0 (tiny)")


def build_backbone(cfg: BackboneConfig) -> FPN:
    """ResNet + FPN as described by ``cfg`` (see BackboneConfig)."""
    bottom_up = build_resnet(cfg)
    if cfg.top_block == "maxpool":
        top_block = LastLevelMaxPool()
    elif cfg.top_block == "p6p7":
        top_block = LastLevelP6P7(bottom_up.out_channels["res5"], cfg.fpn_channels)
    elif cfg.top_block == "none":
        top_block = None
    else:
        raise ValueError(f"unknown FPN top_block {cfg.top_block!r}; use maxpool, p6p7 or none")
    return FPN(bottom_up, cfg.fpn_channels, top_block)
