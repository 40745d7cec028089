"""The backbone registry: name -> a `Backbone` record (how to build the frozen network, its pooled
size, its preprocessing, where its weights come from). The adapter modules fill it with `register`,
which refuses a name registered twice."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from common.errors import BackboneError
from common.hashing import file_sha256

from .preprocessing import Preprocessing

# Exported as the default of every command that takes --backbone: it works with no network.
DEFAULT_BACKBONE = "efficientnet_lite0"
POOLING = "global-average"
TtaMode = Literal["none", "flip"]  # flip: each vector the mean of the image's and its mirror image's
TTA_MODES = get_args(TtaMode)


def weights_kind(weights: str | None) -> str:
    """'pretrained' (the backbone's own weights), 'random' (benchmarks only) or 'file'."""
    if weights in (None, "", "default", "pretrained", "imagenet"):
        return "pretrained"
    if weights == "random":
        return "random"
    return "file"


def check_tta(tta: str) -> str:
    if tta not in TTA_MODES:
        raise BackboneError(f"--tta {tta!r}; valid: {', '.join(TTA_MODES)}")
    return tta


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
            raise BackboneError(
                f"--weights {weights}: no such file (use a checkpoint path, "
                f"'random' for benchmarks, or leave it out for {self.name}'s own weights)"
            )
        return f"file:{file_sha256(path)[:16]}"

    def load(self, weights: str | None = None, trust_pickle: bool = False, tta: str = "none"):
        """The frozen feature extractor, in eval mode, on the CPU. `trust_pickle` lets a checkpoint
        that is a whole pickled module load: that runs code from the file. `tta` (TTA_MODES): "flip"
        averages each image's vector with its mirror image's, inside the module, so every engine
        and the exported graph compute it alike."""
        import torch

        from ..network import FeatureExtractor
        from .checkpoints import load_checkpoint

        kind = weights_kind(weights)
        with torch.random.fork_rng():
            torch.manual_seed(0)  # 'random' weights are the same in every run, so a resumed store is consistent
            trunk = self.build_trunk(pretrained=kind == "pretrained")
        if kind == "file":
            load_checkpoint(trunk, weights, self.name, trust_pickle)
        flip = check_tta(tta) == "flip"
        return FeatureExtractor(trunk, self.preprocessing(), self.feature_dim, flip=flip).eval().requires_grad_(False)


BACKBONES: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    """Add a backbone to the registry; a name can be registered once only."""
    if backbone.name in BACKBONES:
        raise ValueError(f"backbone {backbone.name!r} is already registered")
    BACKBONES[backbone.name] = backbone
    return backbone


def list_backbones(pattern: str = "*") -> list[str]:
    """The registered names that match the shell-style `pattern` ("resnet*"), sorted (timm's list_models)."""
    return sorted(fnmatch.filter(BACKBONES, pattern))


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise BackboneError(f"unknown backbone {name!r}; valid: {', '.join(list_backbones())}") from None
