"""What `serve` runs: a saved model (.joblib) or an exported graph (.onnx), behind one interface.

A predictor turns an uploaded file's bytes into the uint8 crop its backbone expects (`prepare`,
run per image, in threads; decoding bounded by featurize.decode_pil's max_pixels) and a batch of
crops into class probabilities (`predict`, run on batches the server gathers).
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from common.errors import CnnfeatError
from common.names import printable
from featurize import crop_transform


class Predictor:
    classes: list[str]
    info: dict  # what GET /model shows

    def __init__(self, transform):
        self._transform = transform  # featurize's ResizeCrop: it decodes large JPEGs at a reduced size

    def prepare(self, data: bytes, max_pixels: int) -> np.ndarray:
        """An image file's bytes -> uint8 (3, crop, crop); UnreadableImage with a reason (one over
        `max_pixels` among them)."""
        return self._transform.from_bytes(data, max_pixels)

    def predict(self, crops: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class JoblibPredictor(Predictor):
    """A saved model: its backbone rebuilt as `predict` does (onnxruntime on a CPU), then its head."""

    def __init__(self, path: Path, device: str):
        from classifiers import load_model, model_record

        self.model = load_model(path)
        embedder, _ = self.model.embedder(device)
        super().__init__(embedder.preprocessing.transform())
        self.embedder = embedder
        self.classes = [printable(c) for c in self.model.classes_.tolist()]  # JSON: names not UTF-8 escaped
        config = self.model.feature_config or {}
        self.info = {
            "format": "joblib",
            "classes": self.classes,
            "backbone": config.get("backbone"),
            "engine": embedder.engine,
            "feature_fingerprint": self.model.feature_fingerprint,
            "model": without_paths(model_record(path)),
        }

    def predict(self, crops):
        return self.model.pipeline_.predict_proba(self.embedder.embed(crops))


class OnnxPredictor(Predictor):
    """An exported model.onnx: everything happens in one onnxruntime session."""

    def __init__(self, path: Path):
        from featurize import cpu_session

        try:
            self.session = cpu_session(path)
            meta = self.session.get_modelmeta().custom_metadata_map
            self.classes = [printable(c) for c in json.loads(meta["class_names"])]
            prep = json.loads(meta["preprocessing"])
        except Exception as error:  # noqa: BLE001  (onnxruntime's own kinds, or a graph without our metadata)
            raise CnnfeatError(
                f"--model {path}: not a model.onnx written by `cnnfeat export` ({type(error).__name__}: {error})"
            ) from None
        super().__init__(crop_transform(prep["resize_size"], prep["crop_size"], prep["interpolation"]))
        self.info = {
            "format": "onnx",
            "classes": self.classes,
            "backbone": meta.get("backbone"),
            "engine": "onnxruntime",
            "feature_fingerprint": meta.get("feature_fingerprint"),
            "model": without_paths(json.loads(meta.get("model_info", "{}"))),
        }

    def predict(self, crops):
        return self.session.run(["probabilities"], {"images": np.ascontiguousarray(crops)})[0]


def without_paths(record):
    """A model's record as GET /model shows it: a path on the server's disk (feature_file,
    checkpoint, data_root, a distillation's teacher, at any depth) by its file name only - a client
    has no use for the rest -, and every string valid UTF-8 (a class name that is not: escaped)."""
    if isinstance(record, dict):
        return {printable(key): without_paths(value) for key, value in record.items()}
    if isinstance(record, list):
        return [without_paths(value) for value in record]
    return printable(_names(record)) if isinstance(record, str) else record


def _names(value: str) -> str:
    parts = value.split(" + ")  # `fit` joins the feature files of several backbones with " + "
    if all(PurePosixPath(p).is_absolute() or PureWindowsPath(p).is_absolute() for p in parts):
        return " + ".join(PureWindowsPath(p).name for p in parts)  # splits at / and \ alike
    return value


def load_predictor(path: str | os.PathLike, device: str = "auto") -> Predictor:
    path = Path(path)
    if not path.is_file():
        raise CnnfeatError(f"--model {path}: no such file")
    if path.suffix == ".onnx":
        return OnnxPredictor(path)
    return JoblibPredictor(path, device)
