"""The saved model on disk: the .joblib and the readable .json record beside it.

`save_model` writes both (the record holds the .joblib's sha256); `load_model` checks the record
before anything is unpickled and refuses a model without it; `model_record` is the record's short
form that `serve` shows and `export` keeps.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from common.errors import CnnfeatError
from common.files import atomic_write
from common.hashing import file_sha256

from .model import FeatureClassifier


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
        record = {
            **info,
            "model_file": path.name,
            "sha256": file_sha256(model_tmp),
            "saved_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with atomic_write(json_path) as json_tmp:  # published first
            json_tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path, json_path


# Files a user may hand --model by mistake, and what each one is
NOT_SAVED_MODELS = {
    ".onnx": "an exported model (`serve --model` runs it)",
    ".json": "a saved model's record (its .joblib lies beside it)",
    ".h5": "a feature file (`fit --features` takes it)",
    ".pth": "a checkpoint (`extract --weights` takes it)",
    ".pt": "a checkpoint (`extract --weights` takes it)",
}


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
    if path.suffix.lower() in NOT_SAVED_MODELS:
        raise CnnfeatError(f"{option} {path}: {NOT_SAVED_MODELS[path.suffix.lower()]}, not a saved model (.joblib)")
    if verify:
        check_record(path, option)
    try:
        model = joblib.load(path)
    except Exception as error:  # pickle raises many kinds for a corrupt or foreign file
        raise CnnfeatError(f"{option} {path}: not a readable model file ({type(error).__name__}: {error})") from None
    if not isinstance(model, FeatureClassifier):
        raise CnnfeatError(
            f"{option} {path}: a joblib file, but not a cnnfeat model (it holds a {type(model).__name__})"
        )
    return model


def check_record(path: Path, option: str = "--model") -> None:
    """Refuse a model whose record is missing, unreadable or names another file's sha256."""
    json_path = path.with_suffix(".json")
    try:
        record = json.loads(json_path.read_text())
        expected = record.get("sha256") if isinstance(record, dict) else None
    except FileNotFoundError:
        raise CnnfeatError(
            f"{option} {path}: no {json_path.name} beside it, so nothing says it is the file that was "
            f"saved; refusing to load it. A .joblib file runs code when it is loaded: load it only "
            f"if you trust it (load_model(path, verify=False) in Python), and share models as "
            f"`cnnfeat export` ONNX files instead"
        ) from None
    except (OSError, ValueError) as error:
        raise CnnfeatError(
            f"{option} {path}: its record {json_path.name} is damaged ({type(error).__name__}: "
            f"{error}); refusing to load it (fit it again, or restore the record)"
        ) from None
    if not isinstance(expected, str):
        raise CnnfeatError(
            f"{option} {path}: its record {json_path.name} gives no sha256 of the model; refusing "
            f"to load it (fit it again, or restore the record)"
        )
    if file_sha256(path) != expected:
        raise CnnfeatError(
            f"{option} {path}: its sha256 does not match {json_path.name} (the file changed "
            f"after it was saved, or its save was interrupted); refusing to load it"
        )


def model_record(model_path: str | os.PathLike) -> dict:
    """The saved model's .json beside it, less its bulky parts (search history, feature config):
    what `serve` shows and `export` keeps in its metadata. {} when there is none."""
    try:
        info = json.loads(Path(model_path).with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in info.items() if k not in ("history", "cv", "feature_config")}
