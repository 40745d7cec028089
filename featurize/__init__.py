"""Images -> frozen pretrained CNN -> one pooled vector per image, cached in HDF5.

The names below are the package's public API: the other packages (classifiers, experiments,
serving, the CLI) import from `featurize` itself, never from its modules, so the modules can be
rearranged without touching them. Importing it imports no torch (`cnnfeat --help` stays instant).

- extraction: `extract` (bring a feature file up to date), `FeatureSpec` (what a store's vectors
  depend on: its config and fingerprint), `iter_vectors` and its pieces (`ImageDataset`,
  `collate_readable`, `checked_batches`), the device policy (`resolve_device`, `default_workers`);
- the store: `load_features`, `Features`, `Storage`, `take_rows`, `library_versions`;
- images: finding them (`discover`, `find_images`, `file_identity`, `image_identities`; in an object
  store: `is_url`, `list_objects`, `parse_storage_options`; reading from anywhere: `ImageSource`,
  `source_for_paths`), a dataset's name for a title (`display_name`), decoding them (`read_image`,
  `decode_pil`, `rgb_image`: PIL images, reduced-size JPEG decoding; `load_image`,
  `pil_to_rgb_tensor`: torch tensors);
- backbones and engines: the registry (`BACKBONES`, `get_backbone`, `list_backbones`, `register`),
  `load_embedder`, `export_backbone`, `cpu_session`;
- fused features (`fuse_features`), Ray (`connect_ray`), the digits demo (`write_digits`);
- torch's side, imported on first use: `last_feature_map` (a backbone's last feature map, for heatmaps).
"""

from common.errors import BackboneError, CnnfeatError, DataError, StoreError

from .backbones import (
    BACKBONES,
    DEFAULT_BACKBONE,
    POOL_MODES,
    PRESETS,
    TTA_MODES,
    Backbone,
    Preprocessing,
    Recipe,
    crop_transform,
    get_backbone,
    list_backbones,
    preset_recipe,
    recipe_of,
    register,
)
from .batches import ImageDataset, OnTensors, checked_batches, collate_readable, iter_vectors
from .decoding import UnreadableImage, decode_pil, load_image, pil_to_rgb_tensor, read_image, rgb_image
from .demo_data import write_digits
from .devices import default_workers, resolve_device
from .discovery import IMAGE_EXTENSIONS, ImageList, discover, display_name, file_identity, find_images, image_identities
from .distributed import connect_ray
from .engines import (
    ENGINES,
    ONNX_OPSET,
    compute_precision,
    cpu_session,
    export_backbone,
    graph_cache_dir,
    load_embedder,
    resolve_engine,
)
from .extract import ExtractResult, extract
from .fingerprints import FeatureSpec, library_versions
from .fuse import FUSE_MODES, FuseMode, fuse_features, part_widths
from .integrity import take_rows
from .remote import is_url, list_objects, parse_storage_options
from .sources import ImageSource, source_for_paths
from .store import COMPRESSIONS, DTYPES, Features, Storage, load_features

__all__ = [
    "BackboneError",
    "CnnfeatError",
    "DataError",
    "StoreError",
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "POOL_MODES",
    "PRESETS",
    "TTA_MODES",
    "Backbone",
    "Preprocessing",
    "Recipe",
    "preset_recipe",
    "recipe_of",
    "crop_transform",
    "get_backbone",
    "register",
    "write_digits",
    "connect_ray",
    "ONNX_OPSET",
    "compute_precision",
    "cpu_session",
    "export_backbone",
    "graph_cache_dir",
    "load_embedder",
    "resolve_engine",
    "ENGINES",
    "ExtractResult",
    "ImageDataset",
    "OnTensors",
    "checked_batches",
    "default_workers",
    "extract",
    "FeatureSpec",
    "iter_vectors",
    "resolve_device",
    "FUSE_MODES",
    "FuseMode",
    "fuse_features",
    "part_widths",
    "IMAGE_EXTENSIONS",
    "ImageList",
    "UnreadableImage",
    "decode_pil",
    "read_image",
    "rgb_image",
    "discover",
    "display_name",
    "file_identity",
    "image_identities",
    "find_images",
    "load_image",
    "pil_to_rgb_tensor",
    "take_rows",
    "COMPRESSIONS",
    "DTYPES",
    "Features",
    "Storage",
    "library_versions",
    "load_features",
    "list_backbones",
    "collate_readable",
    "ImageSource",
    "is_url",
    "list_objects",
    "parse_storage_options",
    "source_for_paths",
]


def __getattr__(name: str):
    # Names whose module imports torch, imported when first asked for (PEP 562), so importing the
    # package stays torch-free
    if name == "last_feature_map":
        from .network import last_feature_map

        return last_feature_map
    raise AttributeError(f"module 'featurize' has no attribute {name!r}")
