"""The torch modules behind the backbone registry (imported only when a model is built)."""

from __future__ import annotations

import threading

import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from .backbones.recipe import GEM_P, VIEWS


class FeatureExtractor(nn.Module):
    """uint8 images (N,3,H,W) -> float pooled vectors (N,D), scaling and normalising included.

    Normalising here, on the whole batch and on the model's device, keeps the data loader's
    tensors uint8 (a quarter of the bytes) and the preprocessing with the weights. `tta` "flip": each
    vector is the mean of the image's and its left-right mirror's; "crops": the mean over five crops
    of size `crop` (the corners and centre of the input, torchvision's FiveCrop) and their mirrors
    (one forward pass of every view). `preprocessing` is what the module is fed.
    """

    def __init__(self, trunk: nn.Module, preprocessing, feature_dim: int, tta: str = "none", crop: int = 0):
        super().__init__()
        self.trunk, self.tta, self.crop = trunk, tta, crop
        self.views = VIEWS[tta]  # forward passes per image
        self.preprocessing = preprocessing
        self.feature_dim = feature_dim
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1) * 255)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std

    def cut_views(self, images: torch.Tensor) -> list[torch.Tensor]:
        if self.tta == "none":
            return [images]
        if self.tta == "crops":
            side, crop = self.preprocessing.crop_size, self.crop  # ints (a traced shape is a tensor)
            centre = int(round((side - crop) / 2.0))
            corners = [(0, 0), (0, side - crop), (side - crop, 0), (side - crop, side - crop), (centre, centre)]
            crops = [images[:, :, top : top + crop, left : left + crop] for top, left in corners]
            return crops + [image.flip(3) for image in crops]
        return [images, images.flip(3)]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        views = self.cut_views(self.normalise(images))
        if len(views) == 1:
            return self.trunk(views[0])
        out = self.trunk(torch.cat(views))
        return out.reshape(len(views), -1, out.shape[-1]).mean(0)  # the batch as -1: ONNX keeps it dynamic


def pool_map(maps: torch.Tensor, pool: str) -> torch.Tensor:
    """(N,C,H,W) -> (N,C): avg, max, gem (generalised mean, exponent GEM_P, of the map clamped to
    > 0 as Radenović et al. do), avgmax (the mean of avg and max, timm's)."""
    if pool == "avg":
        return maps.mean(dim=(2, 3))
    if pool == "max":
        return maps.amax(dim=(2, 3))
    if pool == "avgmax":
        return 0.5 * (maps.mean(dim=(2, 3)) + maps.amax(dim=(2, 3)))
    return maps.clamp(min=1e-6).pow(GEM_P).mean(dim=(2, 3)).pow(1.0 / GEM_P)


class StagePooler(nn.Module):
    """A trunk -> the pooled maps of `ends` (the modules that end its last stages, in order); one
    stage's as it is, several each L2-normalised and concatenated. The maps are taken by forward
    hooks, so the trunk's own code runs unchanged (and the ONNX tracer records the hooked outputs).
    A call's maps are kept under its thread's id, only while that call runs, so threads sharing the
    module never see each other's maps (and a block run outside forward keeps nothing)."""

    def __init__(self, trunk: nn.Module, ends: list[nn.Module], pool: str):
        super().__init__()
        self.trunk, self.pool = trunk, pool
        self._maps: dict[int, list[torch.Tensor]] = {}
        self._hooks = [module.register_forward_hook(self._keep) for module in ends]

    def _keep(self, module, args, output) -> None:  # None: a hook's return value would replace the output
        maps = self._maps.get(threading.get_ident())
        if maps is not None:
            maps.append(output)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        caller = threading.get_ident()
        self._maps[caller] = []
        try:
            self.trunk(images)
            parts = [pool_map(maps, self.pool) for maps in self._maps[caller]]
        finally:
            del self._maps[caller]
        if len(parts) == 1:
            return parts[0]
        return torch.cat([nn.functional.normalize(part, dim=1) for part in parts], dim=1)


def stage_ends(trunk: nn.Module, candidates: list[nn.Module], size: int = 64) -> list[tuple[nn.Module, int]]:
    """Of `candidates` (blocks in forward order), the last of each run whose outputs have the same
    channels and spatial size, with its channels: the ends of the network's stages. Found by one
    small forward pass (in eval mode, so no statistic moves)."""
    shapes = {}

    def keep_shape(module, args, output):  # returns None: a hook's return value replaces the output
        shapes.setdefault(module, tuple(output.shape[1:]))

    handles = [m.register_forward_hook(keep_shape) for m in candidates]
    parameter = next(trunk.parameters())
    try:
        with torch.no_grad():
            trunk.eval()(torch.zeros((1, 3, size, size), device=parameter.device, dtype=parameter.dtype))
    finally:
        for handle in handles:
            handle.remove()
    called = [m for m in candidates if m in shapes]
    ends = [m for m, after in zip(called, called[1:] + [None]) if after is None or shapes[m] != shapes[after]]
    return [(m, shapes[m][0]) for m in ends]


class PooledEfficientNetLite(EfficientNet):
    """The efficientnet-lite-pytorch network cut after its head conv and globally average-pooled.

    A subclass rather than a wrapper, so its state-dict keys are the package's own. `head_end`
    marks the head's activated map for StagePooler's hooks (the activation module is shared with
    the stem, so it cannot be hooked itself).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_end = nn.Identity()

    def extract_features(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head_end(super().extract_features(inputs))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.extract_features(inputs).mean(dim=(2, 3))

    def stage_candidates(self) -> list[nn.Module]:
        return [*self._blocks, self.head_end]


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
