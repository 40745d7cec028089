"""Backbones: name -> how to build a frozen network that maps images to one pooled vector.

Each record keeps its preprocessing with its weights (as torchvision's weights enums do), so a
feature file made with one transform is never mistaken for another. torch is imported inside the
functions that need it, so importing this package (and `cli.py --help`) stays instant.

- `registry`: the `Backbone` record, the registry (`register`, `get_backbone`, `list_backbones`);
- `preprocessing`: what a backbone's weights expect of an image;
- `checkpoints`: loading a local checkpoint (`--weights PATH`) safely;
- `torchvision_models`, `lite`: the two families, each registering its models when imported here.
"""

from .lite import LiteBackbone
from .preprocessing import Preprocessing, crop_transform
from .registry import (
    BACKBONES,
    DEFAULT_BACKBONE,
    POOLING,
    TTA_MODES,
    Backbone,
    TtaMode,
    check_tta,
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
    "TTA_MODES",
    "Backbone",
    "LiteBackbone",
    "Preprocessing",
    "TorchvisionBackbone",
    "TtaMode",
    "check_tta",
    "crop_transform",
    "get_backbone",
    "list_backbones",
    "register",
    "weights_kind",
]
