"""Images to feature vectors, through the backbone(s) a saved model's features were made with.

A `BackboneSource` is one backbone, rebuilt from the registry once per process and device and
checked to give the features the model was fitted on (its weights and preprocessing). A model of
fused features has one source per part: its images are embedded by each in turn and the vectors
joined. Paths are decoded a batch at a time (featurize.iter_vectors: threads for onnxruntime); PIL
images are embedded in memory.
"""

from __future__ import annotations

import json
import os

import numpy as np

from common.errors import CnnfeatError


class FeatureMismatch(CnnfeatError, ValueError):
    """Vectors that did not come from the backbone and preprocessing the model was fitted on (a
    ValueError too, as scikit-learn raises for input of the wrong shape)."""


class BackboneSource:
    """One backbone a model's features were made with: rebuilt once per process and device, and
    checked to make the features the model was fitted on."""

    def __init__(self, config: dict, weights_source: str = ""):
        self.config, self.weights_source, self._embedder, self._network = config or {}, weights_source, None, None

    def network(self):
        """The torch feature extractor itself, on the CPU, at the features' input size but with the
        plain recipe (one view, the last stage averaged: what `explain` looks inside), built once."""
        from featurize import Recipe

        if self._network is None:
            backbone, weights = self.record()
            self._network = backbone.load(weights, recipe=Recipe(image_size=self.recipe.image_size))
        return self._network

    @property
    def recipe(self):
        """How the features' vectors were made from the backbone's maps (featurize.Recipe)."""
        from featurize import recipe_of

        return recipe_of(self.config)

    def record(self):
        """(the registry's backbone record, weights); a clear error when this machine would build
        another network (other weights or preprocessing)."""
        from featurize import get_backbone

        if "backbone" not in self.config:
            raise CnnfeatError(
                "this model does not record the backbone of its features, so it cannot "
                "predict from images; pass feature vectors"
            )
        backbone = get_backbone(self.config["backbone"])
        weights = self.weights_source or None
        rebuilt = {
            "weights": backbone.weights_id(weights),
            "preprocessing": json.loads(json.dumps(self.recipe.preprocessing(backbone).as_dict())),
        }
        for key, value in rebuilt.items():
            if self.config.get(key) != value:
                raise FeatureMismatch(
                    f"rebuilding {backbone.name} here gives {key} {value}, but the model was "
                    f"fitted on features with {self.config.get(key)}"
                )
        return backbone, weights

    def embedder(self, device: str = "auto"):
        """(the embedder of featurize.engines, the device it runs on)."""
        from common.hashing import json_key
        from featurize import graph_cache_dir, load_embedder, resolve_device, resolve_engine

        device = resolve_device(device)
        if self._embedder is not None and self._embedder[1] == device:
            return self._embedder
        backbone, weights = self.record()
        # Precision and engine are not checked: they follow the device (float16 torch on CUDA), so a
        # model fitted on GPU features still predicts on a CPU, in float32, and the other way round.
        # The features' own engine is used where the device allows it.
        engine = self.config.get("engine", "torch")
        engine = resolve_engine("auto" if engine == "onnxruntime" and device != "cpu" else engine, device)
        embedder = load_embedder(
            backbone,
            weights,
            device,
            engine,
            fingerprint=json_key(self.config),  # the features' fingerprint: the graph's every setting
            cache_dir=graph_cache_dir(),
            recipe=self.recipe,
        )
        self._embedder = (embedder, device)
        return self._embedder

    def feature_dim(self, device: str = "auto") -> int:
        return self.embedder(device)[0].feature_dim

    def iter_embedded(self, paths, device="auto", batch_size=None, workers=None, progress=False, reader=None):
        from featurize import iter_vectors, source_for_paths

        extractor, device = self.embedder(device)
        paths = [str(p) for p in paths]
        return iter_vectors(
            extractor,
            device,
            reader or source_for_paths(paths),
            paths,
            batch_size,
            (0 if len(paths) < 64 else None) if workers is None else workers,  # few: no pool to start
            progress,
            desc="predict",
        )

    def embed_pil(self, pil_images, device="auto") -> np.ndarray:
        from featurize import rgb_image

        extractor, _ = self.embedder(device)
        transform = extractor.preprocessing.transform()
        return extractor.embed(np.stack([transform(rgb_image(image)) for image in pil_images]))


def differing_settings(fitted_on: dict | None, given: dict) -> str:
    """The feature settings two configs disagree on, named ("decoding (absent: an older cnnfeat)")."""
    fitted_on = fitted_on or {}
    keys = sorted(k for k in set(fitted_on) | set(given) if fitted_on.get(k) != given.get(k))
    return ", ".join(f"{k}{'' if k in fitted_on else ' (absent: an older cnnfeat)'}" for k in keys) or "nothing named"


def backbone_sources(feature_config: dict | None, weights_source: str = "") -> list[BackboneSource]:
    """The backbone(s) of features made with `feature_config`: one, or one per part of fused features."""
    config = feature_config or {}
    parts = config.get("fused") or [{"config": config, "weights_source": weights_source}]
    return [BackboneSource(part["config"], part["weights_source"]) for part in parts]


def embed_images(
    sources: list[BackboneSource],
    images,
    device: str = "auto",
    batch_size=None,
    workers=None,
    progress=False,
    reader=None,
):
    """Vectors for image paths (read by `reader`, as iter_embedded) or PIL images, with the exact
    backbone(s) and preprocessing of the training features. Returns (vectors of the readable ones,
    in order; [(position, reason)])."""
    width = sum(source.feature_dim(device) for source in sources)
    vectors = np.zeros((len(images), width), np.float32)
    on_disk = [i for i, image in enumerate(images) if not is_pil(image)]
    failures = _embed_files(sources, images, on_disk, vectors, (device, batch_size, workers), progress, reader)
    in_memory = sorted(set(range(len(images))) - set(on_disk))
    if in_memory:
        pil_images = [images[i] for i in in_memory]
        vectors[in_memory] = np.hstack([source.embed_pil(pil_images, device) for source in sources])
    readable = np.ones(len(images), dtype=bool)
    readable[np.asarray([position for position, _ in failures], dtype=np.int64)] = False
    return vectors[readable], sorted(failures)


def _embed_files(
    sources, images, positions: list[int], out: np.ndarray, options: tuple, progress, reader
) -> list[tuple[int, str]]:
    """Embed the image files at `positions` of `images` into those rows of `out` (`options`: device,
    batch size, workers); [(position, reason)] of the unreadable ones."""
    failures = []
    if not positions:
        return failures
    batches = iter_embedded(sources, [images[i] for i in positions], *options, progress, reader=reader)
    for good, batch, bad in batches:
        out[np.asarray([positions[j] for j in good], dtype=np.int64)] = batch
        failures += [(positions[j], reason) for j, reason in bad]
    return failures


def iter_embedded(
    sources: list[BackboneSource],
    paths,
    device: str = "auto",
    batch_size=None,
    workers=None,
    progress=False,
    reader=None,
):
    """Image files (or URLs of objects) embedded batch by batch, read by `reader` (a
    featurize.ImageSource; None: the paths as they are, with the store's default client), in order:
    (positions of the readable ones in `paths`, their vectors, [(position, reason)] of the others) -
    memory of one batch."""
    options = (device, batch_size, workers)
    if len(sources) == 1:
        return sources[0].iter_embedded(paths, *options, progress, reader)
    return _iter_joined(sources, [str(p) for p in paths], options, progress, reader)


JOINED_CHUNK = 256  # images per round of a fused model's backbones: memory of one chunk


def _iter_joined(sources, paths, options: tuple, progress, reader):
    """iter_embedded for fused features: each chunk of paths embedded by every backbone in turn.
    `options`: (device, batch size, workers)."""
    from tqdm import tqdm

    for start in tqdm(range(0, len(paths), JOINED_CHUNK), unit="chunk", desc="predict", disable=not progress):
        good, joined, failed = _joined_chunk(sources, paths[start : start + JOINED_CHUNK], options, reader)
        yield [start + i for i in good], joined, [(start + i, reason) for i, reason in failed]


def _joined_chunk(sources, chunk, options: tuple, reader):
    """(positions in `chunk` every backbone read, their vectors joined, [(position, reason)] of the
    others: the first backbone's reason where several failed)."""
    found, failed = [], {}
    for source in sources:
        vectors = {}
        for good, batch, bad in source.iter_embedded(chunk, *options, reader=reader):
            vectors.update(zip(good, batch))
            for position, reason in bad:
                failed.setdefault(position, reason)
        found.append(vectors)
    good = [i for i in range(len(chunk)) if i not in failed]
    joined = np.hstack(
        [
            np.asarray([vectors[i] for i in good], np.float32).reshape(len(good), source.feature_dim(options[0]))
            for source, vectors in zip(sources, found)
        ]
    )
    return good, joined, sorted(failed.items())


def is_pil(image) -> bool:
    """A PIL image (or anything that converts like one), as opposed to a path."""
    return hasattr(image, "convert")


def as_image_list(X):
    """A list of image paths / PIL images, or None when X is something else (vectors)."""

    def is_image(item):
        return isinstance(item, (str, os.PathLike)) or is_pil(item)

    if is_image(X):
        return [X]
    if isinstance(X, (list, tuple)) and X and all(is_image(item) for item in X):
        return list(X)
    return None
