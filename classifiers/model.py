"""The saved model: a fitted head plus everything needed to use it alone.

`joblib.load(path)` gives a FeatureClassifier: `classes_` are class names; `predict` and
`predict_proba` take a 2-D array of feature vectors, a `featurize.Features`, or image paths / PIL
images (the backbone is then rebuilt from the registry, with the preprocessing the features were
made with). Vectors of another width, or Features of another fingerprint, are refused.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted

from common.errors import CnnfeatError
from common.files import atomic_write
from common.hashing import file_sha256


class FeatureMismatch(CnnfeatError):
    """Vectors that did not come from the backbone and preprocessing the model was fitted on."""


class FeatureClassifier(ClassifierMixin, BaseEstimator):
    """A scikit-learn classifier on frozen-CNN feature vectors that also accepts images.

    Parameters
    ----------
    pipeline : unfitted scikit-learn estimator (the head).
    class_names : list of str, optional. Order of the classes; y may then be indices into it.
    feature_config : dict, optional. The feature store's config (backbone, weights, preprocessing...).
    feature_fingerprint : str, optional. Features with another fingerprint are refused.
    weights_source : str. How to rebuild the backbone: "" (its own weights), "random", or a path.
    """

    def __init__(self, pipeline=None, class_names=None, feature_config=None, feature_fingerprint=None,
                 weights_source=""):
        self.pipeline = pipeline
        self.class_names = class_names
        self.feature_config = feature_config
        self.feature_fingerprint = feature_fingerprint
        self.weights_source = weights_source

    @classmethod
    def from_linear_layer(cls, weight, bias, class_names, feature_config, feature_fingerprint, weights_source):
        """A fitted model from a trained linear layer on the features (the fine-tuned network's head)."""
        from sklearn.pipeline import Pipeline

        from .linear import TorchLinearClassifier

        layer = TorchLinearClassifier()
        layer.coef_, layer.intercept_ = np.asarray(weight, np.float32), np.asarray(bias, np.float32)
        layer.classes_, layer.n_features_in_ = np.arange(len(class_names)), layer.coef_.shape[1]
        model = cls(Pipeline([("scale", "passthrough"), ("clf", TorchLinearClassifier())]), list(class_names),
                    feature_config, feature_fingerprint, weights_source)
        model.pipeline_ = Pipeline([("scale", "passthrough"), ("clf", layer)])
        model.classes_ = np.asarray(class_names, dtype=object)
        model.n_features_in_ = layer.n_features_in_
        return model

    def fit(self, X, y, fitted=None):
        """Fit the head on vectors X and labels y (class names, or indices into class_names).
        `fitted`: a clone of `pipeline` the caller already fitted on (X, encode_labels(y)) - the
        forest an out-of-bag search grew on these very rows - is taken as it is."""
        X = self._check_vectors(X, fitting=True)
        index = self.encode_labels(y)
        self.pipeline_ = fitted if fitted is not None else clone(self.pipeline).fit(X, index)
        return self

    def encode_labels(self, y) -> np.ndarray:
        """Set `classes_` (class_names order, those present in y) and return y as indices into
        it: the labels the pipeline is fitted on."""
        y = np.asarray(y)
        if self.class_names is not None:
            names = np.asarray(self.class_names, dtype=object)
            y = names[y] if np.issubdtype(y.dtype, np.integer) else y.astype(object)
            present = set(y.tolist())
            self.classes_ = np.asarray([c for c in self.class_names if c in present], dtype=object)
        else:
            self.classes_ = np.unique(y).astype(object)
        index = {c: i for i, c in enumerate(self.classes_.tolist())}
        return np.asarray([index[c] for c in y.tolist()])

    def predict(self, X):
        check_is_fitted(self, "pipeline_")
        return self.classes_[self.pipeline_.predict(self.vectors(X))]

    def predict_proba(self, X):
        check_is_fitted(self, "pipeline_")
        if not hasattr(self.pipeline_, "predict_proba"):
            raise CnnfeatError("this head gives no probabilities")
        return self.pipeline_.predict_proba(self.vectors(X))

    # -- inputs ------------------------------------------------------------------------------
    def vectors(self, X) -> np.ndarray:
        """Feature vectors for X: an (n, D) array, a featurize.Features, or images (paths / PIL)."""
        from featurize import Features

        if isinstance(X, Features):
            if self.feature_fingerprint and X.fingerprint != self.feature_fingerprint:
                raise FeatureMismatch(
                    f"{X.path} holds features of {X.config.get('backbone')} (fingerprint {X.fingerprint}); "
                    f"this model was fitted on {self._backbone_name()} features (fingerprint "
                    f"{self.feature_fingerprint}): extract with the same backbone and weights")
            return self._check_vectors(X.X)
        images = _as_image_list(X)
        if images is not None:
            vectors, failures = self.embed_images(images)
            if failures:
                position, reason = failures[0]
                raise CnnfeatError(f"cannot read image {images[position]}: {reason}")
            return vectors
        return self._check_vectors(X)

    def _check_vectors(self, X, fitting=False) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2:
            raise FeatureMismatch(f"expected a 2-D array of feature vectors (rows = images), got shape {X.shape}")
        expected = self.n_features_in_ if not fitting else (self.feature_config or {}).get("feature_dim")
        if expected is not None and X.shape[1] != expected:
            raise FeatureMismatch(f"got vectors of width {X.shape[1]}; this model expects {expected} "
                                  f"({self._backbone_name()} features)")
        if fitting:
            self.n_features_in_ = X.shape[1]
        return X

    def _backbone_name(self) -> str:
        return (self.feature_config or {}).get("backbone", "unknown backbone")

    # -- images ------------------------------------------------------------------------------
    def sources(self) -> list["BackboneSource"]:
        """The backbone(s) our features come from: one, or one per part of fused features."""
        cached = getattr(self, "_sources", None)
        if cached is None:
            config = self.feature_config or {}
            parts = config.get("fused") or [{"config": config, "weights_source": self.weights_source}]
            self._sources = cached = [BackboneSource(part["config"], part["weights_source"]) for part in parts]
        return cached

    def embed_images(self, images, device: str = "auto", batch_size=None, workers=None, progress=False):
        """Vectors for image paths or PIL images, with the exact backbone(s) and preprocessing of the
        training features. Returns (vectors of the readable ones, in order; [(position, reason)])."""
        sources = self.sources()
        width = sum(source.embedder(device)[0].feature_dim for source in sources)
        vectors = np.zeros((len(images), width), np.float32)
        readable = np.ones(len(images), dtype=bool)
        failures = []
        paths = [i for i, image in enumerate(images) if not hasattr(image, "convert")]
        if paths:
            batches = self.iter_embedded([images[i] for i in paths], device, batch_size, workers, progress)
            for good, batch, bad in batches:
                vectors[[paths[j] for j in good]] = batch
                for j, reason in bad:
                    readable[paths[j]] = False
                    failures.append((paths[j], reason))
        on_disk = set(paths)
        in_memory = [i for i in range(len(images)) if i not in on_disk]
        if in_memory:
            vectors[in_memory] = np.hstack([source.embed_pil([images[i] for i in in_memory], device)
                                            for source in sources])
        return vectors[readable], sorted(failures)

    def iter_embedded(self, paths, device: str = "auto", batch_size=None, workers=None, progress=False):
        """Image files embedded batch by batch, in order: (positions of the readable ones in
        `paths`, their vectors, [(position, reason)] of the others) - memory of one batch."""
        sources = self.sources()
        if len(sources) == 1:
            return sources[0].iter_embedded(paths, device, batch_size, workers, progress)
        return _iter_joined(sources, [str(p) for p in paths], device, batch_size, workers, progress)

    def embedder(self, device: str = "auto"):
        """(the embedder of featurize.engines that made our features, the device it runs on), for a
        one-backbone model (what `serve` and `export` take)."""
        return self._single_source().embedder(device)

    def backbone_record(self):
        """(the registry's backbone record, weights) that rebuild the network of our features."""
        return self._single_source().record()

    def _single_source(self) -> "BackboneSource":
        sources = self.sources()
        if len(sources) > 1:
            raise CnnfeatError(f"this model joins the features of {len(sources)} backbones "
                               f"({self._backbone_name()}); serve and export take one-backbone models")
        return sources[0]

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_sources", None)  # torch modules: rebuilt on first use, never pickled
        return state


class BackboneSource:
    """One backbone a model's features were made with: rebuilt once per process and device, and
    checked to make the features the model was fitted on."""

    def __init__(self, config: dict, weights_source: str = ""):
        self.config, self.weights_source, self._embedder, self._network = config or {}, weights_source, None, None

    def network(self):
        """The torch feature extractor itself, on the CPU, without the flip (what `explain` looks
        inside), built once."""
        if self._network is None:
            backbone, weights = self.record()
            self._network = backbone.load(weights)
        return self._network

    def record(self):
        """(the registry's backbone record, weights); a clear error when this machine would build
        another network (other weights or preprocessing)."""
        from featurize import get_backbone

        if "backbone" not in self.config:
            raise CnnfeatError("this model does not record the backbone of its features, so it cannot "
                               "predict from images; pass feature vectors")
        backbone = get_backbone(self.config["backbone"])
        weights = self.weights_source or None
        rebuilt = {"weights": backbone.weights_id(weights),
                   "preprocessing": json.loads(json.dumps(backbone.preprocessing().as_dict()))}
        for key, value in rebuilt.items():
            if self.config.get(key) != value:
                raise FeatureMismatch(f"rebuilding {backbone.name} here gives {key} {value}, but the model was "
                                      f"fitted on features with {self.config.get(key)}")
        return backbone, weights

    def embedder(self, device: str = "auto"):
        """(the embedder of featurize.engines, the device it runs on)."""
        from featurize import load_embedder, resolve_device, resolve_engine

        device = resolve_device(device)
        if self._embedder is not None and self._embedder[1] == device:
            return self._embedder
        backbone, weights = self.record()
        # Precision and engine are not checked: they follow the device (float16 torch on CUDA), so a
        # model fitted on GPU features still predicts on a CPU, in float32, and the other way round.
        # The features' own engine is used where the device allows it.
        engine = self.config.get("engine", "torch")
        engine = resolve_engine("auto" if engine == "onnxruntime" and device != "cpu" else engine, device)
        self._embedder = (load_embedder(backbone, weights, device, engine, tta=self.config.get("tta", "none")), device)
        return self._embedder

    def iter_embedded(self, paths, device="auto", batch_size=None, workers=None, progress=False):
        from featurize import iter_vectors

        extractor, device = self.embedder(device)
        return iter_vectors(extractor, device, Path(), [str(p) for p in paths], batch_size,
                            0 if len(paths) < 64 else workers, progress, desc="predict")

    def embed_pil(self, pil_images, device="auto") -> np.ndarray:
        import torch

        from featurize import pil_to_rgb_tensor

        extractor, _ = self.embedder(device)
        transform = extractor.preprocessing.transform()
        return extractor.embed(torch.stack([transform(pil_to_rgb_tensor(image)) for image in pil_images]))


JOINED_CHUNK = 256  # images per round of a fused model's backbones: memory of one chunk


def _iter_joined(sources, paths, device, batch_size, workers, progress):
    """iter_embedded for fused features: each chunk of paths embedded by every backbone in turn; an
    image's vectors joined where every backbone read it (the first reason given otherwise)."""
    from tqdm import tqdm

    for start in tqdm(range(0, len(paths), JOINED_CHUNK), unit="chunk", desc="predict", disable=not progress):
        chunk = paths[start:start + JOINED_CHUNK]
        found, failed = [], {}
        for source in sources:
            vectors = {}
            for good, batch, bad in source.iter_embedded(chunk, device, batch_size, workers):
                vectors.update(zip(good, batch))
                for position, reason in bad:
                    failed.setdefault(position, reason)
            found.append(vectors)
        good = [i for i in range(len(chunk)) if i not in failed]
        joined = np.hstack([np.asarray([vectors[i] for i in good], np.float32).reshape(
            len(good), source.embedder(device)[0].feature_dim) for source, vectors in zip(sources, found)])
        yield ([start + i for i in good], joined,
               [(start + i, reason) for i, reason in sorted(failed.items())])


def _as_image_list(X):
    """A list of image paths / PIL images, or None when X is something else (vectors)."""
    def is_image(item):
        return isinstance(item, (str, os.PathLike)) or hasattr(item, "convert")
    if is_image(X):
        return [X]
    if isinstance(X, (list, tuple)) and X and all(is_image(item) for item in X):
        return list(X)
    return None


# -- files -----------------------------------------------------------------------------------

def save_model(model: FeatureClassifier, path: str | os.PathLike, info: dict) -> tuple[Path, Path]:
    """Write `path` (.joblib) and a readable .json beside it with `info` + the .joblib's sha256.

    Both are written in full and fsynced under temporary names first; then the .json is renamed
    into place, then the .joblib. A kill between the two renames leaves a .json whose sha256 the
    old .joblib does not match, so `load_model` refuses the half-saved pair instead of pairing a
    new record with an old model; `fit` or `compare` run again writes both."""
    import joblib

    path = Path(path)
    json_path = path.with_suffix(".json")
    with atomic_write(path) as model_tmp:  # published last, on leaving this block
        joblib.dump(model, model_tmp)
        record = {**info, "model_file": path.name, "sha256": file_sha256(model_tmp),
                  "saved_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with atomic_write(json_path) as json_tmp:  # published first
            json_tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path, json_path


def load_model(path: str | os.PathLike, verify: bool = True, option: str = "--model") -> FeatureClassifier:
    """Load a saved model. With `verify` (the default, and always through the CLI), the record
    saved beside it (the .json) must be there, parse, and give the file's sha256, checked before
    anything is unpickled. That is a check against corruption and half-finished saves, not a
    signature: whoever can change the .joblib can change the .json. A .joblib file runs code when
    loaded: load only files you trust; `verify=False` skips the check for those who know why.
    `option`: how errors name the file (the command's option)."""
    import joblib

    path = Path(path)
    if not path.is_file():
        raise CnnfeatError(f"{option} {path}: no such file")
    if verify:
        check_record(path, option)
    try:
        model = joblib.load(path)
    except Exception as error:  # pickle raises many kinds for a corrupt or foreign file
        raise CnnfeatError(f"{option} {path}: not a readable model file ({type(error).__name__}: {error})") from None
    if not isinstance(model, FeatureClassifier):
        raise CnnfeatError(f"{option} {path}: a joblib file, but not a cnnfeat model (it holds a "
                           f"{type(model).__name__})")
    return model


def check_record(path: Path, option: str = "--model") -> None:
    """Refuse a model whose record is missing, unreadable or names another file's sha256."""
    json_path = path.with_suffix(".json")
    try:
        record = json.loads(json_path.read_text())
        expected = record.get("sha256") if isinstance(record, dict) else None
    except FileNotFoundError:
        raise CnnfeatError(f"{option} {path}: no {json_path.name} beside it, so nothing says it is the file that was "
                           f"saved; refusing to load it. A .joblib file runs code when it is loaded: load it only "
                           f"if you trust it (load_model(path, verify=False) in Python), and share models as "
                           f"`cnnfeat export` ONNX files instead") from None
    except (OSError, ValueError) as error:
        raise CnnfeatError(f"{option} {path}: its record {json_path.name} is damaged ({type(error).__name__}: "
                           f"{error}); refusing to load it (fit it again, or restore the record)") from None
    if not isinstance(expected, str):
        raise CnnfeatError(f"{option} {path}: its record {json_path.name} gives no sha256 of the model; refusing "
                           f"to load it (fit it again, or restore the record)")
    if file_sha256(path) != expected:
        raise CnnfeatError(f"{option} {path}: its sha256 does not match {json_path.name} (the file changed "
                           f"after it was saved, or its save was interrupted); refusing to load it")


def model_record(model_path: str | os.PathLike) -> dict:
    """The saved model's .json beside it, less its bulky parts (search history, feature config):
    what `serve` shows and `export` keeps in its metadata. {} when there is none."""
    try:
        info = json.loads(Path(model_path).with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in info.items() if k not in ("history", "cv", "feature_config")}
