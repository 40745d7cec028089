"""Fitted models that `compare` keeps between runs: each saved with the key of everything its
numbers depend on, and reused only while that key is unchanged and the saved model is the one its
record describes."""

from __future__ import annotations

import glob
import json
from dataclasses import replace
from pathlib import Path

from classifiers import SearchSettings, get_head, load_model, resolve_grid
from common.errors import CnnfeatError
from common.hashing import json_key
from featurize import library_versions

from .fit import MODEL_PACKAGES


def head_key(data, split, head: str, settings: SearchSettings) -> str:
    """Everything a fitted head's numbers depend on: the feature file (its fingerprint, sizes and
    times), the head's grid and pipeline, the search settings, the split, the class names, the
    library versions."""
    stats = [Path(f).stat() for f in data.files]
    spec = get_head(head)
    inputs = {
        "fingerprint": data.fingerprint,
        "file": [[stat.st_size, stat.st_mtime_ns] for stat in stats],
        "head": head,
        "grid": repr(resolve_grid(spec)),
        **settings.result_settings(),
        "method": settings.method_for(spec, len(split.train)),
        "pipeline": {k: repr(v) for k, v in spec.build(settings.seed).get_params(deep=True).items()},
        "calibrate": spec.calibrate,
        "validation": spec.validation,
        "split": split.describe(),
        "heldout_rows": json_key([int(row) for row in split.heldout]),  # which images, not only how many
        "class_names": data.class_names,
        "versions": library_versions(MODEL_PACKAGES),
    }
    return json_key(inputs)


def finetune_key(data, settings, heldout_paths) -> str:
    """Everything a fine-tune that compare runs depends on: the feature file (which images it was
    extracted from, their sizes and times), the fine-tune's settings (progress aside), the images
    it is scored on, the library versions."""
    from dataclasses import asdict

    stats = [Path(f).stat() for f in data.files]
    recipe = {k: v for k, v in asdict(replace(settings, distill=None)).items() if k != "progress"}
    inputs = {
        "fingerprint": data.fingerprint,
        "file": [[stat.st_size, stat.st_mtime_ns] for stat in stats],
        "finetune": recipe,
        "distill": settings.distill.describe() if settings.distill is not None else None,
        "heldout_paths": json_key(heldout_paths),
        "versions": library_versions(MODEL_PACKAGES),
    }
    return json_key(inputs)


def reusable_finetune(folder: Path, key: str) -> bool:
    """Whether the fine-tune in `folder` was made with this key and all its files are there."""
    files = ("model.joblib", "checkpoint.pth", "heldout.csv")
    return _saved_info(folder / "model.json").get("cache_key") == key and all((folder / f).is_file() for f in files)


def ensemble_key(kind: str, member_keys: list[str], settings: SearchSettings) -> str:
    """An ensemble's numbers depend on its kind, its members' (their keys) and the search settings."""
    return json_key({"ensemble": kind, "members": sorted(member_keys), **settings.result_settings()})


def reusable(model_path: Path, key: str, name: str, fingerprint: str, log):
    """(model, info) saved by an earlier run with this key, or None: then the model is fitted again
    (a missing, changed or half-saved model file included, with a line saying so). The model must
    be the one its record describes (its sha256), of this head, on these features."""
    info = _saved_info(model_path.with_suffix(".json"))
    if info.get("cache_key") != key:
        return None
    try:
        model = load_model(model_path)
    except CnnfeatError as error:
        log(f"cannot reuse {model_path.name} ({error}); fitting it again")
        return None
    if info.get("head") != name or model.feature_fingerprint != fingerprint:
        log(f"cannot reuse {model_path.name} (it is not the {name} of these features); fitting it again")
        return None
    return model, info


def reusable_from_other_reports(model_path: Path, key: str, name: str, fingerprint: str, log):
    """(model, info, path) of the same model (same file name) that a compare saved with this key into
    another report folder beside this one's, or None. A head's key covers everything its numbers
    depend on, none of which is the report folder: adding a backbone to a comparison (a new report
    folder) fits only the new rows."""
    reports = model_path.parent.parent.parent
    for other in sorted(reports.glob(f"*/models/{glob.escape(model_path.name)}")):
        if other.parent == model_path.parent or _saved_info(other.with_suffix(".json")).get("cache_key") != key:
            continue
        found = reusable(other, key, name, fingerprint, log)
        if found is not None:
            return (*found, other)
    return None


def _saved_info(json_path: Path) -> dict:
    """The saved record, or {} where there is none or it cannot be read as a JSON object."""
    try:
        info = json.loads(json_path.read_text()) if json_path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}
