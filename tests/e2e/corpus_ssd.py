"""An SSD-style detector on torchvision's ops (through ``tests.thirdparty_ops``): a small
conv backbone, per-anchor box regression and scores, box decoding, ``torchvision::nms``,
then ``torchvision::roi_align`` of the kept boxes into a small classification head."""
from __future__ import annotations

import torch
from torch import nn

from tests import thirdparty_ops as tv


class TinySSD(nn.Module):
    STRIDE = 4
    SIZES = (8.0, 16.0)   # one square anchor per size at every feature location
    MAX_DETECTIONS = 16

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        anchors = len(self.SIZES)
        self.box_head = nn.Conv2d(16, anchors * 4, 3, padding=1)
        self.score_head = nn.Conv2d(16, anchors, 3, padding=1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, num_classes))
        self.register_buffer("half_sizes", torch.tensor(self.SIZES).reshape(1, -1, 1) / 2, persistent=False)

    def anchors(self, feature: torch.Tensor) -> torch.Tensor:
        """[H*W*A, 4] anchors (x1, y1, x2, y2) centred on every feature cell."""
        h, w = feature.shape[-2:]
        ys = (torch.arange(h, dtype=feature.dtype) + 0.5) * self.STRIDE
        xs = (torch.arange(w, dtype=feature.dtype) + 0.5) * self.STRIDE
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centers = torch.stack((cx, cy), dim=-1).reshape(-1, 1, 2)
        return torch.cat((centers - self.half_sizes, centers + self.half_sizes), dim=-1).reshape(-1, 4)

    def forward(self, image: torch.Tensor) -> dict:
        feature = self.backbone(image)
        deltas = self.box_head(feature).permute(0, 2, 3, 1).reshape(-1, 4)
        scores = self.score_head(feature).permute(0, 2, 3, 1).reshape(-1).sigmoid()
        anchors = self.anchors(feature)
        size = anchors[:, 2:] - anchors[:, :2]
        center = (anchors[:, :2] + anchors[:, 2:]) / 2 + deltas[:, :2] * 0.1 * size
        half = size * torch.exp(deltas[:, 2:].clamp(max=2.0) * 0.2) / 2
        boxes = torch.cat((center - half, center + half), dim=1)
        keep = tv.nms(boxes, scores, 0.5)[: self.MAX_DETECTIONS]
        kept = boxes[keep]
        rois = torch.cat((torch.zeros_like(kept[:, :1]), kept), dim=1)
        pooled = tv.roi_align(feature, rois, 4, spatial_scale=1.0 / self.STRIDE, sampling_ratio=2, aligned=True)
        return {"boxes": kept, "scores": scores[keep], "logits": self.classifier(pooled)}


def ssd_factory():
    """(model, example_inputs, check_inputs): random weights; checks at other image
    contents and resolutions than the capture's."""
    torch.manual_seed(0)
    model = TinySSD().eval()
    gen = torch.Generator().manual_seed(1)
    image = lambda h, w: torch.rand(1, 3, h, w, generator=gen)  # noqa: E731
    return model, (image(64, 64),), [(image(64, 64),), (image(48, 80),)]
