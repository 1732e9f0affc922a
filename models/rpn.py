"""Region proposal network: anchors, head, proposal selection and training losses.

Also holds the box matching/sampling helpers the ROI heads reuse. Inference is
traceable at any batch size and resolution: anchors come from the feature shapes at
run time, top-k counts are clamped with tensor ops, image sizes are an i64[N, 2]
tensor, and the per-image NMS and top-k run over all images at once (batch index
tensors, see ``dexport.models.batched``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dexport.ir.dialects import dexport as ops
from dexport.ir.dialects.detection_io import sizes_tensor
from dexport.models.batched import clip_boxes_per_row, nonempty, top_per_image
from dexport.ir.dialects.structures import Boxes, ImageList, Instances, pairwise_iou
from dexport.models.scoping import module_scope
from dexport.models.scripting import ConfigSettings

__all__ = [
    "RPNConfig", "AnchorGenerator", "RPNHead", "RPN", "topk_count", "match_labels", "sample_labels",
]


@dataclass(frozen=True)
class RPNConfig:
    """RPN settings; defaults are detectron2's R50-FPN ones."""
    in_features: tuple[str, ...] = ("p2", "p3", "p4", "p5", "p6")
    anchor_sizes: tuple[float, ...] = (32, 64, 128, 256, 512)  # one size per level
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    box_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    iou_thresholds: tuple[float, float] = (0.3, 0.7)  # below: background, at/above: object
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    pre_nms_topk_train: int = 2000  # per level
    pre_nms_topk_test: int = 1000
    post_nms_topk_train: int = 1000  # per image
    post_nms_topk_test: int = 1000
    nms_thresh: float = 0.7
    min_box_size: float = 0.0
    smooth_l1_beta: float = 0.0
    loss_weight: float = 1.0


def topk_count(total: int, k: int) -> int:
    """min(total, k), kept as a tensor when ``total`` is a traced size (a 0-d tensor)."""
    if isinstance(total, torch.Tensor):
        return torch.clamp(total, max=k)
    return min(total, k)


def match_labels(iou: torch.Tensor, thresholds: tuple[float, float],
                 allow_low_quality: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Match each column (anchor/proposal) of a G×N IoU matrix to its best row (gt box).

    Returns ``(matched_idx, labels)``: labels are 1 (IoU >= high), 0 (< low) or -1
    (ignored, in between). ``allow_low_quality`` also makes every gt's best-matching
    columns positive, so no object is left without a positive anchor. With no gt boxes
    everything is background.
    """
    low, high = thresholds
    n = iou.shape[1]
    if iou.shape[0] == 0:
        zeros = torch.zeros(n, dtype=torch.int64, device=iou.device)
        return zeros, zeros.clone()
    best, matched_idx = iou.max(dim=0)
    labels = torch.full((n,), -1, dtype=torch.int64, device=iou.device)
    labels[best < low] = 0
    labels[best >= high] = 1
    if allow_low_quality:
        best_per_gt = iou.max(dim=1, keepdim=True).values
        is_best = ((iou == best_per_gt) & (best_per_gt > 0)).any(dim=0)
        labels[is_best] = 1
    return matched_idx, labels


def sample_labels(labels: torch.Tensor, batch_size: int, positive_fraction: float,
                  background: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick at random at most ``batch_size`` indices, at most ``positive_fraction`` positive.

    ``labels`` holds -1 (ignore), ``background`` (negative) or any other value (positive):
    0/1 for the RPN, the class index with background = num_classes for the ROI heads.
    Returns (positive indices, negative indices).
    """
    pos = torch.nonzero((labels != -1) & (labels != background)).squeeze(1)
    neg = torch.nonzero(labels == background).squeeze(1)
    num_pos = min(pos.numel(), int(batch_size * positive_fraction))
    num_neg = min(neg.numel(), batch_size - num_pos)
    pos = pos[torch.randperm(pos.numel(), device=pos.device)[:num_pos]]
    neg = neg[torch.randperm(neg.numel(), device=neg.device)[:num_neg]]
    return pos, neg


class AnchorGenerator(nn.Module):
    """Anchors for every feature level, laid out (H, W, A) to match the head's outputs.

    Cell anchors (one per aspect ratio, centred at 0) are fixed; the grid of shifts is
    built from each feature map's shape at run time so a trace works at any resolution.
    """

    def __init__(self, sizes: tuple[float, ...], aspect_ratios: tuple[float, ...],
                 strides: tuple[int, ...], offset: float = 0.0):
        super().__init__()
        self.strides = list(strides)
        self.offset = offset
        self.num_anchors = len(aspect_ratios)
        # [levels, A, 4]. Non-persistent: derived from the config, so not part of the weights.
        self.register_buffer("cell_anchors", torch.stack(
            [self._cell_anchors(size, aspect_ratios) for size in sizes]), persistent=False)

    @staticmethod
    def _cell_anchors(size: float, aspect_ratios: tuple[float, ...]) -> torch.Tensor:
        cells = []
        for ratio in aspect_ratios:  # ratio = height / width at constant area
            w = math.sqrt(size * size / ratio)
            h = ratio * w
            cells.append([-w / 2, -h / 2, w / 2, h / 2])
        return torch.tensor(cells, dtype=torch.float32)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        anchors: list[torch.Tensor] = []
        for i, feature in enumerate(features):
            cell, stride = self.cell_anchors[i], self.strides[i]
            h, w = feature.shape[-2], feature.shape[-1]
            xs = torch.arange(w, dtype=torch.float32, device=cell.device) * stride
            ys = torch.arange(h, dtype=torch.float32, device=cell.device) * stride
            ys, xs = torch.meshgrid(ys + self.offset * stride, xs + self.offset * stride,
                                    indexing="ij")
            shifts = torch.stack([xs, ys, xs, ys], dim=-1).reshape(-1, 1, 4)
            anchors.append((shifts + cell.unsqueeze(0)).reshape(-1, 4))
        return anchors


class RPNHead(nn.Module):
    """Shared 3x3 conv, then per-anchor objectness logits and box deltas, on every level."""

    def __init__(self, channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.objectness_logits = nn.Conv2d(channels, num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(channels, num_anchors * 4, 1)
        for layer in (self.conv, self.objectness_logits, self.anchor_deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: list[torch.Tensor]):
        logits, deltas = [], []
        for x in features:
            t = F.relu(self.conv(x))
            logits.append(self.objectness_logits(t))
            deltas.append(self.anchor_deltas(t))
        return logits, deltas


class RPN(nn.Module, ConfigSettings):
    """Proposals per image (``Instances(proposal_boxes, objectness_logits)``) + losses."""

    def __init__(self, cfg: RPNConfig, channels: int, strides: dict[str, int]):
        super().__init__()
        self.cfg = cfg
        self.in_features = list(cfg.in_features)
        self.anchor_generator = AnchorGenerator(
            cfg.anchor_sizes, cfg.aspect_ratios, tuple(strides[f] for f in self.in_features))
        self.head = RPNHead(channels, self.anchor_generator.num_anchors)

    def config_settings(self, cfg: RPNConfig) -> dict:
        """What inference reads, as plain attributes (see ConfigSettings)."""
        return {"pre_nms_topk_train": cfg.pre_nms_topk_train,
                "pre_nms_topk_test": cfg.pre_nms_topk_test,
                "post_nms_topk_train": cfg.post_nms_topk_train,
                "post_nms_topk_test": cfg.post_nms_topk_test,
                "box_weights": tuple(float(w) for w in cfg.box_weights),
                "nms_thresh": cfg.nms_thresh, "min_box_size": cfg.min_box_size}

    @torch.jit.unused  # training (per-image Instances); export scripts ``propose``
    def forward(self, images: ImageList, features: dict[str, torch.Tensor],
                gt_instances: list[Instances] | None = None):
        anchors, logits, deltas = self.head_outputs(features)
        losses = {}
        if self.training:
            losses = self.losses(anchors, logits, deltas, gt_instances)
        with torch.no_grad():
            sizes = sizes_tensor(images.image_sizes, images.device)
            found = self.top_proposals(anchors, logits, deltas, sizes)
        image = found["image_index"]
        proposals = [Instances(size, proposal_boxes=Boxes(found["boxes"][image == i]),
                               objectness_logits=found["scores"][image == i])
                     for i, size in enumerate(images.image_sizes)]
        return proposals, losses

    @module_scope
    def propose(self, features: dict[str, torch.Tensor],
                image_sizes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Batched inference: proposals of every image (``boxes``, ``scores`` = objectness
        logits, ``image_index``), grouped by image; ``image_sizes`` is i64[N, 2]."""
        anchors, logits, deltas = self.head_outputs(features)
        return self.top_proposals(anchors, logits, deltas, image_sizes)

    def head_outputs(self, features: dict[str, torch.Tensor]
                     ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Anchors per level and the head's logits (N, R) and deltas (N, R, 4) in anchor order."""
        feats = [features[f] for f in self.in_features]
        anchors = self.anchor_generator(feats)
        logits, deltas = self.head(feats)
        # (N, A, H, W) -> (N, H*W*A) and (N, A*4, H, W) -> (N, H*W*A, 4): anchor order.
        logits = [x.permute(0, 2, 3, 1).flatten(1) for x in logits]
        deltas = [x.unflatten(1, (-1, 4)).permute(0, 3, 4, 1, 2).flatten(1, 3) for x in deltas]
        return anchors, logits, deltas

    def top_proposals(self, anchors: list[torch.Tensor], logits: list[torch.Tensor],
                      deltas: list[torch.Tensor],
                      image_sizes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Top-k per level and image, decode, clip, drop empty boxes, NMS per image and
        level, then the top-k of each image; all images at once (see ``propose``)."""
        pre_topk = self.pre_nms_topk_train if self.training else self.pre_nms_topk_test
        post_topk = self.post_nms_topk_train if self.training else self.post_nms_topk_test
        all_boxes: list[torch.Tensor] = []
        all_scores: list[torch.Tensor] = []
        all_levels: list[torch.Tensor] = []
        for level, (anchors_i, logits_i, deltas_i) in enumerate(zip(anchors, logits, deltas)):
            k = topk_count(logits_i.shape[1], pre_topk)
            scores_i, idx = logits_i.topk(k, dim=1)  # (N, k)
            batch_idx = torch.arange(idx.shape[0], device=idx.device).unsqueeze(1)
            boxes_i = ops.decode_boxes(deltas_i[batch_idx, idx].reshape(-1, 4),
                                       anchors_i[idx].reshape(-1, 4),
                                       self.box_weights, ops.DEFAULT_SCALE_CLAMP)
            all_boxes.append(boxes_i.reshape(idx.shape[0], -1, 4))
            all_scores.append(scores_i)
            all_levels.append(torch.full_like(idx, level))
        scores = torch.cat(all_scores, dim=1)
        num_images = scores.shape[0]
        image = torch.arange(num_images, device=scores.device).unsqueeze(1).expand_as(scores)
        boxes = clip_boxes_per_row(torch.cat(all_boxes, dim=1), image_sizes.unsqueeze(1))
        boxes, scores = boxes.flatten(0, 1), scores.flatten()
        image, levels = image.flatten(), torch.cat(all_levels, dim=1).flatten()
        keep = nonempty(boxes, self.min_box_size)
        boxes, scores, image, levels = boxes[keep], scores[keep], image[keep], levels[keep]
        # Boxes compete only within their own image and level.
        keep = ops.batched_nms(boxes, scores, image * len(anchors) + levels, self.nms_thresh)
        keep = top_per_image(keep, image, post_topk, num_images)
        return {"boxes": boxes[keep], "scores": scores[keep], "image_index": image[keep]}

    def losses(self, anchors, logits, deltas, gt_instances: list[Instances]) -> dict:
        """Objectness BCE and box-regression smooth-L1 over sampled anchors, per image."""
        if gt_instances is None:
            raise ValueError("RPN training needs gt_instances (each input's 'instances')")
        cfg = self.cfg
        anchors = Boxes(torch.cat(anchors))
        logits = torch.cat(logits, dim=1)
        deltas = torch.cat(deltas, dim=1)
        obj_losses, box_losses = [], []
        for i, gt in enumerate(gt_instances):
            gt_boxes = gt.gt_boxes
            matched_idx, labels = match_labels(pairwise_iou(gt_boxes, anchors),
                                               cfg.iou_thresholds, allow_low_quality=True)
            pos, neg = sample_labels(labels, cfg.batch_size_per_image, cfg.positive_fraction)
            chosen = torch.cat([pos, neg])
            target = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)]).to(logits.dtype)
            obj_losses.append(F.binary_cross_entropy_with_logits(
                logits[i][chosen], target, reduction="sum"))
            if pos.numel():
                gt_deltas = ops.encode_boxes(gt_boxes.tensor[matched_idx[pos]],
                                             anchors.tensor[pos], cfg.box_weights)
                box_losses.append(F.smooth_l1_loss(deltas[i][pos], gt_deltas,
                                                   beta=cfg.smooth_l1_beta, reduction="sum"))
            else:
                box_losses.append(deltas[i].sum() * 0.0)
        normalizer = cfg.batch_size_per_image * len(gt_instances)
        return {
            "loss_rpn_cls": torch.stack(obj_losses).sum() / normalizer * cfg.loss_weight,
            "loss_rpn_loc": torch.stack(box_losses).sum() / normalizer * cfg.loss_weight,
        }
