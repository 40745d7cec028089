"""What `serve` runs: a saved model (.joblib) or an exported graph (.onnx), behind one interface.

A predictor turns an uploaded file's bytes into the uint8 crop its backbone expects (`prepare`,
run per image, in threads) and a batch of crops into class probabilities (`predict`, run on
batches the server gathers).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from featurize.backbones import crop_transform
from featurize.errors import CnnfeatError
from featurize.images import decode_image_bytes


class Predictor:
    classes: list[str]
    info: dict  # what GET /model shows

    def __init__(self, transform):
        self._transform = transform

    def prepare(self, data: bytes) -> np.ndarray:
        """An image file's bytes -> uint8 (3, crop, crop); UnreadableImage with a reason."""
        return self._transform(decode_image_bytes(data)).numpy()

    def predict(self, crops: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class JoblibPredictor(Predictor):
    """A saved model: its backbone rebuilt as `predict` does (onnxruntime on a CPU), then its head."""

    def __init__(self, path: Path, device: str):
        from classifiers.model import load_model, model_record

        self.model = load_model(path)
        embedder, _ = self.model.embedder(device)
        super().__init__(embedder.preprocessing.transform())
        self.embedder = embedder
        self.classes = self.model.classes_.tolist()
        config = self.model.feature_config or {}
        self.info = {"format": "joblib", "classes": self.classes, "backbone": config.get("backbone"),
                     "engine": embedder.engine, "feature_fingerprint": self.model.feature_fingerprint,
                     "model": model_record(path)}

    def predict(self, crops):
        return self.model.pipeline_.predict_proba(self.embedder.embed(crops))


class OnnxPredictor(Predictor):
    """An exported model.onnx: everything happens in one onnxruntime session."""

    def __init__(self, path: Path):
        from featurize.engines import cpu_session

        try:
            self.session = cpu_session(path)
            meta = self.session.get_modelmeta().custom_metadata_map
            self.classes = json.loads(meta["class_names"])
            prep = json.loads(meta["preprocessing"])
        except Exception as error:  # onnxruntime's own kinds, or a graph without our metadata
            raise CnnfeatError(f"--model {path}: not a model.onnx written by `cnnfeat export` "
                               f"({type(error).__name__}: {error})") from None
        super().__init__(crop_transform(prep["resize_size"], prep["crop_size"], prep["interpolation"]))
        self.info = {"format": "onnx", "classes": self.classes, "backbone": meta.get("backbone"),
                     "engine": "onnxruntime", "feature_fingerprint": meta.get("feature_fingerprint"),
                     "model": json.loads(meta.get("model_info", "{}"))}

    def predict(self, crops):
        return self.session.run(["probabilities"], {"images": np.ascontiguousarray(crops)})[0]


def load_predictor(path: str | os.PathLike, device: str = "auto") -> Predictor:
    path = Path(path)
    if not path.is_file():
        raise CnnfeatError(f"--model {path}: no such file")
    if path.suffix == ".onnx":
        return OnnxPredictor(path)
    return JoblibPredictor(path, device)
