"""Images -> frozen pretrained CNN -> one pooled vector per image, cached in HDF5.

Public API: `extract` (bring a feature file up to date), `load_features` (read one as numpy
arrays), `discover` (index an image folder), the backbone registry (`BACKBONES`, `get_backbone`)
and `load_image` (the image decoder every part of the product uses).
"""
from .backbones import BACKBONES, DEFAULT_BACKBONE, Backbone, Preprocessing, get_backbone, register
from .errors import BackboneError, CnnfeatError, DataError, StoreError
from .extract import ExtractResult, extract
from .images import ImageList, UnreadableImage, discover, load_image, pil_to_rgb_tensor
from .store import Features, load_features

__all__ = [
    "BACKBONES", "DEFAULT_BACKBONE", "Backbone", "Preprocessing", "get_backbone", "register",
    "BackboneError", "CnnfeatError", "DataError", "StoreError", "ExtractResult", "extract",
    "ImageList", "UnreadableImage", "discover", "load_image", "pil_to_rgb_tensor", "Features", "load_features",
]
