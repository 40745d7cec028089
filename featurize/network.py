"""The torch modules behind the backbone registry (imported only when a model is built)."""
from __future__ import annotations

import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn


class FeatureExtractor(nn.Module):
    """uint8 images (N,3,H,W) -> float pooled vectors (N,D), scaling and normalising included.

    Normalising here, on the whole batch and on the model's device, keeps the data loader's
    tensors uint8 (a quarter of the bytes) and the preprocessing with the weights. `flip`: each
    vector is the mean of the image's and its left-right mirror's (one forward pass of both).
    """

    def __init__(self, trunk: nn.Module, preprocessing, feature_dim: int, flip: bool = False):
        super().__init__()
        self.trunk, self.flip = trunk, flip
        self.preprocessing = preprocessing
        self.feature_dim = feature_dim
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = (images.float() - self.mean) / self.std
        if not self.flip:
            return self.trunk(images)
        both = self.trunk(torch.cat([images, images.flip(3)]))
        return both.reshape(2, -1, both.shape[-1]).mean(0)  # a reshape, not len(): ONNX keeps the batch dynamic


class PooledEfficientNetLite(EfficientNet):
    """The efficientnet-lite-pytorch network cut after its head conv and globally average-pooled.

    A subclass rather than a wrapper, so its state-dict keys are the package's own.
    """

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.extract_features(inputs).mean(dim=(2, 3))
