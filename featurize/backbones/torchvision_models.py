"""torchvision's classifiers as backbones: weights through torchvision's own mechanism (the torch
hub cache, else a download into it), the classifier cut off so the network ends in its pooled vector.

Each function below cuts the classifier of one family; `cuts_head` registers the models it serves,
with their pooled sizes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from common.errors import BackboneError

from .preprocessing import Preprocessing
from .registry import DEFAULT_BACKBONE, Backbone, register


@dataclass(frozen=True)
class TorchvisionBackbone(Backbone):
    drop_head: object = None  # function that turns the classifier into a pooled-feature model
    source = "torchvision"

    def _weights_enum(self):
        from torchvision.models import get_model_weights

        return get_model_weights(self.name).DEFAULT

    def preprocessing(self) -> Preprocessing:
        preset = self._weights_enum().transforms()
        return Preprocessing(
            resize_size=int(preset.resize_size[0]),
            crop_size=int(preset.crop_size[0]),
            mean=tuple(preset.mean),
            std=tuple(preset.std),
            interpolation=preset.interpolation.value,
        )

    def pretrained_id(self) -> str:
        return f"torchvision:{self._weights_enum()}"

    def _cache_file(self) -> Path:
        import torch

        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(self._weights_enum().url)

    def pretrained_location(self) -> tuple[str, bool]:
        cached = self._cache_file()
        return str(cached), cached.is_file()

    def build_trunk(self, pretrained: bool):
        from torchvision.models import get_model

        model = self._pretrained_model() if pretrained else get_model(self.name, weights=None)
        self.drop_head(model)
        return model

    def stage_candidates(self, trunk) -> list:
        return feature_blocks(trunk)

    def _pretrained_model(self):
        from torchvision.models import get_model

        weights = self._weights_enum()
        try:  # torchvision's own mechanism: the torch hub cache, else a download into it
            return get_model(self.name, weights=weights)
        except (OSError, RuntimeError) as error:
            raise BackboneError(
                f"cannot load the {weights} weights of {self.name}: expected {self._cache_file()} "
                f"in the torch cache, and fetching {weights.url} failed ({error}). Ways out: copy "
                f"that file there (or set TORCH_HOME), pass --weights PATH to a local checkpoint, "
                f"or use a bundled backbone such as {DEFAULT_BACKBONE}."
            ) from None


def feature_blocks(model) -> list:
    """The blocks of a torchvision classifier's feature path in forward order (stage_candidates)."""
    from torch import nn

    if hasattr(model, "layer4"):  # ResNet, ResNeXt, Wide ResNet
        return [model.layer1, model.layer2, model.layer3, model.layer4]
    if hasattr(model, "trunk_output"):  # RegNet
        return list(model.trunk_output.children())
    features = model.features
    if hasattr(features, "denseblock4"):  # DenseNet: the last map before its functional ReLU
        return [features.denseblock1, features.denseblock2, features.denseblock3, features]
    if any(isinstance(m, nn.MaxPool2d) for m in features):  # VGG: each max pool ends a stage
        return [m for m in features if isinstance(m, nn.MaxPool2d)]
    return list(features)[1:]  # EfficientNet, MobileNet, ConvNeXt: after the stem


def cuts_head(**stage_dims: tuple[int, ...]):
    """Decorator: register a TorchvisionBackbone for each `name=(stage widths)` (the last the pooled
    vector's), its classifier cut by the decorated function."""

    def register_family(drop_head):
        for name, dims in stage_dims.items():
            register(TorchvisionBackbone(name, dims[-1], dims, drop_head=drop_head))
        return drop_head

    return register_family


@cuts_head(
    resnet18=(64, 128, 256, 512),
    resnet34=(64, 128, 256, 512),
    resnet50=(256, 512, 1024, 2048),
    resnet101=(256, 512, 1024, 2048),
    resnet152=(256, 512, 1024, 2048),
    resnext50_32x4d=(256, 512, 1024, 2048),
    resnext101_32x8d=(256, 512, 1024, 2048),
    resnext101_64x4d=(256, 512, 1024, 2048),
    wide_resnet50_2=(256, 512, 1024, 2048),
    wide_resnet101_2=(256, 512, 1024, 2048),
    regnet_y_400mf=(48, 104, 208, 440),
    regnet_y_800mf=(64, 144, 320, 784),
    regnet_y_1_6gf=(48, 120, 336, 888),
    regnet_y_3_2gf=(72, 216, 576, 1512),
    regnet_x_400mf=(32, 64, 160, 400),
    regnet_x_1_6gf=(72, 168, 408, 912),
)
def drop_fc(model):
    from torch import nn

    model.fc = nn.Identity()


@cuts_head(
    densenet121=(256, 512, 1024, 1024),
    densenet161=(384, 768, 2112, 2208),
    densenet169=(256, 512, 1280, 1664),
    densenet201=(256, 512, 1792, 1920),
    mobilenet_v2=(16, 24, 32, 64, 96, 160, 320, 1280),
    mobilenet_v3_small=(16, 24, 40, 48, 96, 576),
    mobilenet_v3_large=(16, 24, 40, 80, 112, 160, 960),
    efficientnet_b0=(16, 24, 40, 80, 112, 192, 320, 1280),
    efficientnet_b1=(16, 24, 40, 80, 112, 192, 320, 1280),
    efficientnet_b2=(16, 24, 48, 88, 120, 208, 352, 1408),
    efficientnet_b3=(24, 32, 48, 96, 136, 232, 384, 1536),
    efficientnet_b4=(24, 32, 56, 112, 160, 272, 448, 1792),
    efficientnet_v2_s=(24, 48, 64, 128, 160, 256, 1280),
)
def drop_classifier(model):
    from torch import nn

    model.classifier = nn.Identity()


@cuts_head(
    convnext_tiny=(96, 192, 384, 768),
    convnext_small=(96, 192, 384, 768),
    convnext_base=(128, 256, 512, 1024),
)
def drop_last_linear(model):  # ConvNeXt: keep its LayerNorm after the pooling
    from torch import nn

    model.classifier[-1] = nn.Identity()


@cuts_head(
    vgg16_bn=(64, 128, 256, 512, 512),
    vgg19_bn=(64, 128, 256, 512, 512),
)
def pool_vgg_features(model):  # VGG: global average pool of the last conv map, not its 7x7 FC input
    from torch import nn

    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Identity()
