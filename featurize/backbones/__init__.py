"""Backbones: name -> how to build a frozen network that maps images to one pooled vector.

Each record keeps its preprocessing with its weights (as torchvision's weights enums do), so a
feature file made with one transform is never mistaken for another. torch is imported inside the
functions that need it, so importing this package (and `cli.py --help`) stays instant.

- `registry`: the `Backbone` record, the registry (`register`, `get_backbone`, `list_backbones`);
- `preprocessing`: what a backbone's weights expect of an image;
- `recipe`: how its feature maps become one vector (stages, pooling, size, views);
- `checkpoints`: loading a local checkpoint (`--weights PATH`) safely;
- `torchvision_models`, `lite`: the two families, each registering its models when imported here.
"""

from .lite import LiteBackbone
from .preprocessing import Preprocessing, crop_transform
from .recipe import POOL_MODES, PRESETS, TTA_MODES, PoolMode, Recipe, TtaMode, preset_recipe, recipe_of
from .registry import (
    BACKBONES,
    DEFAULT_BACKBONE,
    POOLING,
    Backbone,
    get_backbone,
    list_backbones,
    register,
    weights_kind,
)
from .torchvision_models import TorchvisionBackbone

__all__ = [
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "POOLING",
    "POOL_MODES",
    "PRESETS",
    "TTA_MODES",
    "Backbone",
    "LiteBackbone",
    "Preprocessing",
    "TorchvisionBackbone",
    "PoolMode",
    "Recipe",
    "TtaMode",
    "crop_transform",
    "get_backbone",
    "list_backbones",
    "preset_recipe",
    "recipe_of",
    "register",
    "weights_kind",
]
