"""Cascade (Mask) R-CNN: three box stages, each refining the previous stage's boxes.

Stage k pools the boxes stage k-1 predicted (clipped), classifies them and regresses a
class-agnostic refinement with its own, tighter box weights; it is trained on the
proposals matched at its own, higher IoU threshold (0.5 / 0.6 / 0.7). At inference the
class scores are the average of the three stages' probabilities for the final boxes'
source proposals, the boxes come from the last stage, and the mask head runs on the
final detections. Built on GeneralizedRCNN and ROIHeads; only the box part differs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dexport.ir.dialects import dexport as ops
from dexport.ir.dialects.structures import Boxes, Instances, pairwise_iou
from dexport.models import zoo
from dexport.models.rcnn import GeneralizedRCNN, RCNNConfig
from dexport.models.batched import clip_boxes_per_row, rois_of
from dexport.models.roi_heads import (BoxHead, BoxPredictor, ROIHeads, boxes_to_rois,
                                      select_detections, split_by_image)
from dexport.models.rpn import match_labels

__all__ = ["CascadeConfig", "CascadeBoxPredictor", "CascadeROIHeads", "CascadeRCNN"]


@dataclass(frozen=True)
class CascadeConfig:
    """A Mask R-CNN config plus the per-stage IoU thresholds and box-regression weights.

    The base config's ``roi_heads.iou_threshold`` is the first stage's threshold (it
    drives the proposal sampling); ``roi_heads.box_weights`` is unused.
    """
    rcnn: RCNNConfig = field(default_factory=lambda: RCNNConfig.r50(mask_on=True))
    stage_iou_thresholds: tuple[float, ...] = (0.5, 0.6, 0.7)
    stage_box_weights: tuple[tuple[float, float, float, float], ...] = (
        (10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))

    def __post_init__(self):
        if len(self.stage_iou_thresholds) != len(self.stage_box_weights):
            raise ValueError("CascadeConfig needs one box-weight tuple per stage IoU threshold")
        if self.rcnn.roi_heads.iou_threshold != self.stage_iou_thresholds[0]:
            raise ValueError("rcnn.roi_heads.iou_threshold must equal the first stage's IoU "
                             "threshold (it samples the first stage's proposals)")

    @staticmethod
    def r50(num_classes: int = 80) -> "CascadeConfig":
        return CascadeConfig(rcnn=RCNNConfig.r50(mask_on=True, num_classes=num_classes))

    @staticmethod
    def tiny(num_classes: int = 3) -> "CascadeConfig":
        return CascadeConfig(rcnn=RCNNConfig.tiny(mask_on=True, num_classes=num_classes))


class CascadeBoxPredictor(BoxPredictor):
    """BoxPredictor with one class-agnostic box refinement per ROI (4 deltas)."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__(in_dim, num_classes)
        self.bbox_pred = nn.Linear(in_dim, 4)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.bbox_pred.bias)


def _scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``scale`` in backward."""
    return x.detach() + (x - x.detach()) * scale


class CascadeROIHeads(ROIHeads):
    """ROIHeads whose box part is a cascade of stages (``box_head[k]``, ``box_predictor[k]``)."""

    def __init__(self, cfg: CascadeConfig, channels: int, strides: dict[str, int]):
        super().__init__(cfg.rcnn.roi_heads, channels, strides)
        self.stage_iou_thresholds = cfg.stage_iou_thresholds
        # A list (indexable by a stage number in TorchScript) of 4-float tuples.
        self.stage_box_weights = [tuple(float(w) for w in weights)
                                  for weights in cfg.stage_box_weights]
        heads = self.cfg
        in_dim = channels * heads.box_pooler_resolution ** 2
        self.box_head = nn.ModuleList(
            [BoxHead(in_dim, heads.box_fc_dim) for _ in self.stage_box_weights])
        self.box_predictor = nn.ModuleList(
            [CascadeBoxPredictor(heads.box_fc_dim, heads.num_classes)
             for _ in self.stage_box_weights])

    @property
    def num_stages(self) -> int:
        return len(self.stage_box_weights)

    def run_stage(self, stage: int, feats, rois: torch.Tensor):
        """Class logits and refined boxes (decoded with this stage's weights) for ``rois``."""
        pooled = self.box_pooler(feats, rois)
        if self.training:
            # Every stage back-propagates into the shared features; keep their sum's scale.
            pooled = _scale_gradient(pooled, 1.0 / self.num_stages)
        logits, deltas = self.box_predictor[stage](self.box_head[stage](pooled))
        boxes = ops.decode_boxes(deltas, rois[:, 1:], self.stage_box_weights[stage],
                                 ops.DEFAULT_SCALE_CLAMP)
        return logits, deltas, boxes

    @torch.jit.unused  # per-image Instances (training); export scripts ``detect``
    def forward(self, features: dict[str, torch.Tensor], proposals: list[Instances],
                targets: list[Instances] | None = None):
        """Inference: (list of per-image Instances, {}); training: ([], dict of losses)."""
        if not self.training:
            return super().forward(features, proposals)
        if targets is None:
            raise ValueError("ROI heads training needs targets (each input's 'instances')")
        feats = [features[f] for f in self.in_features]
        sampled = self.label_and_sample(proposals, targets)
        losses = self.cascade_losses(feats, sampled, targets)
        if self.cfg.mask_on:
            foreground = [s[s.gt_classes < self.cfg.num_classes] for s in sampled]
            losses.update(self.mask_losses(feats, foreground, targets))
        return [], losses

    # ---- inference -------------------------------------------------------------------
    def box_inference(self, feats: list[torch.Tensor], proposals: dict[str, torch.Tensor],
                      image_sizes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run every stage on the previous stage's boxes, clipped to their image; average
        the class probabilities over stages; detect on the last stage's boxes (shared by
        all classes of a box). All images at once, rows tagged by image index.

        ``run_stage`` at inference, written as a loop over the stage modules: TorchScript
        indexes a ModuleList only with a literal."""
        image = proposals["image_index"]
        sizes = image_sizes[image]
        boxes = proposals["boxes"]
        prob_sum: torch.Tensor | None = None
        for stage, (head, predictor) in enumerate(zip(self.box_head, self.box_predictor)):
            rois = rois_of(boxes, image)
            logits, deltas = predictor(head(self.box_pooler(feats, rois)))
            refined = ops.decode_boxes(deltas, rois[:, 1:], self.stage_box_weights[stage],
                                       ops.DEFAULT_SCALE_CLAMP)
            probs = F.softmax(logits, dim=-1)
            prob_sum = probs if prob_sum is None else prob_sum + probs
            boxes = clip_boxes_per_row(refined, sizes)
        assert prob_sum is not None  # at least one stage
        scores = (prob_sum / self.num_stages)[:, :-1]  # drop background
        return select_detections(scores, boxes, image, image_sizes.shape[0], self.num_classes,
                                 self.score_thresh, self.nms_thresh, self.detections_per_image)

    # ---- training --------------------------------------------------------------------
    @torch.no_grad()
    def relabel(self, boxes: torch.Tensor, gt: Instances, image_size,
                iou_threshold: float) -> Instances:
        """Next-stage training samples: the previous stage's boxes, clipped and non-empty,
        matched to the gt at this stage's IoU threshold (no sampling, as detectron2)."""
        boxes = Boxes(ops.clip_boxes(boxes, image_size))
        boxes = boxes[boxes.nonempty()]
        gt_index, labels = match_labels(pairwise_iou(gt.gt_boxes, boxes),
                                        (iou_threshold, iou_threshold), allow_low_quality=False)
        num_classes = self.cfg.num_classes
        if len(gt.gt_boxes):
            classes = torch.where(labels == 1, gt.gt_classes[gt_index], num_classes)
            matched = gt.gt_boxes.tensor[gt_index]
        else:
            classes = torch.full_like(labels, num_classes)
            matched = boxes.tensor
        return Instances(image_size, proposal_boxes=boxes, gt_classes=classes,
                         gt_boxes=Boxes(matched))

    def cascade_losses(self, feats, sampled: list[Instances], targets: list[Instances]) -> dict:
        """Per stage: softmax CE over classes and smooth-L1 on the class-agnostic deltas of
        foreground samples (normalized by the number of samples), named ``*_stage{k}``."""
        cfg = self.cfg
        losses = {}
        samples = sampled
        for stage in range(self.num_stages):
            if stage > 0:
                samples = [self.relabel(b, gt, s.image_size, self.stage_iou_thresholds[stage])
                           for b, gt, s in zip(refined, targets, samples)]
            rois = boxes_to_rois([s.proposal_boxes for s in samples])
            logits, deltas, boxes = self.run_stage(stage, feats, rois)
            classes = torch.cat([s.gt_classes for s in samples])
            fg = torch.nonzero(classes < cfg.num_classes).squeeze(1)
            gt_deltas = ops.encode_boxes(torch.cat([s.gt_boxes.tensor for s in samples])[fg],
                                         rois[fg, 1:], self.stage_box_weights[stage])
            loss_box = F.smooth_l1_loss(deltas[fg], gt_deltas, beta=cfg.smooth_l1_beta,
                                        reduction="sum") / max(classes.numel(), 1)
            losses[f"loss_cls_stage{stage}"] = F.cross_entropy(logits, classes)
            losses[f"loss_box_reg_stage{stage}"] = loss_box
            refined = split_by_image(boxes.detach(), rois, len(samples))
        return losses


class CascadeRCNN(GeneralizedRCNN):
    """GeneralizedRCNN with CascadeROIHeads; same input/output format."""

    def __init__(self, cfg: CascadeConfig):
        super().__init__(cfg.rcnn)
        self.cfg = cfg
        self.roi_heads = CascadeROIHeads(cfg, self.backbone.out_channels,
                                         self.backbone.out_strides)


zoo.register("cascade_mask_rcnn_R50_FPN", CascadeRCNN, CascadeConfig.r50())
zoo.register("cascade_mask_rcnn_tiny", CascadeRCNN, CascadeConfig.tiny())
