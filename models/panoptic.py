"""PanopticFPN: an R-CNN instance branch plus a semantic FPN head, merged into one
panoptic segmentation.

Semantic classes follow detectron2's PanopticFPN layout: class 0 is the single
"things" class (every pixel of any instance), classes 1..S are the stuff classes.
The merge (:func:`combine_semantic_and_instance_outputs`) is post-processing: it is
written with tensor ops only (no loop over instances) so it traces.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dexport.models import zoo
from dexport.models.postprocess import detector_postprocess
from dexport.models.rcnn import GeneralizedRCNN, RCNNConfig
from dexport.models.structures import ImageList, Instances

__all__ = [
    "PanopticFPNConfig", "SemSegFPNHead", "PanopticFPN", "PanopticPostprocess",
    "sem_seg_postprocess", "combine_semantic_and_instance_outputs", "segments_info_as_list",
]


@dataclass(frozen=True)
class PanopticFPNConfig:
    """A Mask R-CNN config plus the semantic head and the merge settings; defaults are
    detectron2's PanopticFPN R50 (COCO: 53 stuff classes + "things")."""
    rcnn: RCNNConfig = field(default_factory=lambda: RCNNConfig.r50(mask_on=True))
    num_sem_classes: int = 54  # "things" (label 0) + the stuff classes
    sem_seg_in_features: tuple[str, ...] = ("p2", "p3", "p4", "p5")
    sem_seg_conv_dims: int = 128
    common_stride: int = 4
    ignore_value: int = 255
    sem_seg_loss_weight: float = 0.5
    instance_loss_weight: float = 1.0
    overlap_threshold: float = 0.5
    stuff_area_thresh: int = 4096
    instances_score_thresh: float = 0.5

    @staticmethod
    def r50(num_classes: int = 80, num_stuff_classes: int = 53) -> "PanopticFPNConfig":
        return PanopticFPNConfig(rcnn=RCNNConfig.r50(mask_on=True, num_classes=num_classes),
                                 num_sem_classes=num_stuff_classes + 1)

    @staticmethod
    def tiny(num_classes: int = 3, num_stuff_classes: int = 2) -> "PanopticFPNConfig":
        """For ~128x128 images: narrow semantic head, stuff area limit scaled down from
        4096 px on COCO-sized images to 64 px."""
        return PanopticFPNConfig(rcnn=RCNNConfig.tiny(mask_on=True, num_classes=num_classes),
                                 num_sem_classes=num_stuff_classes + 1, sem_seg_conv_dims=32,
                                 stuff_area_thresh=64)


class SemSegFPNHead(nn.Module):
    """Semantic segmentation over FPN levels (the "Semantic FPN" head).

    Every level goes through ``max(1, log2(stride / common_stride))`` 3x3 conv + GroupNorm
    + ReLU blocks, each followed by a 2x bilinear upsample while the level is still coarser
    than ``common_stride``; the levels are summed at ``common_stride`` and a 1x1 conv
    predicts the class logits, finally upsampled to the (padded) input size.
    """

    def __init__(self, in_strides: dict[str, int], in_channels: int, num_classes: int,
                 conv_dims: int = 128, common_stride: int = 4, ignore_value: int = 255,
                 loss_weight: float = 1.0):
        super().__init__()
        self.in_features = list(in_strides)
        self.common_stride = common_stride
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.scale_heads = nn.ModuleList()
        for name in self.in_features:
            stride = in_strides[name]
            steps = max(1, (stride // common_stride).bit_length() - 1)
            layers = []
            for k in range(steps):
                conv = nn.Conv2d(in_channels if k == 0 else conv_dims, conv_dims, 3, padding=1,
                                 bias=False)
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                layers += [conv, nn.GroupNorm(min(32, conv_dims), conv_dims), nn.ReLU()]
                if stride != common_stride:
                    layers.append(nn.Upsample(scale_factor=2.0, mode="bilinear",
                                              align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.predictor = nn.Conv2d(conv_dims, num_classes, 1)
        nn.init.kaiming_normal_(self.predictor.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.predictor.bias)

    def layers(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits at ``common_stride`` resolution."""
        x = None
        for name, head in zip(self.in_features, self.scale_heads):
            y = head(features[name])
            x = y if x is None else x + y
        return self.predictor(x)

    def forward(self, features: dict[str, torch.Tensor],
                targets: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """Logits (N, C, H, W) at the padded input size; losses when ``targets`` is given
        (an i64 N×H×W label map, ``ignore_value`` where unlabeled)."""
        logits = F.interpolate(self.layers(features), scale_factor=float(self.common_stride),
                               mode="bilinear", align_corners=False)
        if targets is None:
            return logits, {}
        loss = F.cross_entropy(logits, targets, ignore_index=self.ignore_value, reduction="mean")
        return logits, {"loss_sem_seg": loss * self.loss_weight}


def sem_seg_postprocess(logits: torch.Tensor, image_size, height, width) -> torch.Tensor:
    """Crop one image's (C, H, W) logits to its unpadded ``image_size`` (h, w) and resize
    them bilinearly to the requested output (height, width). Sizes may be ints or (while
    tracing) 0-d tensors."""
    h, w = image_size
    cropped = logits[:, :h, :w].unsqueeze(0)
    return F.interpolate(cropped, size=(height, width), mode="bilinear", align_corners=False)[0]


def _first_owner(masks: torch.Tensor) -> torch.Tensor:
    """For N×H×W bool masks, the index of the first mask covering each pixel, or N where
    none does. Works for N = 0 (all pixels get 0 = N)."""
    stacked = torch.cat([masks, torch.ones_like(masks.any(dim=0, keepdim=True))], dim=0)
    # argmax returns the first maximal index, which is the first covering mask.
    return stacked.to(torch.uint8).argmax(dim=0)


def _bin_counts(index: torch.Tensor, num_bins, weights: torch.Tensor | None = None):
    """For each bin b in [0, num_bins): how many entries of the flat ``index`` equal b (or
    the sum of their ``weights``); other values count nowhere. bincount written as
    compare-and-sum: O(num_bins x len(index)) like the masks themselves, but made of ops
    every export backend has (ONNX has no bincount)."""
    hits = index.unsqueeze(0) == torch.arange(num_bins, device=index.device).unsqueeze(1)
    if weights is None:
        return hits.sum(dim=1)
    return (hits * weights.unsqueeze(0)).sum(dim=1)


def combine_semantic_and_instance_outputs(
    instances, sem_seg: torch.Tensor, *, overlap_threshold: float = 0.5,
    stuff_area_thresh: int = 4096, instances_score_thresh: float = 0.5,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Merge instance masks and semantic logits into one panoptic segmentation.

    ``instances`` has ``pred_masks`` (b8 N×H×W), ``scores`` and ``pred_classes``;
    ``sem_seg`` holds the (C, H, W) semantic logits at the same H×W, class 0 = "things".

    The rule, all vectorised:

    1. Candidates are the instances with ``score >= instances_score_thresh`` and a
       non-empty mask, ranked by score (ties: earlier instance first).
    2. Each pixel goes to the highest-ranked candidate whose mask covers it. A candidate
       is dropped when more than ``overlap_threshold`` of its mask area is covered by
       higher-ranked candidates. Pixels are then given again to the highest-ranked kept
       instance covering them, so a kept instance owns at least ``1 - overlap_threshold``
       of its mask and a dropped one owns nothing.
    3. The remaining pixels take the semantic argmax label; each stuff class (labels
       1..C-1) covering at least ``stuff_area_thresh`` such pixels becomes a segment, the
       rest stay 0 (void), as do pixels labelled "things" that no instance took.

    Segment ids are 1, 2, ...: kept instances in rank order, then stuff classes in label
    order. detectron2 decides "dropped" sequentially against the *kept* instances only;
    here step 2 counts every higher-ranked candidate, so an instance mostly hidden by a
    dropped one is dropped too. The two agree whenever no dropped candidate overlaps a
    lower-ranked one.

    Returns ``(panoptic_seg i32[H, W], segments_info)``; ``segments_info`` is a dict of
    equal-length tensors: ``id`` (i64), ``category_id`` (i64: the thing class for
    instances, the semantic label for stuff), ``isthing`` (bool), ``score`` (f32: the
    instance score, or the mean semantic probability over a stuff segment), ``area``
    (i64 pixels in ``panoptic_seg``), ``instance_id`` (i64 index into ``instances``, -1
    for stuff). Segments are in id order.
    """
    masks = instances.pred_masks
    scores = instances.scores
    order = torch.sort(scores, descending=True, stable=True).indices
    ranked_scores = scores[order]
    candidate = ranked_scores >= instances_score_thresh
    ranked_masks = masks[order] & candidate[:, None, None]
    mask_area = ranked_masks.flatten(1).sum(dim=1)

    # First pass: ownership among all candidates decides which instances are dropped.
    num = ranked_masks.shape[0]
    owner = _first_owner(ranked_masks).flatten()
    owned = _bin_counts(owner, num)
    hidden = (mask_area - owned).to(torch.float32)
    kept = candidate & (mask_area > 0) & (hidden <= overlap_threshold * mask_area)

    # Second pass: only kept instances claim pixels.
    owner = _first_owner(ranked_masks & kept[:, None, None]).flatten()
    thing_ids = torch.cumsum(kept.to(torch.int64), dim=0) * kept
    id_table = torch.cat([thing_ids, thing_ids.new_zeros(1)])
    panoptic = id_table[owner]
    thing_area = _bin_counts(owner, num)

    # Stuff: label the pixels no instance took.
    num_classes = sem_seg.shape[0]
    probs = F.softmax(sem_seg, dim=0)
    best_prob, labels = probs.max(dim=0)
    free = panoptic == 0
    # Pixels an instance took get label num_classes: they count for no class.
    binned = torch.where(free, labels.flatten(), torch.full_like(labels.flatten(), num_classes))
    stuff_area = _bin_counts(binned, num_classes)
    prob_sum = _bin_counts(binned, num_classes, best_prob.flatten())
    is_stuff = torch.arange(num_classes, device=sem_seg.device) > 0
    stuff_kept = is_stuff & (stuff_area >= stuff_area_thresh)
    num_things = kept.sum()
    stuff_ids = (torch.cumsum(stuff_kept.to(torch.int64), dim=0) + num_things) * stuff_kept
    panoptic = torch.where(free, stuff_ids[labels.flatten()], panoptic)
    panoptic = panoptic.reshape(sem_seg.shape[1:]).to(torch.int32)

    thing_rank = torch.nonzero(kept).flatten()
    stuff_label = torch.nonzero(stuff_kept).flatten()
    thing_instance = order[thing_rank]
    segments_info = {
        "id": torch.cat([thing_ids[thing_rank], stuff_ids[stuff_label]]),
        "category_id": torch.cat([instances.pred_classes[thing_instance].to(torch.int64),
                                  stuff_label]),
        "isthing": torch.cat([torch.ones_like(thing_rank, dtype=torch.bool),
                              torch.zeros_like(stuff_label, dtype=torch.bool)]),
        "score": torch.cat([ranked_scores[thing_rank].to(torch.float32),
                            prob_sum[stuff_label] / stuff_area[stuff_label]]),
        "area": torch.cat([thing_area[thing_rank], stuff_area[stuff_label]]),
        "instance_id": torch.cat([thing_instance, torch.full_like(stuff_label, -1)]),
    }
    return panoptic, segments_info


def segments_info_as_list(segments_info: dict[str, torch.Tensor]) -> list[dict]:
    """detectron2's list-of-dicts form: things get ``id, isthing, score, category_id,
    instance_id``; stuff gets ``id, isthing, category_id, area``."""
    rows = []
    columns = {k: v.tolist() for k, v in segments_info.items()}
    for i in range(len(columns["id"])):
        if columns["isthing"][i]:
            rows.append({"id": columns["id"][i], "isthing": True, "score": columns["score"][i],
                         "category_id": columns["category_id"][i],
                         "instance_id": columns["instance_id"][i]})
        else:
            rows.append({"id": columns["id"][i], "isthing": False,
                         "category_id": columns["category_id"][i],
                         "area": columns["area"][i]})
    return rows


class PanopticPostprocess(nn.Module):
    """Per image: rescale detections (``detector_postprocess``) and semantic logits
    (``sem_seg_postprocess``) to the requested output size, then merge them
    (``combine_semantic_and_instance_outputs``). Installed as ``model.postprocess``."""

    def __init__(self, overlap_threshold: float, stuff_area_thresh: int,
                 instances_score_thresh: float, mask_threshold: float = 0.5):
        super().__init__()
        self.overlap_threshold = overlap_threshold
        self.stuff_area_thresh = stuff_area_thresh
        self.instances_score_thresh = instances_score_thresh
        self.mask_threshold = mask_threshold

    def forward(self, results: list[Instances], sem_seg: torch.Tensor,
                batched_inputs: list[dict], image_sizes: list[tuple]) -> list[dict]:
        processed = []
        for i, (r, inputs, (h, w)) in enumerate(zip(results, batched_inputs, image_sizes)):
            height, width = inputs.get("height", h), inputs.get("width", w)
            sem = sem_seg_postprocess(sem_seg[i], (h, w), height, width)
            instances = detector_postprocess(r, height, width, self.mask_threshold)
            panoptic = combine_semantic_and_instance_outputs(
                instances, sem, overlap_threshold=self.overlap_threshold,
                stuff_area_thresh=self.stuff_area_thresh,
                instances_score_thresh=self.instances_score_thresh)
            processed.append({"instances": instances, "sem_seg": sem, "panoptic_seg": panoptic})
        return processed


class PanopticFPN(GeneralizedRCNN):
    """Mask R-CNN plus a semantic FPN head on the same features.

    Eval mode returns per image ``{"instances", "sem_seg": (C, H, W) logits,
    "panoptic_seg": (i32[H, W], segments_info)}`` (see
    :func:`combine_semantic_and_instance_outputs`). Training inputs also need
    ``"sem_seg"`` (i64[H, W], 0 = things, 1.. = stuff, ``ignore_value`` unlabeled); the
    losses are the R-CNN ones (times ``instance_loss_weight``) plus ``loss_sem_seg``.
    """

    def __init__(self, cfg: PanopticFPNConfig):
        super().__init__(cfg.rcnn)
        self.cfg = cfg
        strides = self.backbone.out_strides
        self.sem_seg_head = SemSegFPNHead(
            {f: strides[f] for f in cfg.sem_seg_in_features}, self.backbone.out_channels,
            cfg.num_sem_classes, cfg.sem_seg_conv_dims, cfg.common_stride, cfg.ignore_value,
            cfg.sem_seg_loss_weight)
        self.postprocess = PanopticPostprocess(cfg.overlap_threshold, cfg.stuff_area_thresh,
                                               cfg.instances_score_thresh)

    def forward(self, batched_inputs: list[dict]):
        if not self.training:
            return self.inference(batched_inputs)
        if any("instances" not in x or "sem_seg" not in x for x in batched_inputs):
            raise ValueError("training mode needs 'instances' and 'sem_seg' in every input "
                             "dict; call model.eval() for inference")
        images = self.preprocess_image(batched_inputs)
        targets = [x["instances"].to(self.device) for x in batched_inputs]
        sem_targets = ImageList.from_tensors(
            [x["sem_seg"].to(self.device) for x in batched_inputs],
            self.backbone.size_divisibility, self.cfg.ignore_value).tensor
        features = self.backbone(images.tensor)
        _, losses = self.sem_seg_head(features, sem_targets)
        proposals, rpn_losses = self.rpn(images, features, targets)
        _, head_losses = self.roi_heads(features, proposals, targets)
        weight = self.cfg.instance_loss_weight
        losses.update({k: v * weight for k, v in {**rpn_losses, **head_losses}.items()})
        return losses

    def inference(self, batched_inputs: list[dict], do_postprocess: bool = True):
        """Post-processed results per image; without post-processing, the pair (list of
        Instances at the input resolution, semantic logits (N, C, H, W) of the padded batch)."""
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        proposals, _ = self.rpn(images, features)
        results, _ = self.roi_heads(features, proposals)
        sem_seg, _ = self.sem_seg_head(features)
        if not do_postprocess:
            return results, sem_seg
        return self.postprocess(results, sem_seg, batched_inputs, images.image_sizes)


zoo.register("panoptic_fpn_R50_FPN", PanopticFPN, PanopticFPNConfig.r50())
zoo.register("panoptic_fpn_tiny", PanopticFPN, PanopticFPNConfig.tiny())
