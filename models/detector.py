"""What every zoo detector shares: pixel normalisation and the list API's training inputs."""
from __future__ import annotations

import torch
from torch import nn

from dexport.ir.dialects.structures import ImageList, Instances


class Detector(nn.Module):
    """Base of the zoo's meta-architectures. A subclass sets ``self.backbone`` (whose
    ``size_divisibility`` the batch is padded to)."""

    def __init__(self, pixel_mean, pixel_std):
        super().__init__()
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: list[dict]) -> ImageList:
        """Normalize each image and pad the batch to a multiple of the backbone's stride."""
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def training_inputs(self, batched_inputs: list[dict],
                        required: tuple[str, ...] = ("instances",)) -> tuple[ImageList, list[Instances]]:
        """The padded images and the ground-truth Instances of a training batch."""
        if any(key not in x for x in batched_inputs for key in required):
            raise ValueError(f"training mode needs {' and '.join(map(repr, required))} in every input "
                             "dict (instances: gt_boxes, gt_classes, ...); call model.eval() for inference")
        return (self.preprocess_image(batched_inputs),
                [x["instances"].to(self.device) for x in batched_inputs])
