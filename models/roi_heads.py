"""ROI heads: multi-level ROIAlign pooling, box / mask / keypoint heads and their losses.

Inference is batched and traceable at any batch size: proposals and detections of
all images travel together with an image index per row (see
``dexport.models.batched``); per-image NMS and top-k are vectorised over it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dexport.ir.dialects import dexport as ops
from dexport.ir.dialects.detection_io import sizes_tensor
from dexport.models.batched import clip_boxes_per_row, rois_of, top_per_image
from dexport.models.postprocess import detections_to_instances
from dexport.models.rpn import match_labels, sample_labels
from dexport.ir.dialects.structures import Boxes, Instances, pairwise_iou
from dexport.models.scoping import module_scope
from dexport.models.scripting import ConfigSettings

__all__ = [
    "ROIHeadsConfig", "ROIPooler", "boxes_to_rois", "split_by_image", "BoxHead", "BoxPredictor",
    "MaskHead", "KeypointHead", "ROIHeads", "select_detections", "keypoints_to_heatmap_targets",
]


@dataclass(frozen=True)
class ROIHeadsConfig:
    """ROI-head settings; defaults are detectron2's R50-FPN Faster/Mask/Keypoint R-CNN."""
    num_classes: int = 80
    in_features: tuple[str, ...] = ("p2", "p3", "p4", "p5")
    # A box of canonical_box_size pixels is pooled from level canonical_level.
    canonical_box_size: int = 224
    canonical_level: int = 4
    pooler_sampling_ratio: int = 0  # 0 = adaptive, ceil(roi size / output size)
    iou_threshold: float = 0.5  # proposals at/above are foreground
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    box_pooler_resolution: int = 7
    box_fc_dim: int = 1024
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    smooth_l1_beta: float = 0.0
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_image: int = 100
    mask_on: bool = False
    mask_pooler_resolution: int = 14
    mask_conv_dim: int = 256
    mask_num_convs: int = 4
    keypoint_on: bool = False
    num_keypoints: int = 17
    keypoint_pooler_resolution: int = 14
    keypoint_conv_dims: tuple[int, ...] = (512,) * 8
    keypoint_loss_weight: float = 1.0


def boxes_to_rois(boxes: list[Boxes]) -> torch.Tensor:
    """Per-image boxes -> one K×5 tensor of (batch index, x1, y1, x2, y2)."""
    rois = [torch.cat([torch.full_like(b.tensor[:, :1], i), b.tensor], dim=1)
            for i, b in enumerate(boxes)]
    return torch.cat(rois, dim=0)


def split_by_image(x: torch.Tensor, rois: torch.Tensor, num_images: int) -> list[torch.Tensor]:
    """Rows of ``x`` per image, selected by the ROI batch index (trace-safe, unlike lengths)."""
    if num_images == 1:
        return [x]
    batch_idx = rois[:, 0]
    return [x[batch_idx == i] for i in range(num_images)]


class ROIPooler(nn.Module):
    """ROIAlign from the FPN level each box belongs to (by its size), into one K×C×S×S tensor."""

    def __init__(self, output_size: int, strides: list[int], sampling_ratio: int,
                 canonical_box_size: float, canonical_level: int):
        super().__init__()
        self.output_size = output_size
        self.scales = [1.0 / s for s in strides]
        self.min_level = int(math.log2(strides[0]))
        self.max_level = int(math.log2(strides[-1]))
        self.sampling_ratio = sampling_ratio
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level

    def forward(self, features: list[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        s = self.output_size
        if len(features) == 1:
            return ops.roi_align(features[0], rois, self.scales[0], s, s, self.sampling_ratio, True)
        levels = ops.assign_fpn_levels(rois[:, 1:], self.min_level, self.max_level,
                                       self.canonical_box_size, self.canonical_level)
        rows, pooled = [], []
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            idx = torch.nonzero(levels == level).squeeze(1)
            rows.append(idx)
            pooled.append(ops.roi_align(feature, rois[idx], scale, s, s, self.sampling_ratio, True))
        # Back from level order to the rois' order with one gather: scattering every level
        # into a zero tensor costs a full copy per level where updates are not in place.
        rows = torch.cat(rows)
        # rows.shape[0] is a tracked size under tracing, so the trace keeps the count dynamic.
        position = torch.zeros_like(rows).scatter(0, rows, torch.arange(rows.shape[0], device=rows.device))
        return torch.cat(pooled).index_select(0, position)


class BoxHead(nn.Module):
    """Two fully-connected layers on the flattened pooled features."""

    def __init__(self, in_dim: int, fc_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        for fc in (self.fc1, self.fc2):
            nn.init.kaiming_uniform_(fc.weight, a=1)
            nn.init.zeros_(fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc2(F.relu(self.fc1(x.flatten(1)))))


class BoxPredictor(nn.Module):
    """Class logits (num_classes + background, last) and class-specific box deltas."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(in_dim, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: torch.Tensor):
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Module):
    """3x3 convs, a 2x deconv and a per-class 1x1 conv: 14x14 features -> 28x28 mask logits."""

    def __init__(self, in_channels: int, conv_dim: int, num_convs: int, num_classes: int):
        super().__init__()
        convs = []
        for i in range(num_convs):
            convs.append(nn.Conv2d(in_channels if i == 0 else conv_dim, conv_dim, 3, padding=1))
        self.convs = nn.ModuleList(convs)
        self.deconv = nn.ConvTranspose2d(conv_dim if num_convs else in_channels, conv_dim, 2, 2)
        self.predictor = nn.Conv2d(conv_dim, num_classes, 1)
        for layer in [*self.convs, self.deconv]:
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.predictor(F.relu(self.deconv(x)))


class KeypointHead(nn.Module):
    """3x3 convs, a 2x deconv to one map per keypoint, then 2x bilinear: 14 -> 56 heatmaps."""

    def __init__(self, in_channels: int, conv_dims: tuple[int, ...], num_keypoints: int):
        super().__init__()
        convs = []
        cin = in_channels
        for dim in conv_dims:
            convs.append(nn.Conv2d(cin, dim, 3, padding=1))
            cin = dim
        self.convs = nn.ModuleList(convs)
        self.deconv = nn.ConvTranspose2d(cin, num_keypoints, 4, stride=2, padding=1)
        for layer in [*self.convs, self.deconv]:
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.relu(conv(x))
        x = self.deconv(x)
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def select_detections(scores: torch.Tensor, boxes: torch.Tensor, image_index: torch.Tensor,
                      num_images: int, num_classes: int, score_thresh: float,
                      nms_thresh: float, detections_per_image: int) -> dict[str, torch.Tensor]:
    """Detections of every image: (box, class) pairs scoring above the threshold,
    per-class NMS within each image, the best ``detections_per_image`` of each.

    ``scores`` is [R, num_classes] (background dropped); ``boxes`` is [R, num_classes, 4]
    (class-specific) or [R, 4] (shared by all classes); ``image_index`` is i64[R].
    Returns ``boxes``, ``scores``, ``classes``, ``image_index``, grouped by image."""
    candidates = torch.nonzero(scores > score_thresh)  # (box index, class) pairs
    box_idx, classes = candidates[:, 0], candidates[:, 1]
    boxes = boxes[box_idx, classes] if boxes.dim() == 3 else boxes[box_idx]
    scores = scores[box_idx, classes]
    image = image_index[box_idx]
    keep = ops.batched_nms(boxes, scores, image * num_classes + classes, nms_thresh)
    keep = top_per_image(keep, image, detections_per_image, num_images)
    return {"boxes": boxes[keep], "scores": scores[keep], "classes": classes[keep],
            "image_index": image[keep]}


def keypoints_to_heatmap_targets(keypoints: torch.Tensor, rois: torch.Tensor, size: int):
    """Map gt keypoints (N×K×3: x, y, visibility) into a size×size grid over each roi.

    Returns (flat heatmap index N×K int64, valid N×K bool): a keypoint is valid when it
    is labelled visible (v > 0) and falls inside its roi. Points exactly on the right or
    bottom edge belong to the last cell.
    """
    x0, y0 = rois[:, 0:1], rois[:, 1:2]
    scale_x = size / (rois[:, 2:3] - x0)
    scale_y = size / (rois[:, 3:4] - y0)
    x, y = keypoints[..., 0], keypoints[..., 1]
    on_right, on_bottom = x == rois[:, 2:3], y == rois[:, 3:4]
    xi = ((x - x0) * scale_x).floor().long()
    yi = ((y - y0) * scale_y).floor().long()
    xi = torch.where(on_right, size - 1, xi)
    yi = torch.where(on_bottom, size - 1, yi)
    valid = (xi >= 0) & (yi >= 0) & (xi < size) & (yi < size) & (keypoints[..., 2] > 0)
    return yi * size + xi, valid


class ROIHeads(nn.Module, ConfigSettings):
    """Box head (+ optional mask and keypoint heads) over the proposals of each image."""

    def __init__(self, cfg: ROIHeadsConfig, channels: int, strides: dict[str, int]):
        super().__init__()
        self.cfg = cfg
        self.in_features = list(cfg.in_features)
        level_strides = [strides[f] for f in self.in_features]

        def pooler(resolution: int) -> ROIPooler:
            return ROIPooler(resolution, level_strides, cfg.pooler_sampling_ratio,
                             cfg.canonical_box_size, cfg.canonical_level)

        r = cfg.box_pooler_resolution
        self.box_pooler = pooler(r)
        self.box_head = BoxHead(channels * r * r, cfg.box_fc_dim)
        self.box_predictor = BoxPredictor(cfg.box_fc_dim, cfg.num_classes)
        if cfg.mask_on:
            self.mask_pooler = pooler(cfg.mask_pooler_resolution)
            self.mask_head = MaskHead(channels, cfg.mask_conv_dim, cfg.mask_num_convs,
                                      cfg.num_classes)
        if cfg.keypoint_on:
            self.keypoint_pooler = pooler(cfg.keypoint_pooler_resolution)
            self.keypoint_head = KeypointHead(channels, cfg.keypoint_conv_dims,
                                              cfg.num_keypoints)

    def config_settings(self, cfg: ROIHeadsConfig) -> dict:
        """What inference reads, as plain attributes (see ConfigSettings). The mask and
        keypoint heads exist only when on; inference tests them with ``hasattr`` (static
        in TorchScript)."""
        return {"num_classes": cfg.num_classes,
                "box_weights": tuple(float(w) for w in cfg.box_weights),
                "score_thresh": cfg.score_thresh, "nms_thresh": cfg.nms_thresh,
                "detections_per_image": cfg.detections_per_image}

    @torch.jit.unused  # per-image Instances (training); export scripts ``detect``
    def forward(self, features: dict[str, torch.Tensor], proposals: list[Instances],
                targets: list[Instances] | None = None):
        """Inference: (list of per-image Instances, {}); training: ([], dict of losses)."""
        if self.training:
            feats = [features[f] for f in self.in_features]
            if targets is None:
                raise ValueError("ROI heads training needs targets (each input's 'instances')")
            sampled = self.label_and_sample(proposals, targets)
            losses = self.box_losses(feats, sampled)
            foreground = [s[s.gt_classes < self.cfg.num_classes] for s in sampled]
            if self.cfg.mask_on:
                losses.update(self.mask_losses(feats, foreground, targets))
            if self.cfg.keypoint_on:
                losses.update(self.keypoint_losses(feats, foreground, targets))
            return [], losses
        boxes = [p.proposal_boxes.tensor for p in proposals]
        found = {"boxes": torch.cat(boxes),
                 "image_index": torch.cat([torch.full_like(b[:, 0], i, dtype=torch.int64)
                                           for i, b in enumerate(boxes)])}
        sizes = [p.image_size for p in proposals]
        detections = self.detect(features, found, sizes_tensor(sizes, found["boxes"].device))
        return detections_to_instances(detections, sizes), {}

    # ---- inference -------------------------------------------------------------------
    @module_scope
    def detect(self, features: dict[str, torch.Tensor], proposals: dict[str, torch.Tensor],
               image_sizes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Batched inference on the proposals of all images (``boxes``, ``image_index``,
        grouped by image): detections at the input resolution (``boxes``, ``scores``,
        ``classes``, ``image_index``, [``mask_probs``], [``keypoints``])."""
        feats = [features[f] for f in self.in_features]
        detections = self.box_inference(feats, proposals, image_sizes)
        if hasattr(self, "mask_head"):  # cfg.mask_on
            detections["mask_probs"] = self.mask_inference(feats, detections)
        if hasattr(self, "keypoint_head"):  # cfg.keypoint_on
            detections["keypoints"] = self.keypoint_inference(feats, detections)
        return detections

    def box_inference(self, feats: list[torch.Tensor], proposals: dict[str, torch.Tensor],
                      image_sizes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Decode per class, clip to each image, then ``select_detections``."""
        image = proposals["image_index"]
        rois = rois_of(proposals["boxes"], image)
        logits, deltas = self.box_predictor(self.box_head(self.box_pooler(feats, rois)))
        scores = F.softmax(logits, dim=-1)[:, :-1]
        boxes = ops.decode_boxes(deltas, rois[:, 1:], self.box_weights,
                                 ops.DEFAULT_SCALE_CLAMP)
        boxes = clip_boxes_per_row(boxes.reshape(-1, self.num_classes, 4),
                                   image_sizes[image].unsqueeze(1))
        return select_detections(scores, boxes, image, image_sizes.shape[0], self.num_classes,
                                 self.score_thresh, self.nms_thresh, self.detections_per_image)

    def mask_inference(self, feats: list[torch.Tensor],
                       detections: dict[str, torch.Tensor]) -> torch.Tensor:
        """n×1×28×28 mask probabilities of each detection's predicted class."""
        rois = rois_of(detections["boxes"], detections["image_index"])
        logits = self.mask_head(self.mask_pooler(feats, rois))
        picked = logits[torch.arange(logits.shape[0], device=logits.device),
                        detections["classes"]]
        return picked.sigmoid().unsqueeze(1)

    def keypoint_inference(self, feats: list[torch.Tensor],
                           detections: dict[str, torch.Tensor]) -> torch.Tensor:
        """n×K×3 keypoints (x, y, score) of each detection."""
        rois = rois_of(detections["boxes"], detections["image_index"])
        heatmaps = self.keypoint_head(self.keypoint_pooler(feats, rois))
        return ops.heatmaps_to_keypoints(heatmaps, rois[:, 1:])[:, :, [0, 1, 3]]  # x, y, score

    # ---- training --------------------------------------------------------------------
    @torch.no_grad()
    def label_and_sample(self, proposals: list[Instances],
                         targets: list[Instances]) -> list[Instances]:
        """Add the gt boxes to the proposals, match, and sample a class-balanced subset.

        Each sampled Instances has proposal_boxes, gt_classes (num_classes = background),
        gt_boxes and gt_index (the matched gt, meaningful for foreground only).
        """
        cfg = self.cfg
        sampled = []
        for props, gt in zip(proposals, targets):
            gt_boxes = gt.gt_boxes
            boxes = Boxes.cat([props.proposal_boxes, gt_boxes])
            gt_index, labels = match_labels(pairwise_iou(gt_boxes, boxes),
                                            (cfg.iou_threshold, cfg.iou_threshold),
                                            allow_low_quality=False)
            if len(gt_boxes):
                classes = gt.gt_classes[gt_index]
                classes = torch.where(labels == 1, classes, cfg.num_classes)
            else:
                classes = torch.full_like(labels, cfg.num_classes)
            pos, neg = sample_labels(classes, cfg.batch_size_per_image, cfg.positive_fraction,
                                     background=cfg.num_classes)
            chosen = torch.cat([pos, neg])
            matched = gt_boxes.tensor[gt_index[chosen]] if len(gt_boxes) else boxes.tensor[chosen]
            sampled.append(Instances(props.image_size, proposal_boxes=boxes[chosen],
                                     gt_classes=classes[chosen], gt_boxes=Boxes(matched),
                                     gt_index=gt_index[chosen]))
        return sampled

    def box_losses(self, feats, sampled: list[Instances]) -> dict:
        """Softmax CE over classes and smooth-L1 on the gt class's deltas (foreground only)."""
        cfg = self.cfg
        rois = boxes_to_rois([s.proposal_boxes for s in sampled])
        logits, deltas = self.box_predictor(self.box_head(self.box_pooler(feats, rois)))
        classes = torch.cat([s.gt_classes for s in sampled])
        loss_cls = F.cross_entropy(logits, classes)
        fg = torch.nonzero(classes < cfg.num_classes).squeeze(1)
        proposals = rois[fg, 1:]
        targets = torch.cat([s.gt_boxes.tensor for s in sampled])[fg]
        gt_deltas = ops.encode_boxes(targets, proposals, cfg.box_weights)
        fg_deltas = deltas.reshape(-1, cfg.num_classes, 4)[fg, classes[fg]]
        loss_box = F.smooth_l1_loss(fg_deltas, gt_deltas, beta=cfg.smooth_l1_beta,
                                    reduction="sum") / max(classes.numel(), 1)
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box}

    def mask_losses(self, feats, foreground: list[Instances], targets: list[Instances]) -> dict:
        """Per-pixel BCE between the gt class's 28x28 logits and the gt mask roi-aligned to it."""
        rois = boxes_to_rois([f.proposal_boxes for f in foreground])
        logits = self.mask_head(self.mask_pooler(feats, rois))
        if rois.shape[0] == 0:
            return {"loss_mask": logits.sum() * 0.0}
        size = logits.shape[-1]
        gt_crops = []
        for f, gt in zip(foreground, targets):
            if len(f) == 0:
                continue
            # Each fg proposal crops its own gt mask: one single-image "batch" per mask.
            gt_masks = gt.gt_masks[f.gt_index].unsqueeze(1).float()
            boxes = f.proposal_boxes.tensor
            mask_rois = torch.cat([torch.arange(len(f), device=rois.device,
                                                dtype=boxes.dtype)[:, None], boxes], dim=1)
            gt_crops.append(ops.roi_align(gt_masks, mask_rois, 1.0, size, size, 0, True))
        gt_crops = (torch.cat(gt_crops)[:, 0] >= 0.5).to(logits.dtype)
        classes = torch.cat([f.gt_classes for f in foreground])
        picked = logits[torch.arange(logits.shape[0], device=logits.device), classes]
        return {"loss_mask": F.binary_cross_entropy_with_logits(picked, gt_crops)}

    def keypoint_losses(self, feats, foreground: list[Instances],
                        targets: list[Instances]) -> dict:
        """Softmax CE over heatmap locations, one term per visible gt keypoint in its roi."""
        cfg = self.cfg
        rois = boxes_to_rois([f.proposal_boxes for f in foreground])
        heatmaps = self.keypoint_head(self.keypoint_pooler(feats, rois))
        size = heatmaps.shape[-1]
        keypoints = [gt.gt_keypoints[f.gt_index]
                     for f, gt in zip(foreground, targets) if len(f)]
        if not keypoints:
            return {"loss_keypoint": heatmaps.sum() * 0.0}
        index, valid = keypoints_to_heatmap_targets(torch.cat(keypoints), rois[:, 1:], size)
        index, valid = index.flatten(), valid.flatten()
        if not valid.any():
            return {"loss_keypoint": heatmaps.sum() * 0.0}
        logits = heatmaps.flatten(2).flatten(0, 1)  # (N*K, size*size)
        loss = F.cross_entropy(logits[valid], index[valid], reduction="sum") / valid.sum()
        return {"loss_keypoint": loss * cfg.keypoint_loss_weight}
