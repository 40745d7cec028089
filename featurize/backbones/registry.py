"""The backbone registry: name -> a `Backbone` record (how to build the frozen network, its pooled
size, its preprocessing, where its weights come from). The adapter modules fill it with `register`,
which refuses a name registered twice."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from common.errors import BackboneError
from common.hashing import file_sha256

from .preprocessing import Preprocessing
from .recipe import Recipe

# Exported as the default of every command that takes --backbone: it works with no network.
DEFAULT_BACKBONE = "efficientnet_lite0"
POOLING = "global-average"


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
    feature_dim: int  # the plain vector's: the last stage's width
    stage_dims: tuple[int, ...] = ()  # every stage's width, shallow to deep (the last is feature_dim)

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

    def stage_candidates(self, trunk) -> list:
        """The trunk's blocks in forward order, the last one's output its final feature map; the
        last block of each run of one output shape ends a stage (network.stage_ends)."""
        raise BackboneError(
            f"{self.name} does not say where its stages are: only the plain recipe (--layers 1 --pool avg)"
        )

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

    def load(self, weights: str | None = None, trust_pickle: bool = False, recipe: Recipe = Recipe()):
        """The frozen feature extractor, in eval mode, on the CPU. `trust_pickle` lets a checkpoint
        that is a whole pickled module load: that runs code from the file. `recipe`: the stages,
        pooling, size and views its vectors are made of, computed inside the module, so every
        engine and the exported graph compute them alike."""
        import torch

        from ..network import FeatureExtractor
        from .checkpoints import load_checkpoint

        kind = weights_kind(weights)
        with torch.random.fork_rng():
            torch.manual_seed(0)  # 'random' weights are the same in every run, so a resumed store is consistent
            trunk = self.build_trunk(pretrained=kind == "pretrained")
        if kind == "file":
            load_checkpoint(trunk, weights, self.name, trust_pickle)
        dim = recipe.feature_dim(self)
        if recipe.pools_stages:
            trunk = self.stage_pooler(trunk, recipe)
        crop = recipe.preprocessing(self).crop_size
        extractor = FeatureExtractor(trunk, recipe.input_preprocessing(self), dim, recipe.tta, crop)
        return extractor.eval().requires_grad_(False)

    def stage_pooler(self, trunk, recipe: Recipe):
        """`trunk` pooling its last `recipe.layers` stages (network.StagePooler)."""
        from ..network import StagePooler, stage_ends

        ends = stage_ends(trunk, self.stage_candidates(trunk))
        if tuple(width for _, width in ends) != self.stage_dims:  # the registry's widths name the file's width
            raise BackboneError(
                f"{self.name}: its stages are {[width for _, width in ends]} wide, the registry says "
                f"{list(self.stage_dims)}"
            )
        return StagePooler(trunk, [module for module, _ in ends[-recipe.layers :]], recipe.pool)


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
