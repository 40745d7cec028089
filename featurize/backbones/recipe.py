"""How a backbone's feature maps become one vector: which stages, how each is pooled, at what input
size, over which views of the image. `Recipe()` is the plain vector every cnnfeat version made: the
last stage's global average at the weights' own size.

A recipe changes every number, so each of its settings is in the store's config (absent where it is
the default: stores made before recipes keep their fingerprint) and in the file's name. Computed
inside the backbone module (network.FeatureExtractor), so both engines, Ray, a saved model, `serve`
and the exported graph compute it alike.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields, replace
from typing import Literal, get_args

from common.errors import BackboneError

from .preprocessing import Preprocessing

PoolMode = Literal["avg", "gem", "max", "avgmax"]
POOL_MODES = get_args(PoolMode)
# none; flip: the mean of the image's vector and its mirror's; crops: the mean over five crops (the
# centre and four corners, torchvision's FiveCrop, of a centre square of max(resize, 8/7 crop)) and their mirrors
TtaMode = Literal["none", "flip", "crops"]
TTA_MODES = get_args(TtaMode)
VIEWS = {"none": 1, "flip": 2, "crops": 10}  # forward passes per image
GEM_P = 3.0  # generalised-mean pooling's exponent (Radenović et al.'s default)
MAX_IMAGE_SIZE = 1024
CROPS_MARGIN = 8 / 7  # --tta crops: five crops cut from a square this much larger (256 around 224)


def _whole(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass(frozen=True)
class Recipe:
    layers: int = 1  # the last N stages, each pooled; N > 1: each L2-normalised, then concatenated
    pool: PoolMode = "avg"
    image_size: int | None = None  # the crop's side; None: the weights' own
    tta: TtaMode = "none"

    def __post_init__(self):
        if not _whole(self.layers) or self.layers < 1:
            raise BackboneError(f"--layers {self.layers}: a whole number of stages, 1 or more")
        if self.pool not in POOL_MODES:
            raise BackboneError(f"--pool {self.pool!r}; valid: {', '.join(POOL_MODES)}")
        if self.image_size is not None and not (_whole(self.image_size) and 32 <= self.image_size <= MAX_IMAGE_SIZE):
            raise BackboneError(f"--image-size {self.image_size}: a whole number of pixels from 32 to {MAX_IMAGE_SIZE}")
        if self.tta not in TTA_MODES:
            raise BackboneError(f"--tta {self.tta!r}; valid: {', '.join(TTA_MODES)}")

    @property
    def pools_stages(self) -> bool:
        """Whether the vector is pooled from stage maps here (network.StagePooler) rather than being
        the trunk's own pooled vector (one stage, averaged: what every other tool gives)."""
        return self.layers > 1 or self.pool != "avg"

    @property
    def one_map_mean(self) -> bool:
        """Whether each vector is the mean of one feature map of one crop (and its mirror's, under
        flip): what an exact class activation map needs."""
        return not self.pools_stages and self.tta != "crops"

    def for_backbone(self, backbone) -> Recipe:
        """This recipe as `backbone` stores it: an image size equal to its own crop is its own (no
        second file of the same vectors)."""
        if self.image_size == backbone.preprocessing().crop_size:
            return replace(self, image_size=None)
        return self

    def config(self) -> dict:
        """The settings that differ from the plain recipe, as a store's config records them."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}

    @classmethod
    def from_config(cls, config: dict) -> Recipe:
        return cls(**{f.name: config[f.name] for f in fields(cls) if f.name in config})

    def tag(self) -> str:
        """The file name's part: "-l3-gem-s320-crops" (empty for the plain recipe)."""
        parts = {"layers": f"l{self.layers}", "pool": self.pool, "image_size": f"s{self.image_size}", "tta": self.tta}
        return "".join(f"-{parts[key]}" for key in self.config())

    def feature_dim(self, backbone) -> int:
        """The vector's width: the sum of the last `layers` stages' widths."""
        if self.layers == 1:
            return backbone.feature_dim  # a backbone registered without its stages still makes plain vectors
        stages = backbone.stage_dims
        if self.layers > len(stages):
            widths = ", ".join(map(str, stages))
            raise BackboneError(f"--layers {self.layers}: {backbone.name} has {len(stages)} stages (widths {widths})")
        return sum(stages[-self.layers :])

    def preprocessing(self, backbone) -> Preprocessing:
        """The weights' preprocessing at `image_size` (the resize keeps its ratio to the crop)."""
        own = backbone.preprocessing()
        if self.image_size is None:
            return own
        resize = round(self.image_size * own.resize_size / own.crop_size)
        return replace(own, resize_size=resize, crop_size=self.image_size)

    def input_preprocessing(self, backbone) -> Preprocessing:
        """What the module is fed: the crop; for `crops` a centre square of the image resized to
        max(the weights' resize, 8/7 of the crop) (the module cuts the five crops from it: with
        weights that resize barely past their crop, as torchvision's V2 weights do, the corners
        would be the centre)."""
        prep = self.preprocessing(backbone)
        if self.tta != "crops":
            return prep
        side = max(prep.resize_size, round(prep.crop_size * CROPS_MARGIN))
        return replace(prep, resize_size=side, crop_size=side)

    @property
    def views(self) -> int:
        """Forward passes per image."""
        return VIEWS[self.tta]


# What `--preset` sets. accurate: chosen by benchmarks/feature_variants.py (README, "Stronger frozen
# features"): the last 5 stages, each GeM-pooled, gained 4.1-6.8 points for logreg and svm on digits and
# on photo patches (95% intervals above 0), for about the plain recipe's cost; on hymenoptera (ImageNet's
# own kind of photo) it lost 2.0 for them (intervals reaching 0), so `fast` stays the default. Flip,
# crops and a larger input gained nothing beyond the noise anywhere, at 1.7x, 8.5x and 1.6x the time.
PRESET_RECIPES: dict[str, Recipe] = {"fast": Recipe(), "accurate": Recipe(layers=5, pool="gem")}
PRESETS = tuple(PRESET_RECIPES)


def preset_recipe(preset: str, backbone, **given) -> Recipe:
    """`preset`'s recipe for `backbone` (no more stages than it has), with each setting in `given`
    that is not None instead of the preset's."""
    if preset not in PRESET_RECIPES:
        raise BackboneError(f"--preset {preset!r}; valid: {', '.join(PRESETS)}")
    base = PRESET_RECIPES[preset]
    base = replace(base, layers=min(base.layers, len(backbone.stage_dims) or 1))
    return replace(base, **{key: value for key, value in given.items() if value is not None}).for_backbone(backbone)


def recipe_of(config: dict | None) -> Recipe:
    """The recipe a store's (or a saved model's) feature config records."""
    return Recipe.from_config(config or {})
