"""PointRend: Mask R-CNN whose mask head predicts a coarse mask, then refines it at the
most uncertain points with an MLP over fine-grained features.

Inference (adaptive subdivision, a fixed number of steps): upsample the mask logits 2x,
pick the ``subdivision_num_points`` cells whose logit is closest to 0, re-predict them
with the point head from the fine-grained FPN feature and the coarse logits sampled at
the cell centres, and write them back. Every size is static (the coarse side doubles
each step), so the whole loop traces. Built on GeneralizedRCNN and ROIHeads; only the
mask part differs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dexport.models import zoo
from dexport.models.rcnn import GeneralizedRCNN, RCNNConfig
from dexport.models.batched import largest_group, rank_in_group, rois_of
from dexport.models.roi_heads import ROIHeads, boxes_to_rois
from dexport.ir.dialects.structures import Instances
from dexport.models.scoping import module_scope
from dexport.models.scripting import ConfigSettings

__all__ = [
    "PointRendConfig", "point_sample", "sample_roi_points", "regular_grid_points",
    "CoarseMaskHead", "PointHead", "PointRendMaskHead", "PointRendROIHeads", "PointRendRCNN",
]


@dataclass(frozen=True)
class PointRendConfig:
    """A Mask R-CNN config plus the PointRend mask head; defaults are detectron2's
    PointRend R50-FPN (COCO). The standard mask head settings of ``rcnn`` are unused."""
    rcnn: RCNNConfig = field(default_factory=lambda: RCNNConfig.r50(mask_on=True))
    in_feature: str = "p2"  # fine-grained features (coarse and point heads)
    coarse_in_side: int = 14  # regular grid of points sampled per ROI for the coarse head
    coarse_side: int = 7  # coarse mask resolution
    coarse_conv_dim: int = 256
    coarse_fc_dim: int = 1024
    coarse_num_fc: int = 2
    point_fc_dim: int = 256
    point_num_fc: int = 3
    subdivision_steps: int = 5  # 7 -> 224
    subdivision_num_points: int = 28 * 28
    train_num_points: int = 14 * 14
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75

    @staticmethod
    def r50(num_classes: int = 80) -> "PointRendConfig":
        return PointRendConfig(rcnn=RCNNConfig.r50(mask_on=True, num_classes=num_classes))

    @staticmethod
    def tiny(num_classes: int = 3) -> "PointRendConfig":
        """Narrow heads, 3 subdivision steps (7 -> 56, as fine as Mask R-CNN's pasted
        masks need on ~128x128 images) of 14x14 points."""
        return PointRendConfig(
            rcnn=RCNNConfig.tiny(mask_on=True, num_classes=num_classes),
            coarse_conv_dim=32, coarse_fc_dim=256, point_fc_dim=64, subdivision_steps=3,
            subdivision_num_points=14 * 14, train_num_points=7 * 7)


def point_sample(input: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of input (N, C, H, W) at coords (N, P, 2) in [0, 1] x [0, 1]
    (x, y) over the whole map, pixel centres at (i + 0.5) / size: (N, C, P)."""
    return F.grid_sample(input, 2.0 * coords.unsqueeze(2) - 1.0, align_corners=False).squeeze(3)


def regular_grid_points(side: int, num_rois: int,
                        device: torch.device | None = None) -> torch.Tensor:
    """(num_rois, side*side, 2) cell-centre coordinates of a side x side grid, row-major."""
    centres = (torch.arange(side, dtype=torch.float32, device=device) + 0.5) / side
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    grid = torch.stack([xs.flatten(), ys.flatten()], dim=1)
    return grid.unsqueeze(0).expand(num_rois, -1, -1)


def sample_roi_points(feature: torch.Tensor, stride: int, rois: torch.Tensor,
                      coords: torch.Tensor) -> torch.Tensor:
    """Fine-grained features (R, C, P) at points given relative to each ROI.

    ``rois`` is (R, 5): batch index, x1, y1, x2, y2 in image coordinates; ``coords`` is
    (R, P, 2) in [0, 1] box-relative. Points are normalized by the padded image extent
    the feature map covers, taken from its (traced) shape. Every image is sampled in one
    ``grid_sample``: the points of image i's ROIs are laid out in row i of a grid padded
    to the largest per-image ROI count, so no python loop runs over the images.
    """
    boxes = rois[:, 1:]
    xy = boxes[:, None, :2] + coords * (boxes[:, None, 2:] - boxes[:, None, :2])
    extent = torch._shape_as_tensor(feature)[2:].flip(0).to(xy.dtype) * stride  # (w, h)
    xy = xy / extent
    num_images, num_points = feature.shape[0], coords.shape[1]
    image = rois[:, 0].to(torch.int64)
    slot = rank_in_group(image, num_images)  # the ROI's place among its image's ROIs
    per_image = largest_group(image, num_images)
    columns = slot.unsqueeze(1) * num_points + torch.arange(num_points, device=xy.device)
    grid = xy.new_zeros((num_images, per_image * num_points, 2))
    grid = grid.index_put((image.unsqueeze(1), columns), xy)
    sampled = point_sample(feature, grid)  # (N, C, per_image * P)
    return sampled.transpose(1, 2)[image.unsqueeze(1), columns].transpose(1, 2)


class CoarseMaskHead(nn.Module):
    """A 2x2/2 conv halves the sampled feature grid, FC layers, then per-class
    ``side x side`` mask logits."""

    def __init__(self, channels: int, in_side: int, conv_dim: int, fc_dim: int, num_fc: int,
                 num_classes: int, side: int):
        super().__init__()
        self.num_classes = num_classes
        self.side = side
        self.reduce = nn.Conv2d(channels, conv_dim, 2, stride=2)
        nn.init.kaiming_normal_(self.reduce.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.reduce.bias)
        fcs = []
        dim = conv_dim * (in_side // 2) ** 2
        for _ in range(num_fc):
            fc = nn.Linear(dim, fc_dim)
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)
            fcs.append(fc)
            dim = fc_dim
        self.fcs = nn.ModuleList(fcs)
        self.prediction = nn.Linear(dim, num_classes * side * side)
        nn.init.normal_(self.prediction.weight, std=0.001)
        nn.init.zeros_(self.prediction.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.reduce(x)).flatten(1)
        for fc in self.fcs:
            x = F.relu(fc(x))
        return self.prediction(x).unflatten(1, (self.num_classes, self.side, self.side))


class PointHead(nn.Module):
    """Per-point MLP (1x1 Conv1d) over fine features + coarse logits; the coarse logits
    are concatenated again before every layer."""

    def __init__(self, channels: int, fc_dim: int, num_fc: int, num_classes: int):
        super().__init__()
        fcs = []
        dim = channels + num_classes
        for _ in range(num_fc):
            fc = nn.Conv1d(dim, fc_dim, 1)
            nn.init.kaiming_normal_(fc.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(fc.bias)
            fcs.append(fc)
            dim = fc_dim + num_classes
        self.fcs = nn.ModuleList(fcs)
        self.predictor = nn.Conv1d(dim, num_classes, 1)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """(R, C, P) features and (R, K, P) coarse logits -> (R, K, P) point logits."""
        x = torch.cat([fine, coarse], dim=1)
        for fc in self.fcs:
            x = torch.cat([F.relu(fc(x)), coarse], dim=1)
        return self.predictor(x)


def _pick_class(x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """x[r, classes[r]] for every row r, keeping a length-1 class dim."""
    return x[torch.arange(x.shape[0], device=x.device), classes].unsqueeze(1)


def _uncertain_points(logits: torch.Tensor, num_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices (R, P) of the cells of (R, 1, H, W) logits closest to 0 and their
    cell-centre coordinates (R, P, 2) in [0, 1]."""
    h, w = logits.shape[-2:]
    # Upsampled logits tie often; a stable sort picks the same cells on every backend
    # (topk's order among equal values is unspecified).
    idx = (-logits.abs()).flatten(1).sort(dim=1, descending=True, stable=True).indices[:, :num_points]
    x = ((idx % w).to(logits.dtype) + 0.5) / w
    y = (torch.div(idx, w, rounding_mode="floor").to(logits.dtype) + 0.5) / h
    return idx, torch.stack([x, y], dim=2)


class PointRendMaskHead(nn.Module, ConfigSettings):
    """Coarse mask head + point head over one FPN level, with subdivision inference."""

    def __init__(self, cfg: PointRendConfig, channels: int, stride: int):
        super().__init__()
        self.cfg = cfg
        self.stride = stride
        num_classes = cfg.rcnn.roi_heads.num_classes
        self.coarse_head = CoarseMaskHead(channels, cfg.coarse_in_side, cfg.coarse_conv_dim,
                                          cfg.coarse_fc_dim, cfg.coarse_num_fc, num_classes,
                                          cfg.coarse_side)
        self.point_head = PointHead(channels, cfg.point_fc_dim, cfg.point_num_fc, num_classes)

    def config_settings(self, cfg: PointRendConfig) -> dict:
        """What inference reads, as plain attributes (see ConfigSettings)."""
        return {"coarse_in_side": cfg.coarse_in_side, "coarse_side": cfg.coarse_side,
                "subdivision_steps": cfg.subdivision_steps,
                "subdivision_num_points": cfg.subdivision_num_points}

    @module_scope
    def coarse_logits(self, feature: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """(R, K, side, side) coarse mask logits from a regular grid of point features."""
        side = self.coarse_in_side
        points = regular_grid_points(side, rois.shape[0], rois.device)
        x = sample_roi_points(feature, self.stride, rois, points)
        return self.coarse_head(x.unflatten(2, (side, side)))

    @module_scope
    def point_logits(self, feature: torch.Tensor, rois: torch.Tensor, coarse: torch.Tensor,
                     points: torch.Tensor) -> torch.Tensor:
        """(R, K, P) refined logits at box-relative ``points`` (R, P, 2)."""
        fine = sample_roi_points(feature, self.stride, rois, points)
        return self.point_head(fine, point_sample(coarse, points))

    def forward(self, feature: torch.Tensor, rois: torch.Tensor,
                classes: torch.Tensor) -> torch.Tensor:
        """Mask logits (R, 1, M, M) of each ROI's class, M = coarse_side * 2**steps."""
        coarse = self.coarse_logits(feature, rois)
        logits = _pick_class(coarse, classes)
        side = self.coarse_side
        num_points = self.subdivision_num_points
        for step in range(self.subdivision_steps):
            logits = F.interpolate(logits, scale_factor=2.0, mode="bilinear",
                                   align_corners=False)
            side *= 2
            last = step == self.subdivision_steps - 1
            if num_points >= 4 * side * side and not last:
                continue  # the next step re-predicts every cell anyway
            idx, points = _uncertain_points(logits, min(num_points, side * side))
            refined = self.point_logits(feature, rois, coarse, points)
            refined = refined.gather(1, classes[:, None, None].expand(-1, 1, idx.shape[1]))
            logits = logits.flatten(2).scatter(2, idx.unsqueeze(1), refined).reshape_as(logits)
        return logits


class PointRendROIHeads(ROIHeads):
    """ROIHeads with the PointRend mask head in place of the standard one."""

    def __init__(self, cfg: PointRendConfig, channels: int, strides: dict[str, int]):
        if not cfg.rcnn.roi_heads.mask_on:
            raise ValueError("PointRend needs rcnn.roi_heads.mask_on=True")
        super().__init__(cfg.rcnn.roi_heads, channels, strides)
        del self.mask_pooler  # points are sampled straight from the feature map
        self.mask_feature_index = self.in_features.index(cfg.in_feature)
        self.mask_head = PointRendMaskHead(cfg, channels, strides[cfg.in_feature])

    def mask_inference(self, feats: list[torch.Tensor],
                       detections: dict[str, torch.Tensor]) -> torch.Tensor:
        """n×1×M×M mask probabilities of each detection's predicted class."""
        rois = rois_of(detections["boxes"], detections["image_index"])
        return self.mask_head(feats[self.mask_feature_index], rois,
                              detections["classes"]).sigmoid()

    def mask_losses(self, feats, foreground: list[Instances], targets: list[Instances]) -> dict:
        """BCE of the coarse logits against the gt masks resampled on the coarse grid
        (``loss_mask``), and of the point head at training points against the gt masks
        sampled there (``loss_mask_point``). Training points favour uncertain ones:
        detectron2's importance sampling (oversample, keep the most uncertain share,
        fill up with uniform random points)."""
        cfg = self.mask_head.cfg
        feature = feats[self.mask_feature_index]
        rois = boxes_to_rois([f.proposal_boxes for f in foreground])
        coarse = self.mask_head.coarse_logits(feature, rois)
        if rois.shape[0] == 0:
            return {"loss_mask": coarse.sum() * 0.0, "loss_mask_point": coarse.sum() * 0.0}
        classes = torch.cat([f.gt_classes for f in foreground])
        coarse_picked = _pick_class(coarse, classes)
        with torch.no_grad():
            grid = regular_grid_points(cfg.coarse_side, rois.shape[0], rois.device)
            coarse_target = _gt_mask_values(foreground, targets, rois, grid)
            points = _training_points(coarse_picked, cfg)
            point_target = _gt_mask_values(foreground, targets, rois, points)
        loss_mask = F.binary_cross_entropy_with_logits(coarse_picked.flatten(1), coarse_target)
        refined = self.mask_head.point_logits(feature, rois, coarse, points)
        refined = refined.gather(1, classes[:, None, None].expand(-1, 1, points.shape[1]))
        loss_point = F.binary_cross_entropy_with_logits(refined[:, 0], point_target)
        return {"loss_mask": loss_mask, "loss_mask_point": loss_point}


def _gt_mask_values(foreground: list[Instances], targets: list[Instances], rois: torch.Tensor,
                    points: torch.Tensor) -> torch.Tensor:
    """(R, P) values of each ROI's matched gt bitmask, bilinearly sampled at box-relative
    ``points`` (R, P, 2); ROIs are in image order, as boxes_to_rois lays them out."""
    values = []
    start = 0
    for f, gt in zip(foreground, targets):
        n = len(f)
        if n == 0:
            continue
        masks = gt.gt_masks[f.gt_index].unsqueeze(1).to(points.dtype)  # (n, 1, H, W)
        x1y1, x2y2 = rois[start:start + n, None, 1:3], rois[start:start + n, None, 3:5]
        xy = x1y1 + points[start:start + n] * (x2y2 - x1y1)
        extent = torch.tensor([masks.shape[-1], masks.shape[-2]], dtype=xy.dtype,
                              device=xy.device)
        values.append(point_sample(masks, xy / extent)[:, 0])
        start += n
    return torch.cat(values)


def _training_points(logits: torch.Tensor, cfg: PointRendConfig) -> torch.Tensor:
    """(R, P, 2) random box-relative points biased to where (R, 1, h, w) ``logits`` are
    uncertain: draw ``oversample_ratio * P`` uniform points, keep the
    ``importance_sample_ratio * P`` closest to 0, fill up with fresh uniform points."""
    num_rois = logits.shape[0]
    num_points = cfg.train_num_points
    drawn = torch.rand(num_rois, int(num_points * cfg.oversample_ratio), 2, device=logits.device)
    uncertainty = -point_sample(logits, drawn)[:, 0].abs()
    num_uncertain = int(cfg.importance_sample_ratio * num_points)
    idx = uncertainty.topk(num_uncertain, dim=1).indices
    chosen = drawn.gather(1, idx.unsqueeze(2).expand(-1, -1, 2))
    fill = torch.rand(num_rois, num_points - num_uncertain, 2, device=logits.device)
    return torch.cat([chosen, fill], dim=1)


class PointRendRCNN(GeneralizedRCNN):
    """GeneralizedRCNN with PointRendROIHeads; same input/output format."""

    def __init__(self, cfg: PointRendConfig):
        super().__init__(cfg.rcnn)
        self.cfg = cfg
        self.roi_heads = PointRendROIHeads(cfg, self.backbone.out_channels,
                                           self.backbone.out_strides)


zoo.register("pointrend_R50_FPN", PointRendRCNN, PointRendConfig.r50())
zoo.register("pointrend_tiny", PointRendRCNN, PointRendConfig.tiny())
