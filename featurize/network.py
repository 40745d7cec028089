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

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = self.normalise(images)
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


def last_feature_map(extractor: FeatureExtractor, images: torch.Tensor) -> torch.Tensor | None:
    """The trunk's last feature map (N,C,H,W) for uint8 `images`, where the pooled vector is its
    plain spatial mean (what a class activation map needs); None where it is not (a LayerNorm after
    the pool, as in ConvNeXt, or pooling done outside a module, as in DenseNet). Checked on the
    batch itself, not assumed. The mirror image of `flip` is not taken: the caller does that."""
    trunk, x = extractor.trunk, extractor.normalise(images)
    captured = []
    if isinstance(trunk, PooledEfficientNetLite):
        captured.append(trunk.extract_features(x))
        pooled = captured[0].mean(dim=(2, 3))
    else:
        pool = getattr(trunk, "avgpool", None)
        if pool is None:
            return None
        handle = pool.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        try:
            pooled = trunk(x)
        finally:
            handle.remove()
    if not captured or captured[0].dim() != 4 or pooled.shape != captured[0].shape[:2]:
        return None
    if not torch.allclose(captured[0].mean(dim=(2, 3)), pooled, rtol=1e-4, atol=1e-5):
        return None
    return captured[0]
