"""PanopticFPN: an R-CNN instance branch plus a semantic FPN head, merged into one
panoptic segmentation.

Semantic classes follow detectron2's PanopticFPN layout: class 0 is the single
"things" class (every pixel of any instance), classes 1..S are the stuff classes.
The merge (:func:`combine_batched`) is post-processing: it is written with tensor ops
only (no loop over instances or images) so it traces at any batch size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from dexport.ir.dialects.detection_io import (
    DETECTION_FIELDS, SEGMENT_FIELDS, image_index_from_counts, instances_from_fields, sizes_tensor, split_outputs,
    stack_inputs,
)
from dexport.ir.dialects.structures import ImageList, Instances
from dexport.models import zoo
from dexport.models.batched import group_counts, largest_group, rank_in_group
from dexport.models.postprocess import (
    detections_to_instances, postprocess_detections,
)
from dexport.models.rcnn import GeneralizedRCNN, RCNNConfig

__all__ = [
    "PanopticFPNConfig", "SemSegFPNHead", "PanopticFPN", "PanopticPostprocess",
    "sem_seg_postprocess", "sem_seg_postprocess_batched", "combine_batched",
    "combine_semantic_and_instance_outputs", "segments_info_as_list",
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
        x: torch.Tensor | None = None
        for i, head in enumerate(self.scale_heads):
            y = head(features[self.in_features[i]])
            x = y if x is None else x + y
        assert x is not None  # at least one level
        return self.predictor(x)

    def forward(self, features: dict[str, torch.Tensor], targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits (N, C, H, W) at the padded input size; losses when ``targets`` is given
        (an i64 N×H×W label map, ``ignore_value`` where unlabeled)."""
        logits = F.interpolate(self.layers(features), scale_factor=float(self.common_stride),
                               mode="bilinear", align_corners=False)
        if targets is None:
            return logits, {}
        loss = F.cross_entropy(logits, targets, ignore_index=self.ignore_value, reduction="mean")
        return logits, {"loss_sem_seg": loss * self.loss_weight}


def _linear_taps(in_size: torch.Tensor, out_size: torch.Tensor, length: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear (align_corners=False) resize taps from ``in_size`` to ``out_size`` pixels,
    per image (i64[N] each), for ``length`` output positions: source indices i0, i1
    (i64[N, length]) and the weight of i1 (f32). Positions past out_size are junk the
    caller masks off."""
    dst = torch.arange(length, device=in_size.device).to(torch.float32)
    scale = in_size.to(torch.float32) / out_size.to(torch.float32)
    src = (scale.unsqueeze(1) * (dst + 0.5) - 0.5).clamp(min=0)
    last = (in_size - 1).unsqueeze(1)
    i0 = torch.minimum(src.floor().to(torch.int64), last)
    i1 = torch.minimum(i0 + 1, last)
    return i0, i1, src - i0.to(torch.float32)


def _resize_last(x: torch.Tensor, dim: int,
                 taps: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Linear interpolation of x (N, C, H, W) along ``dim`` (2 or 3) with per-image taps."""
    i0, i1, w1 = taps
    shape = [x.shape[0], 1, 1, 1]
    shape[dim] = i0.shape[1]
    i0, i1, w1 = i0.reshape(shape), i1.reshape(shape), w1.reshape(shape)
    expanded = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]]
    expanded[dim] = i0.shape[dim]
    lo = x.gather(dim, i0.expand(expanded))
    hi = x.gather(dim, i1.expand(expanded))
    return lo * (1 - w1) + hi * w1


def sem_seg_postprocess_batched(logits: torch.Tensor, image_sizes: torch.Tensor,
                                output_sizes: torch.Tensor) -> torch.Tensor:
    """Crop each image's logits (N, C, H, W) to its ``image_sizes`` (h, w) and resize them
    bilinearly (align_corners=False, as F.interpolate) to its ``output_sizes``, on a
    canvas of the largest output size: (N, C, Hout, Wout), 0 beyond each image's own.
    Every image in one pass (two gathers), whatever the sizes."""
    canvas = output_sizes.max(dim=0).values
    height, width = canvas[0], canvas[1]
    cols = _linear_taps(image_sizes[:, 1], output_sizes[:, 1], width)
    rows = _linear_taps(image_sizes[:, 0], output_sizes[:, 0], height)
    out = _resize_last(_resize_last(logits, 3, cols), 2, rows)
    inside_rows = torch.arange(out.shape[2], device=out.device).unsqueeze(0) < output_sizes[:, 0:1]
    inside_cols = torch.arange(out.shape[3], device=out.device).unsqueeze(0) < output_sizes[:, 1:2]
    inside = inside_rows[:, None, :, None] & inside_cols[:, None, None, :]
    return torch.where(inside, out, torch.zeros_like(out))


def sem_seg_postprocess(logits: torch.Tensor, image_size, height, width) -> torch.Tensor:
    """Crop one image's (C, H, W) logits to its unpadded ``image_size`` (h, w) and resize
    them bilinearly to the requested output (height, width): the batched version for a
    batch of one. Sizes may be ints or (while tracing) 0-d tensors."""
    device = logits.device
    return sem_seg_postprocess_batched(logits.unsqueeze(0), sizes_tensor([image_size], device),
                                       sizes_tensor([(height, width)], device))[0]


def _first_owner(masks: torch.Tensor) -> torch.Tensor:
    """For (N, S, H, W) bool masks, per image the index of the first mask covering each
    pixel, or S where none does. Works for S = 0 (all pixels get 0 = S)."""
    stacked = torch.cat([masks, torch.ones_like(masks.any(dim=1, keepdim=True))], dim=1)
    # argmax returns the first maximal index, which is the first covering mask.
    return stacked.to(torch.uint8).argmax(dim=1)


def _bin_counts(index: torch.Tensor, num_bins: int,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per image (row of the (N, L) ``index``, values in [0, num_bins]), for each bin b in
    [0, num_bins): how many entries equal b (or the sum of their ``weights``); the value
    ``num_bins`` counts nowhere. A scatter-add into one spare bin more, dropped after:
    O(L), where comparing every entry with every bin was O(num_bins x L)."""
    source = torch.ones_like(index) if weights is None else weights
    counts = source.new_zeros((index.shape[0], num_bins + 1))
    return counts.scatter_add(1, index, source)[:, :-1]


def _by_rank(values: torch.Tensor, image: torch.Tensor, slot: torch.Tensor, num_images: int,
             num_slots: int) -> torch.Tensor:
    """(N, S, ...) layout of per-instance ``values``: instance k at [image[k], slot[k]]."""
    dense = values.new_zeros([num_images, num_slots] + list(values.shape[1:]))
    return dense.index_put((image, slot), values)


def combine_batched(
    masks: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, image_index: torch.Tensor,
    sem_seg: torch.Tensor, inside: torch.Tensor | None = None, overlap_threshold: float = 0.5,
    stuff_area_thresh: int = 4096, instances_score_thresh: float = 0.5,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`combine_semantic_and_instance_outputs` for every image of a batch at once.

    Instances are rows (``masks`` b8[M, H, W], ``scores``, ``classes``, ``image_index``);
    ``sem_seg`` holds the (N, C, H, W) logits; ``inside`` (b8[N, H, W], default all) marks
    each image's own pixels on a canvas shared by images of different sizes. Each image's
    instances are laid out by rank in an (N, S, H, W) tensor (S = the most instances of
    any image), so the merge rule runs on all images with the same tensor ops.

    Returns ``(panoptic_seg i32[N, H, W], segments)``: the segments of all images, image by
    image and in id order within one, as ``segment_id``, ``segment_category_id``,
    ``segment_isthing``, ``segment_score``, ``segment_area``, ``segment_instance_id``
    (index among that image's rows) and ``segment_counts`` i64[N].
    """
    num_images, num_classes = sem_seg.shape[0], sem_seg.shape[1]
    # Rank: by image, then score (best first), then row (stable sorts).
    order = torch.sort(scores, descending=True, stable=True).indices
    order = order[torch.sort(image_index[order], stable=True).indices]
    image = image_index[order]
    slot = rank_in_group(image, num_images)
    num_slots = largest_group(image, num_images)
    position = rank_in_group(image_index, num_images)[order]  # row among its image's rows
    ranked_scores = scores[order]
    candidate = ranked_scores >= instances_score_thresh

    ranked_masks = _by_rank(masks[order] & candidate[:, None, None], image, slot, num_images,
                            num_slots)
    is_candidate = _by_rank(candidate, image, slot, num_images, num_slots)
    mask_area = ranked_masks.flatten(2).sum(dim=2)

    # First pass: ownership among all candidates decides which instances are dropped.
    owner = _first_owner(ranked_masks).flatten(1)
    owned = _bin_counts(owner, num_slots)
    hidden = (mask_area - owned).to(torch.float32)
    kept = is_candidate & (mask_area > 0) & (hidden <= overlap_threshold * mask_area)

    # Second pass: only kept instances claim pixels.
    owner = _first_owner(ranked_masks & kept[:, :, None, None]).flatten(1)
    thing_ids = torch.cumsum(kept.to(torch.int64), dim=1) * kept
    id_table = torch.cat([thing_ids, thing_ids.new_zeros((num_images, 1))], dim=1)
    panoptic = id_table.gather(1, owner)
    thing_area = _bin_counts(owner, num_slots)

    # Stuff: label the pixels no instance took.
    best_logit, labels = sem_seg.max(dim=1)
    # The winning class's softmax probability without the whole softmax: 1 / sum(exp(x - max)).
    best_prob = torch.exp(sem_seg - best_logit.unsqueeze(1)).sum(dim=1).reciprocal()
    labels, best_prob = labels.flatten(1), best_prob.flatten(1)
    free = panoptic == 0
    if inside is not None:
        free = free & inside.flatten(1)
    # Pixels an instance took (or beyond the image) get label num_classes: no class.
    binned = torch.where(free, labels, torch.full_like(labels, num_classes))
    stuff_area = _bin_counts(binned, num_classes)
    prob_sum = _bin_counts(binned, num_classes, best_prob)
    is_stuff = torch.arange(num_classes, device=sem_seg.device) > 0
    stuff_kept = is_stuff & (stuff_area >= stuff_area_thresh)
    num_things = kept.sum(dim=1, keepdim=True)
    stuff_ids = (torch.cumsum(stuff_kept.to(torch.int64), dim=1) + num_things) * stuff_kept
    panoptic = torch.where(free, stuff_ids.gather(1, labels), panoptic)
    panoptic = panoptic.reshape(sem_seg.shape[0], sem_seg.shape[2], sem_seg.shape[3])

    thing_image, thing_slot = torch.nonzero(kept).unbind(1)
    stuff_image, stuff_label = torch.nonzero(stuff_kept).unbind(1)
    ids = torch.cat([thing_ids[thing_image, thing_slot], stuff_ids[stuff_image, stuff_label]])
    segment_image = torch.cat([thing_image, stuff_image])
    # Ids are unique within an image: sort by (image, id).
    by_id = torch.argsort(segment_image * (num_slots + num_classes + 1) + ids)
    # Each kept instance's class, score and row among its image's rows.
    thing_classes = _by_rank(classes[order].to(torch.int64), image, slot, num_images, num_slots)
    thing_scores = _by_rank(ranked_scores.to(torch.float32), image, slot, num_images, num_slots)
    thing_rows = _by_rank(position, image, slot, num_images, num_slots)
    segments = {
        "segment_id": ids,
        "segment_category_id": torch.cat([thing_classes[thing_image, thing_slot], stuff_label]),
        "segment_isthing": torch.cat([torch.ones_like(thing_slot, dtype=torch.bool),
                                      torch.zeros_like(stuff_label, dtype=torch.bool)]),
        "segment_score": torch.cat([thing_scores[thing_image, thing_slot],
                                    (prob_sum / stuff_area)[stuff_image, stuff_label]]),
        "segment_area": torch.cat([thing_area[thing_image, thing_slot],
                                   stuff_area[stuff_image, stuff_label]]),
        "segment_instance_id": torch.cat([thing_rows[thing_image, thing_slot],
                                          torch.full_like(stuff_label, -1)]),
    }
    segments = {k: v[by_id] for k, v in segments.items()}
    segments["segment_counts"] = group_counts(segment_image, num_images)
    return panoptic.to(torch.int32), segments


def combine_semantic_and_instance_outputs(
    instances, sem_seg: torch.Tensor, *, overlap_threshold: float = 0.5,
    stuff_area_thresh: int = 4096, instances_score_thresh: float = 0.5,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Merge instance masks and semantic logits into one panoptic segmentation.

    ``instances`` has ``pred_masks`` (b8 N×H×W), ``scores`` and ``pred_classes``;
    ``sem_seg`` holds the (C, H, W) semantic logits at the same H×W, class 0 = "things".

    The rule, all vectorised (:func:`combine_batched` runs it on a whole batch):

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
    scores = instances.scores
    panoptic, segments = combine_batched(
        instances.pred_masks, scores, instances.pred_classes, torch.zeros_like(scores, dtype=torch.int64),
        sem_seg.unsqueeze(0), overlap_threshold=overlap_threshold,
        stuff_area_thresh=stuff_area_thresh, instances_score_thresh=instances_score_thresh)
    return panoptic[0], {k[len("segment_"):]: v for k, v in segments.items()
                         if k != "segment_counts"}


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
    """Every image at once: rescale detections (``postprocess_detections``) and semantic
    logits (``sem_seg_postprocess_batched``) to the requested output sizes, then merge
    them (``combine_batched``); the result is in the batched format
    (dexport.ir.dialects.detection_io). Installed as ``model.postprocess``."""

    def __init__(self, overlap_threshold: float, stuff_area_thresh: int,
                 instances_score_thresh: float, mask_threshold: float = 0.5):
        super().__init__()
        self.overlap_threshold = overlap_threshold
        self.stuff_area_thresh = stuff_area_thresh
        self.instances_score_thresh = instances_score_thresh
        self.mask_threshold = mask_threshold
        self.fields = list(DETECTION_FIELDS)  # an attribute: TorchScript reads no global tuples

    def forward(self, detections: dict[str, torch.Tensor], sem_seg: torch.Tensor,
                image_sizes: torch.Tensor, output_sizes: torch.Tensor) -> dict[str, torch.Tensor]:
        out = postprocess_detections(detections, image_sizes, output_sizes, self.mask_threshold)
        image = out["image_index"]
        sem = sem_seg_postprocess_batched(sem_seg, image_sizes, output_sizes)
        rows = torch.arange(sem.shape[2], device=sem.device).unsqueeze(0) < output_sizes[:, 0:1]
        cols = torch.arange(sem.shape[3], device=sem.device).unsqueeze(0) < output_sizes[:, 1:2]
        panoptic, segments = combine_batched(
            out["masks"], out["scores"], out["classes"], image, sem,
            rows[:, :, None] & cols[:, None, :], overlap_threshold=self.overlap_threshold,
            stuff_area_thresh=self.stuff_area_thresh,
            instances_score_thresh=self.instances_score_thresh)
        result: dict[str, torch.Tensor] = {}
        for k in self.fields:
            if k in out:
                result[k] = out[k]
        result["counts"] = group_counts(image, image_sizes.shape[0])
        result["sem_seg"] = sem
        result["panoptic_seg"] = panoptic
        for k, v in segments.items():
            result[k] = v
        return result


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

    def forward(self, batched_inputs: list[dict[str, torch.Tensor]]):
        if not self.training:
            return self.inference(batched_inputs)
        if torch.jit.is_scripting():
            raise RuntimeError("a scripted detector runs inference only: call .eval() on it")
        return self.training_losses(batched_inputs)

    def training_losses(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor]:
        """The losses of a training batch (dicts with "image", "instances" and "sem_seg")."""
        images, targets = self.training_inputs(batched_inputs, required=("instances", "sem_seg"))
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

    def forward_batched(self, images: torch.Tensor, image_sizes: torch.Tensor,
                        output_sizes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The batched format: detections with ``counts``, ``sem_seg``, ``panoptic_seg``
        and the ``segment_*`` fields with ``segment_counts`` (detection_io)."""
        detections, sem_seg = self.detect_all(images, image_sizes)
        return self.postprocess(detections, sem_seg, image_sizes,
                                image_sizes if output_sizes is None else output_sizes)

    def detect_all(self, images: torch.Tensor, image_sizes: torch.Tensor
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(raw detections at the input resolution, semantic logits of the padded batch)."""
        features = self.features(images, image_sizes)
        proposals = self.rpn.propose(features, image_sizes)
        sem_seg, _ = self.sem_seg_head(features)
        return self.roi_heads.detect(features, proposals, image_sizes), sem_seg

    def inference(self, batched_inputs: list[dict[str, torch.Tensor]], do_postprocess: bool = True):
        """Post-processed results per image; without post-processing, the pair (list of
        Instances at the input resolution, semantic logits (N, C, H, W) of the padded batch;
        eager only)."""
        images, image_sizes, output_sizes, sizes = stack_inputs(batched_inputs, self.device)
        if not do_postprocess:
            if torch.jit.is_scripting():
                raise RuntimeError("a scripted detector post-processes (do_postprocess=True)")
            else:
                detections, sem_seg = self.detect_all(images, image_sizes)
                return detections_to_instances(detections, sizes.inputs), sem_seg
        outputs = self.forward_batched(images, image_sizes, output_sizes)
        if torch.jit.is_scripting():
            return _results_scripted(outputs, sizes.outputs)
        else:
            return _results(outputs, sizes.outputs)


def _results(outputs: dict[str, torch.Tensor], output_sizes: list[tuple[int, int]]) -> list[dict]:
    """:meth:`PanopticFPN.inference`'s per-image results: instances, sem_seg and
    (panoptic_seg, segments info) at each image's output size."""
    results = []
    for item, size in zip(split_outputs(outputs, output_sizes), output_sizes):
        info = {k[len("segment_"):]: item[k] for k in SEGMENT_FIELDS}
        fields = {k: v for k, v in item.items() if k in DETECTION_FIELDS}
        results.append({"instances": instances_from_fields(fields, size),
                        "sem_seg": item["sem_seg"],
                        "panoptic_seg": (item["panoptic_seg"], info)})
    return results


def _results_scripted(outputs: dict[str, torch.Tensor], output_sizes: list[tuple[int, int]]):
    """:meth:`PanopticFPN.inference`'s per-image results under TorchScript (the same
    values; the dict's value type is the union of what it holds)."""
    instances = detections_to_instances(outputs, output_sizes)
    segment_image = image_index_from_counts(outputs["segment_counts"], outputs["segment_id"].shape[0])
    results: list[dict[str, Union[Instances, torch.Tensor, tuple[torch.Tensor, dict[str, torch.Tensor]]]]] = []
    for i, (h, w) in enumerate(output_sizes):
        rows = segment_image == i
        info: dict[str, torch.Tensor] = {}
        for name in ["segment_id", "segment_category_id", "segment_isthing", "segment_score",
                     "segment_area", "segment_instance_id"]:  # SEGMENT_FIELDS
            info[name[len("segment_"):]] = outputs[name][rows]
        result: dict[str, Union[Instances, torch.Tensor, tuple[torch.Tensor, dict[str, torch.Tensor]]]] = {}
        result["instances"] = instances[i]
        result["sem_seg"] = outputs["sem_seg"][i][..., :h, :w]
        result["panoptic_seg"] = (outputs["panoptic_seg"][i][..., :h, :w], info)
        results.append(result)
    return results


zoo.register("panoptic_fpn_R50_FPN", PanopticFPN, PanopticFPNConfig.r50())
zoo.register("panoptic_fpn_tiny", PanopticFPN, PanopticFPNConfig.tiny())
