"""`cnnfeat compare`: every head on the same split of the same feature file(s), one honest table."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from classifiers import (
    HEADS,
    SearchSettings,
    ensemble_model,
    get_head,
    load_model,
    parse_ensembles,
    resolve_grid,
    save_model,
)
from common.errors import CnnfeatError, OutputError
from common.files import ensure_writable
from common.hashing import json_key
from common.locks import exclusive
from common.names import safe_name
from featurize import fuse_features, library_versions, load_features

from .finetune import FINETUNE_ROW, load_finetuned_row, run_finetune
from .fit import MODEL_PACKAGES, Scored, evaluate, fit_and_score, latest_features, provenance
from .metrics import bootstrap_interval, heldout_scores, mcnemar_p
from .report import Embedding, write_report
from .splits import train_eval_split


@dataclass
class Row:
    """One line of the table: a head (or the fine-tuned network) scored on held-out images."""

    backbone: str  # the feature file's label: backbone, plus its weights tag when not pretrained
    head: str
    info: dict  # the saved model's .json: best params, CV, times...
    paths: list  # held-out image paths, in order
    truth: list  # their true class names
    predicted: list
    proba: np.ndarray | None
    classes: list
    reused: bool = False
    metrics: dict = field(default_factory=dict)
    model: object = None  # the fitted FeatureClassifier (not the fine-tuned network's row)

    @property
    def correct(self) -> np.ndarray:
        return np.asarray(self.predicted, dtype=object) == np.asarray(self.truth, dtype=object)


@dataclass
class CompareOutcome:
    report_dir: Path
    markdown: str
    rows: list
    failures: list  # (backbone, head, reason)
    notes: list


def parse_heads(clf: str | None) -> list[str]:
    names = list(HEADS) if clf in ("all", None) else [c.strip() for c in clf.split(",") if c.strip()]
    if not names:
        raise CnnfeatError(f"--clf {clf!r}: no head named; give all, or a comma list of {', '.join(HEADS)}")
    for name in names:
        get_head(name)
    return names


def feature_label(data) -> str:
    """What tells a feature file apart within one dataset: its name less the dataset, e.g.
    `efficientnet_lite0` or `efficientnet_lite0-ft1a2b3c4d` (fine-tuned weights)."""
    if data.parts:  # fused features: their parts' labels joined
        return "+".join(feature_label(part) for part in data.parts)
    stem = Path(data.path).stem
    return stem[len(data.dataset) + 1:] if stem.startswith(data.dataset + "-") else safe_name(stem)


def cache_key(data, split, head: str, settings: SearchSettings) -> str:
    """Everything a fitted head's numbers depend on: reuse it only when all of it is unchanged."""
    stats = [Path(f).stat() for f in data.files]
    spec = get_head(head)
    record = {"fingerprint": data.fingerprint, "file": [[stat.st_size, stat.st_mtime_ns] for stat in stats], "head": head,
              "grid": repr(resolve_grid(spec)), **settings.result_settings(), "method": settings.method_for(spec, len(split.train)),
              "pipeline": {k: repr(v) for k, v in spec.build(settings.seed).get_params(deep=True).items()},
              "calibrate": spec.calibrate, "validation": spec.validation, "split": split.describe(),
              "class_names": data.class_names, "versions": library_versions(MODEL_PACKAGES)}
    return json_key(record)


def compare(features=None, out="artifacts", clf="all", finetune=False, refit=False, fuse="concat", ensemble="vote",
            settings: SearchSettings | None = None, finetune_options=None, log=print, **overrides) -> CompareOutcome:
    """`cnnfeat compare`; `overrides` are SearchSettings fields (cv=3, seed=7, jobs=1, ...)."""
    settings = replace(settings or SearchSettings(), **overrides).check()
    heads, ensembles = parse_heads(clf), parse_ensembles(ensemble)  # wrong names fail before anything is written
    paths = [Path(p) for p in features] if features else [latest_features(out)]
    if not features:
        log(f"features: {paths[0]} (the newest under {Path(out, 'features')})")
    stores = [load_features(p) for p in paths]
    report_dir = ensure_writable(Path(out, "reports", _report_name(stores)))
    with exclusive(report_dir, "cnnfeat compare"):  # one writer per report folder: its rows and models agree
        return _compare_into(report_dir, stores, paths, out, heads, clf, finetune, refit, fuse, ensembles, settings,
                             finetune_options, log)


def _compare_into(report_dir, stores, paths, out, heads, clf, finetune, refit, fuse, ensembles, settings,
                  finetune_options, log) -> CompareOutcome:
    seed = settings.seed
    rows, failures, notes = [], [], []
    fused = None
    if len(stores) > 1 and fuse != "none":  # joined first: files that cannot be are refused before any fit
        fused, fuse_notes = fuse_features(stores, log)
        notes += fuse_notes
    run = HeadRun(heads, clf, report_dir, refit, settings, ensembles, notes, failures, log)
    splits = {}  # feature label -> (its features, its split)
    for data in stores:
        label = feature_label(data)
        split = _split(data, label, run)
        splits[label] = (data, split)
        rows += _head_rows(data, label, split, run)
        if finetune and data.weights_source in ("", "random"):
            run_finetune(data=data.data_root, backbone=data.backbone, weights=data.weights_source or None, out=out,
                         seed=seed, log=log, **(finetune_options or {}))
        try:
            finetuned = load_finetuned_row(out, data, *_heldout(data, split), log)
        except CnnfeatError as error:
            failures.append((label, FINETUNE_ROW, str(error)))
            log(f"{label} {FINETUNE_ROW}: left out: {error}")
            finetuned = None
        if finetuned is not None:
            rows.append(Row(label, FINETUNE_ROW, **finetuned))
    if fused is not None:
        label = feature_label(fused)
        splits[label] = (fused, _split(fused, label, run))
        rows += _head_rows(fused, label, splits[label][1], run)
    if not rows:
        raise CnnfeatError("no head could be fitted: " + "; ".join(f"{h}: {r}" for _, h, r in failures))
    notes += [f"{row.backbone} {row.head}: {note.removeprefix(row.head + ': ')}" for row in rows
              for note in row.info.get("notes", [])]
    _score_rows(rows, settings.scoring, seed)
    markdown = write_report(report_dir, rows, failures, notes, meta={
        "dataset": stores[0].dataset, "feature_files": [str(p) for p in paths], **settings.result_settings()},
        embedding=_embedding(rows, splits))
    return CompareOutcome(report_dir, markdown, rows, failures, notes)


class HeadRun(NamedTuple):
    """What one compare fits every feature file's heads with, and where it collects what it says."""

    heads: list
    clf: str
    report_dir: Path
    refit: bool
    settings: SearchSettings
    ensembles: list  # of classifiers.ensemble.ENSEMBLES
    notes: list
    failures: list  # (feature label, head, reason)
    log: object


def _split(data, label: str, run: HeadRun):
    """The feature file's train/held-out split, with what is worth saying about it."""
    split = train_eval_split(data, run.settings.seed)
    if split.note:
        run.notes.append(f"{label}: {split.note}")
        run.log(run.notes[-1])
    _check_heldout(data, label, split, run.notes, run.log)
    return split


def _embedding(rows, splits) -> Embedding | None:
    """The held-out vectors of the best row that was fitted on vectors, with its predictions."""
    best = next((row for row in rows if row.model is not None), None)
    if best is None:
        return None
    data, split = splits[best.backbone]
    return Embedding(data.X[split.evaluate], best.truth, best.predicted,
                     f"{best.backbone}; mistakes of its {best.head}, the best row on them")


def _head_rows(data, label: str, split, run: HeadRun) -> list[Row]:
    """Every asked head searched, fitted and scored on one feature file's split (or reused)."""
    heldout = _heldout(data, split)
    rows = []
    for head in run.heads:
        if run.clf in ("all", "", None) and _too_many_rows(head, len(split.train), label, run.notes, run.log):
            continue
        try:
            rows.append(_scored_row(data, label, split, head, heldout, run))
        except OutputError:
            raise  # the machine's refusal to write (a full disk), not this head's: the run stops
        except CnnfeatError as error:
            run.failures.append((label, head, str(error)))
            run.log(f"{label} {head}: not fitted: {error}")
    return rows + _ensemble_rows(data, label, split, heldout, rows, run)


def _heldout(data, split) -> tuple[list, list]:
    """(paths, true class names) of the split's held-out rows."""
    return ([str(p) for p in data.paths[split.evaluate]],
            list(np.asarray(data.class_names, dtype=object)[data.y[split.evaluate]]))


def _too_many_rows(head: str, rows: int, label: str, notes: list, log) -> bool:
    """`--clf all` leaves out a head whose default grid would take hours at this size, and says so."""
    limit = get_head(head).scales_badly_above
    if limit is None or rows <= limit:
        return False
    notes.append(f"{label}: {head} left out of --clf all: {rows:,} training rows is past {limit:,}, where its "
                 f"search takes hours (its cost grows with rows squared); --clf {head} runs it anyway")
    log(notes[-1])
    return True


def _report_name(stores) -> str:
    """One store: its file name; several: the dataset and each one's label. Refuses a mix of datasets
    (the heads would be ranked on different images) and two files that cannot be told apart."""
    datasets = sorted({s.dataset for s in stores})
    if len(datasets) > 1:
        raise CnnfeatError(f"compare ranks heads on one dataset's held-out images; these feature files are of "
                           f"{len(datasets)} datasets ({', '.join(datasets)})")
    labels = [feature_label(s) for s in stores]
    if len(set(labels)) < len(labels):
        raise CnnfeatError(f"two feature files with the same name: {', '.join(str(s.path) for s in stores)}")
    if len(stores) == 1:
        return Path(stores[0].path).stem
    name = f"{datasets[0]}-{'+'.join(labels)}"
    return name if len(name) <= 150 else f"{datasets[0]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _check_heldout(data, label, split, notes, log):
    held = set(data.y[split.evaluate].tolist())
    missing = [c for i, c in enumerate(data.class_names) if i not in held]
    if missing:
        notes.append(f"{label}: class {', '.join(missing)} has no {split.name} images: its recall is "
                     f"unmeasured, and balanced accuracy and macro-F1 cover the other classes only")
        log(notes[-1])


def _scored_row(data, label, split, head, heldout, run: HeadRun) -> Row:
    key = cache_key(data, split, head, run.settings)
    return _saved_or_fitted(data, label, split, head, heldout, run, key,
                            lambda: fit_and_score(data, split, head, settings=run.settings, log=run.log))


def _ensemble_rows(data, label, split, heldout, members: list[Row], run: HeadRun) -> list[Row]:
    """The asked ensembles of the rows' fitted heads (all on this feature file's training rows)."""
    members = [row for row in members if hasattr(row.model.pipeline_, "predict_proba")]
    if len(members) < 2:
        return []
    rows = []
    for kind in run.ensembles:
        record = {"ensemble": kind, "members": sorted(row.info["cache_key"] for row in members),
                  **run.settings.result_settings()}
        key = json_key(record)
        try:
            rows.append(_saved_or_fitted(data, label, split, kind, heldout, run, key,
                                         lambda: _fit_ensemble(kind, data, split, members, run)))
        except OutputError:
            raise
        except CnnfeatError as error:
            run.failures.append((label, kind, str(error)))
            run.log(f"{label} {kind}: not fitted: {error}")
    return rows


def _fit_ensemble(kind, data, split, members: list[Row], run: HeadRun) -> Scored:
    names = [row.head for row in members]
    run.log(f"{kind}: " + (f"soft vote of {', '.join(names)}" if kind == "vote" else
                           f"logistic regression on the out-of-fold probabilities of {', '.join(names)} "
                           f"({run.settings.cv} folds; each head fitted {run.settings.cv + 1} more times)"))
    started = time.perf_counter()
    model = ensemble_model(kind, {row.head: row.model for row in members}, data.X[split.train], data.y[split.train],
                           run.settings.cv, run.settings.seed, run.settings.jobs)
    seconds = time.perf_counter() - started
    scored = evaluate(model, data, split)
    selection = ("mean of the heads' probabilities" if kind == "vote" else
                 f"logistic regression on {run.settings.cv}-fold out-of-fold probabilities on train")
    info = {"head": kind, "members": names, "best_params": {"members": "+".join(names)}, "selection": selection, "heldout": scored.heldout,
            **provenance(data, run.settings.seed), "fit_seconds": round(seconds, 3),
            "predict_seconds_per_image": scored.seconds_per_image, "notes": []}
    return Scored(model, info, scored.predicted, scored.proba)


def _saved_or_fitted(data, label, split, name: str, heldout, run: HeadRun, key: str, fit) -> Row:
    """The row of model `name`: the one saved under this cache key when there is one, else `fit()`'s
    (a Scored), saved for next time."""
    model_path = run.report_dir / "models" / f"{label}-{name}.joblib"
    reused = None if run.refit else _reuse(model_path, key, name, data.fingerprint, run.log)
    if reused is not None:
        model, info = reused
        run.log(f"{label} {name}: nothing changed, reusing the fitted model ({model_path.name}; --refit "
                f"searches again)")
        X_eval = data.X[split.evaluate]
        predicted, proba = model.predict(X_eval), model.predict_proba(X_eval)
    else:
        scored = fit()
        model, info, predicted, proba = scored.model, {**scored.info, "cache_key": key}, scored.predicted, scored.proba
        save_model(model, model_path, info)
    return Row(label, name, info, *heldout, list(predicted), proba, list(model.classes_), reused=reused is not None,
               model=model)


def _reuse(model_path: Path, key: str, name: str, fingerprint: str, log):
    """(model, info) saved by an earlier run with this cache key, or None: then the head is fitted
    again (a missing, changed or half-saved model file included, with a line saying so). The model
    must be the one its record describes (its sha256), of this head, on these features."""
    json_path = model_path.with_suffix(".json")
    try:
        info = json.loads(json_path.read_text()) if json_path.is_file() else {}
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or info.get("cache_key") != key:
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


def _score_rows(rows, scoring: str, seed: int):
    """Metrics and bootstrap interval per row; rank by `scoring` (the score the searches maximised);
    McNemar against the best row, on the images both scored."""
    for row in rows:
        row.metrics = heldout_scores(row.truth, row.predicted, row.proba,
                                     np.asarray(row.classes, dtype=object) if row.proba is not None else None)
        row.metrics["ci_low"], row.metrics["ci_high"] = bootstrap_interval(row.correct, seed)
    others = [k for k in ("accuracy", "balanced_accuracy", "f1_macro") if k != scoring]
    rows.sort(key=lambda r: (-r.metrics[scoring], *(-r.metrics[k] for k in others), r.backbone, r.head))
    best = rows[0]
    best_correct = dict(zip(best.paths, best.correct))
    for row in rows:
        shared = [(best_correct[p], c) for p, c in zip(row.paths, row.correct) if p in best_correct]
        row.metrics["mcnemar_p_vs_best"] = None if row is best else mcnemar_p(*zip(*shared)) if shared else None
