"""What a store's vectors depend on, and what follows from it: the feature config the store records,
its fingerprint (the key a store is reused by), the store's file name and its attributes.

`FeatureSpec` holds those settings together, so the config, the fingerprint and the file name are
derived from one object and none of them can forget a setting.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path

from common.hashing import json_key

from .backbones import POOLING, Backbone, Recipe, weights_kind
from .decoding import DRAFT_MARGIN
from .engines import Engine
from .store import FORMAT_VERSION, StorageDtype

# How files become crops, where it changed the pixels: PIL, a large JPEG decoded at a reduced size
# (decoding.decode_pil). Stores made before it (torchvision's decoder, always at full size) lack it.
DECODING = f"pil, jpeg reduced to {DRAFT_MARGIN}x the resize"

FEATURE_PACKAGES = ("cnnfeat", "torch", "torchvision", "numpy", "h5py", "pillow", "efficientnet-lite-pytorch")


def fingerprint(config: dict) -> str:
    """Hash of everything that changes the numbers (backbone, weights, preprocessing, pooling,
    format version); two stores with the same fingerprint hold comparable vectors."""
    return json_key(config)


@dataclass(frozen=True)
class FeatureSpec:
    """Everything that changes the numbers of a store's vectors."""

    backbone: Backbone
    weights: str | None = None  # None: the backbone's own; "random"; or a checkpoint's path
    precision: str = "float32"  # what the backbone computes in (engines.compute_precision)
    engine: Engine = "torch"
    storage_dtype: StorageDtype = "float32"
    recipe: Recipe = Recipe()  # stages, pooling, size, views

    @cached_property
    def config(self) -> dict:
        """The settings as the store records them (a checkpoint named by its content's hash)."""
        record = self.backbone
        config = {
            "backbone": record.name,
            "weights": record.weights_id(self.weights),
            "preprocessing": json.loads(json.dumps(self.recipe.preprocessing(record).as_dict())),
            "pooling": POOLING,
            "feature_dim": self.feature_dim,
            "format_version": FORMAT_VERSION,
            "engine": self.engine,
            "precision": self.precision,
            "decoding": DECODING,
        }
        if self.storage_dtype != "float32":  # absent by default, so stores made before it keep their fingerprint
            config["storage_dtype"] = self.storage_dtype
        config.update(self.recipe.config())  # the same: each setting absent unless asked
        if self.recipe.pools_stages:
            config["pooling"] = f"{self.recipe.pool} of the last {self.recipe.layers} stages"
        if self.recipe.tta == "crops":  # the square the five crops are cut from
            config["crops_from"] = self.recipe.input_preprocessing(record).crop_size
        return config

    @property
    def feature_dim(self) -> int:
        return self.recipe.feature_dim(self.backbone)

    @cached_property
    def fingerprint(self) -> str:
        return fingerprint(self.config)

    def store_path(self, out: Path, dataset: str) -> Path:
        """OUT/features/<dataset>-<backbone><tag>.h5: a checkpoint, random weights, TTA and float16
        storage and each recipe setting get a file of their own, beside the plain one."""
        tag = {"random": "-random"}.get(self.weights, "")
        weights_id = self.config["weights"]
        if weights_id.startswith("file:"):
            tag = f"-ft{weights_id[5:13]}"
        tag += self.recipe.tag()
        if self.storage_dtype != "float32":
            tag += f"-{self.storage_dtype}"
        return Path(out) / "features" / f"{dataset}-{self.backbone.name}{tag}.h5"

    def store_attrs(self, images) -> dict:
        return store_attrs(self.config, self.fingerprint, images, self.weights)


def store_attrs(config: dict, fp: str, images, weights: str | None) -> dict:
    """The store's attributes: what made its vectors, and which dataset they describe."""
    return {
        "format_version": FORMAT_VERSION,
        "fingerprint": fp,
        "config": json.dumps(config, sort_keys=True),
        "versions": json.dumps(library_versions(), sort_keys=True),
        "class_names": json.dumps(images.class_names),
        "data_root": str(images.root),
        "data_source": images.source,
        "dataset": images.name,
        "layout": images.layout,
        "weights_source": weights_source(weights),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def weights_source(weights: str | None) -> str:
    """What rebuilds the backbone later (a saved model predicting from images): a checkpoint's absolute path."""
    return str(Path(weights).resolve()) if weights_kind(weights) == "file" else (weights or "")


def library_versions(packages=FEATURE_PACKAGES) -> dict:
    """Installed version of each package (None where it is not installed)."""
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions
