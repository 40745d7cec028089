"""`cnnfeat fit`: search a head on a feature file's training rows, refit, score the held-out rows, save."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from classifiers import FeatureClassifier, SearchSettings, fused_head, get_head, save_model, search_head
from common.errors import CnnfeatError
from common.files import ensure_writable
from featurize import library_versions, load_features, part_widths, take_rows

from .layout import DEFAULT_OUT, features_dir, models_dir
from .metrics import heldout_scores
from .splits import train_eval_split


@dataclass
class FitOutcome:
    model_path: Path
    json_path: Path
    info: dict
    notes: list = field(default_factory=list)


def latest_features(out: str | Path) -> Path:
    """The feature file under OUT/features written last."""
    stores = sorted(features_dir(out).glob("*.h5"), key=lambda p: p.stat().st_mtime)
    if not stores:
        raise CnnfeatError(
            f"no feature file under {features_dir(out)}: run `cnnfeat extract` first, or pass --features FILE"
        )
    return stores[-1]


def chosen_features(features, out, log) -> Path:
    """--features as given, or the newest feature file under OUT/features (and a line saying so)."""
    if features:
        return Path(features)
    path = latest_features(out)
    log(f"features: {path} (the newest under {features_dir(out)})")
    return path


def parse_grid(text: str | None):
    """--grid: a JSON file or a JSON string (an object, or a list of objects; resolve_grid checks
    its shape and values against the head)."""
    if not text:
        return None
    is_file = os.path.isfile(text)  # os.path: Path.is_file raises on a name too long for a file (a long grid)
    try:
        return json.loads(Path(text).read_text() if is_file else text)
    except ValueError as error:  # UnicodeDecodeError too: a file that is not text
        what = f"the file {text} is not valid JSON" if is_file else "neither a JSON file nor valid JSON"
        raise CnnfeatError(f"--grid: {what} ({error})") from None


MODEL_PACKAGES = ("cnnfeat", "scikit-learn", "numpy", "joblib", "torch", "torchvision", "h5py")


@dataclass
class Scored:
    """A head fitted on a split's training rows and scored on its held-out rows."""

    model: FeatureClassifier
    info: dict  # what the saved .json holds
    predicted: np.ndarray  # class names, one per held-out row
    proba: np.ndarray  # (n held-out, classes) in model.classes_ order


def fit_and_score(data, split, clf, grid=None, settings: SearchSettings | None = None, log=print) -> Scored:
    """Search `clf` on the training rows of `split`, refit on all of them, score the held-out rows."""
    settings = settings or SearchSettings()
    head = get_head(clf)
    if data.parts:  # joined vectors of several backbones: each part L2-normalised first
        head = fused_head(head, part_widths(data.config))
    X_train, y_train = take_rows(data.X, split.train), data.y[split.train]
    model = FeatureClassifier(
        None,
        class_names=data.class_names,
        feature_config=data.config,
        feature_fingerprint=data.fingerprint,
        weights_source=data.weights_source,
    )
    # The search sees the labels the model is fitted on, so a model it fitted can be kept as it is.
    result = search_head(
        head,
        X_train,
        model.encode_labels(y_train),
        parse_grid(grid) if isinstance(grid, str) else grid,
        settings,
        log=log,
        label_names=model.classes_,
    )
    started = time.perf_counter()
    model.set_params(pipeline=result.pipeline)
    model = (
        model.fit(X_train, y_train)
        if result.fitted is None
        else FeatureClassifier.from_fitted(result.fitted, X_train, y_train, **model.get_params(deep=False))
    )
    refit_seconds = time.perf_counter() - started

    scored = evaluate(model, data, split)
    notes = list(result.notes) + _unseen_classes(model, data, split, log)
    info = _fit_record(head, result, scored, refit_seconds, notes, provenance(data, settings.seed))
    if settings.normalize != "none":  # the pipeline starts with it (classifiers.power_head)
        info["normalize"] = settings.normalize
    return Scored(model, info, scored.predicted, scored.proba)


def _fit_record(head, result, scored, refit_seconds: float, notes: list, origin: dict) -> dict:
    """What a saved model's .json says: its search, its held-out scores, `origin` (its features and
    libraries), its times."""
    selection = {
        0: "out-of-bag score on train, one fit per candidate",
        1: f"{result.method} search, a stratified 20% slice of train",
    }.get(result.folds, f"{result.method} search, {result.folds}-fold CV on train")
    cv = {
        "scoring": result.scoring,
        "mean": result.cv_mean,
        "std": result.cv_std,
        "folds": result.folds,
        "candidates": result.candidates,
        "evaluated": result.evaluated,
        "search": result.method,
        "seconds": round(result.seconds, 3),
    }
    return {
        "head": head.name,
        "description": head.description,
        "best_params": result.best_params,
        "selection": selection,
        "cv": cv,
        "heldout": scored.scores,
        **origin,
        "search_seconds": round(result.seconds, 3),
        "refit_seconds": round(refit_seconds, 3),
        "fit_seconds": round(result.seconds + refit_seconds, 3),
        "predict_seconds_per_image": scored.seconds_per_image,
        "notes": notes,
    }


class Evaluation(NamedTuple):
    """A fitted model on a split's held-out rows."""

    predicted: np.ndarray  # class names
    proba: np.ndarray  # in model.classes_ order
    seconds_per_image: float  # predicting
    scores: dict  # the split described, and the held-out scores: the saved record's "heldout"


def evaluate(model: FeatureClassifier, data, split) -> Evaluation:
    X_eval = take_rows(data.X, split.heldout)
    y_eval = np.asarray(data.class_names, dtype=object)[data.y[split.heldout]]
    started = time.perf_counter()
    predicted = model.predict(X_eval)
    proba = model.predict_proba(X_eval)
    seconds = (time.perf_counter() - started) / max(1, len(X_eval))
    return Evaluation(
        predicted, proba, seconds, {**split.describe(), **heldout_scores(y_eval, predicted, proba, model.classes_)}
    )


def provenance(data, seed: int) -> dict:
    """What a saved model's record says of the features it was fitted on and the libraries."""
    return {
        "class_names": data.class_names,
        "dataset": data.dataset,
        "feature_file": " + ".join(str(Path(f).resolve()) for f in data.files),
        "feature_fingerprint": data.fingerprint,
        "feature_config": data.config,
        "seed": seed,
        "versions": library_versions(MODEL_PACKAGES),
    }


def _unseen_classes(model, data, split, log) -> list[str]:
    held = set(np.asarray(data.class_names, dtype=object)[data.y[split.heldout]].tolist())
    unseen = sorted(held - set(model.classes_.tolist()))
    if not unseen:
        return []
    note = (
        f"classes {', '.join(unseen)} are in {split.name} but not in the training rows: the model cannot predict them"
    )
    log(note)
    return [note]


def fit_model(
    features=None, out=DEFAULT_OUT, clf="svm", grid=None, settings: SearchSettings | None = None, log=print, **overrides
) -> FitOutcome:
    """`cnnfeat fit`; `overrides` are SearchSettings fields (cv=3, seed=7, ...)."""
    settings = replace(settings or SearchSettings(), **overrides).check()
    get_head(clf)  # an unknown head fails before anything is read
    features_path = chosen_features(features, out, log)
    data = load_features(features_path, lazy=True)  # X stays in the file: only the rows a step needs are read
    normalized = "" if settings.normalize == "none" else f"-{settings.normalize}"  # never over the plain head's file
    model_path = models_dir(out) / f"{features_path.stem}-{clf}{normalized}.joblib"
    ensure_writable(model_path.parent)  # a read-only --out is found before the search, not after
    split = train_eval_split(data, settings.seed)
    if split.note:
        log(split.note)
    scored = fit_and_score(data, split, clf, grid, settings, log)
    model_path, json_path = save_model(scored.model, model_path, scored.info)
    return FitOutcome(model_path, json_path, scored.info, scored.info["notes"])
