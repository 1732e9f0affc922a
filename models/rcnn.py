"""GeneralizedRCNN: preprocess -> backbone -> RPN -> ROI heads -> postprocess.

One class covers Faster, Mask and Keypoint R-CNN; the ROI-heads config switches the
mask and keypoint heads on. Input/output follow detectron2 (see ``forward``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from dexport.models.backbone import BackboneConfig, build_backbone
from dexport.ir.dialects.detection_io import stack_inputs
from dexport.models.batched import normalize_images
from dexport.models.detector import Detector
from dexport.models.postprocess import Postprocess, detections_to_instances
from dexport.models.roi_heads import ROIHeads, ROIHeadsConfig
from dexport.models.rpn import RPN, RPNConfig

__all__ = ["RCNNConfig", "GeneralizedRCNN"]


@dataclass(frozen=True)
class RCNNConfig:
    """Everything needed to build a GeneralizedRCNN. Pixel statistics are BGR, 0..255."""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: ROIHeadsConfig = field(default_factory=ROIHeadsConfig)
    pixel_mean: tuple[float, float, float] = (103.530, 116.280, 123.675)
    pixel_std: tuple[float, float, float] = (57.375, 57.120, 58.395)

    @staticmethod
    def r50(mask_on: bool = False, keypoint_on: bool = False, num_classes: int = 80,
            num_keypoints: int = 17) -> "RCNNConfig":
        """detectron2's R50-FPN settings (COCO-sized heads)."""
        return RCNNConfig(roi_heads=ROIHeadsConfig(
            num_classes=num_classes, mask_on=mask_on, keypoint_on=keypoint_on,
            num_keypoints=num_keypoints))

    @staticmethod
    def tiny(mask_on: bool = False, keypoint_on: bool = False, num_classes: int = 3,
             num_keypoints: int = 3) -> "RCNNConfig":
        """A small model for ~128x128 images of 20-50 px objects: narrow backbone and heads,
        anchors and FPN level assignment scaled down to those object sizes, fewer
        proposals and samples. Trains from scratch on a couple of CPU cores."""
        return RCNNConfig(
            backbone=BackboneConfig.tiny(),
            rpn=RPNConfig(anchor_sizes=(16, 32, 64, 128, 256), batch_size_per_image=128,
                          pre_nms_topk_train=500, pre_nms_topk_test=250,
                          post_nms_topk_train=256, post_nms_topk_test=100),
            roi_heads=ROIHeadsConfig(
                num_classes=num_classes, canonical_box_size=56, pooler_sampling_ratio=2,
                batch_size_per_image=128, box_fc_dim=256, detections_per_image=50,
                mask_on=mask_on, mask_conv_dim=32, keypoint_on=keypoint_on,
                num_keypoints=num_keypoints, keypoint_conv_dims=(64, 64)),
        )


class GeneralizedRCNN(Detector):
    """Two-stage detector.

    ``forward(batched_inputs)`` takes a list of dicts ``{"image": f32[3,H,W] BGR 0..255,
    optional "height"/"width" (output size)}``. In eval mode it returns one
    ``{"instances": Instances(pred_boxes, scores, pred_classes, [pred_masks],
    [pred_keypoints])}`` per image; in training mode each dict also needs "instances"
    (gt_boxes, gt_classes, [gt_masks], [gt_keypoints]) and it returns a dict of losses.

    ``forward_batched(images, image_sizes, output_sizes)`` is the same inference on
    tensors, for export: see :mod:`dexport.ir.dialects.detection_io` for the formats. The list
    API is a thin wrapper over it (stack, ``forward_batched``, split).
    """

    def __init__(self, cfg: RCNNConfig):
        super().__init__(cfg.pixel_mean, cfg.pixel_std)
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone)
        channels, strides = self.backbone.out_channels, self.backbone.out_strides
        self.rpn = RPN(cfg.rpn, channels, strides)
        self.roi_heads = ROIHeads(cfg.roi_heads, channels, strides)
        self.postprocess = Postprocess()

    def forward(self, batched_inputs: list[dict[str, torch.Tensor]]):
        if not self.training:
            return self.inference(batched_inputs)
        if torch.jit.is_scripting():
            raise RuntimeError("a scripted detector runs inference only: call .eval() on it")
        return self.training_losses(batched_inputs)

    def training_losses(self, batched_inputs: list[dict]) -> dict[str, torch.Tensor]:
        """The losses of a training batch (dicts with "image" and "instances")."""
        images, targets = self.training_inputs(batched_inputs)
        features = self.backbone(images.tensor)
        proposals, rpn_losses = self.rpn(images, features, targets)
        _, head_losses = self.roi_heads(features, proposals, targets)
        return {**rpn_losses, **head_losses}

    def forward_batched(self, images: torch.Tensor, image_sizes: torch.Tensor,
                        output_sizes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Detections of a whole batch in the batched format: ``boxes``, ``scores``,
        ``classes``, [``masks``], [``keypoints``], ``counts`` (detection_io)."""
        detections = self.detect(images, image_sizes)
        return self.postprocess(detections, image_sizes,
                                image_sizes if output_sizes is None else output_sizes)

    def features(self, images: torch.Tensor, image_sizes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone features of raw images (normalised and padded here)."""
        return self.backbone(normalize_images(images, image_sizes, self.pixel_mean,
                                              self.pixel_std, self.backbone.size_divisibility))

    def detect(self, images: torch.Tensor, image_sizes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw detections at the input resolution, rows grouped by ``image_index``."""
        features = self.features(images, image_sizes)
        proposals = self.rpn.propose(features, image_sizes)
        return self.roi_heads.detect(features, proposals, image_sizes)

    def inference(self, batched_inputs: list[dict[str, torch.Tensor]], do_postprocess: bool = True):
        """Detections per image; without post-processing they stay at the input resolution
        (a list of Instances with pred_masks as n×1×M×M probabilities; eager only)."""
        images, image_sizes, output_sizes, sizes = stack_inputs(batched_inputs, self.device)
        if not do_postprocess:
            if torch.jit.is_scripting():
                raise RuntimeError("a scripted detector post-processes (do_postprocess=True)")
            else:
                return detections_to_instances(self.detect(images, image_sizes), sizes.inputs)
        outputs = self.forward_batched(images, image_sizes, output_sizes)
        return [{"instances": inst} for inst in detections_to_instances(outputs, sizes.outputs)]
