"""Images -> frozen pretrained CNN -> one pooled vector per image, cached in HDF5.

Public API: `extract` (bring a feature file up to date), `load_features` (read one as numpy
arrays), `discover` (index an image folder), the backbone registry (`BACKBONES`, `get_backbone`)
and `open_rgb` (the image decoder every part of the product uses).
"""
from .backbones import BACKBONES, DEFAULT_BACKBONE, Backbone, Preprocessing, get_backbone, register
from .errors import BackboneError, CnnfeatError, DataError, StoreError
from .extract import ExtractResult, extract
from .images import ImageList, UnreadableImage, discover, open_rgb
from .store import Features, load_features

__all__ = [
    "BACKBONES", "DEFAULT_BACKBONE", "Backbone", "Preprocessing", "get_backbone", "register",
    "BackboneError", "CnnfeatError", "DataError", "StoreError", "ExtractResult", "extract",
    "ImageList", "UnreadableImage", "discover", "open_rgb", "Features", "load_features",
]
