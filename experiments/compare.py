"""`cnnfeat compare`: every head on the same split of the same feature file(s), one honest table."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from classifiers import HEADS, get_head, load_model, resolve_grid, save_model
from featurize import load_features
from featurize.errors import CnnfeatError

from .finetune import FINETUNE_ROW, load_finetuned_row, run_finetune
from .fit import fit_and_score, latest_features
from .metrics import bootstrap_interval, heldout_scores, mcnemar_p
from .report import write_report
from .splits import train_eval_split


@dataclass
class Row:
    """One line of the table: a head (or the fine-tuned network) scored on held-out images."""

    backbone: str
    head: str
    info: dict  # the saved model's .json: best params, CV, times...
    paths: list  # held-out image paths, in order
    truth: list  # their true class names
    predicted: list
    proba: np.ndarray | None
    classes: list
    reused: bool = False
    metrics: dict = field(default_factory=dict)

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


def parse_heads(clf: str) -> list[str]:
    names = list(HEADS) if clf in ("all", "", None) else [c.strip() for c in clf.split(",") if c.strip()]
    for name in names:
        get_head(name)
    return names


def cache_key(data, split, head: str, cv: int, scoring: str, seed: int) -> str:
    """Everything a fitted head depends on: reuse it only when all of it is unchanged."""
    stat = Path(data.path).stat()
    record = {"fingerprint": data.fingerprint, "file": [stat.st_size, stat.st_mtime_ns], "head": head,
              "grid": repr(resolve_grid(get_head(head))), "cv": cv, "scoring": scoring, "seed": seed,
              "split": split.describe(), "class_names": data.class_names}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def compare(features=None, out="artifacts", clf="all", finetune=False, refit=False, cv=5, scoring="accuracy",
            seed=0, jobs=1, finetune_options=None, progress=False, log=print) -> CompareOutcome:
    heads = parse_heads(clf)
    paths = [Path(p) for p in features] if features else [latest_features(out)]
    if not features:
        log(f"features: {paths[0]} (the newest under {Path(out, 'features')})")
    stores = [load_features(p) for p in paths]
    dataset = stores[0].dataset
    report_dir = Path(out, "reports", f"{dataset}-{'+'.join(dict.fromkeys(s.backbone for s in stores))}")
    rows, failures, notes = [], [], []
    for data in stores:
        split = train_eval_split(data, seed)
        if split.note:
            notes.append(f"{data.backbone}: {split.note}")
            log(notes[-1])
        _check_heldout(data, split, notes, log)
        eval_paths = [str(p) for p in data.paths[split.evaluate]]
        truth = list(np.asarray(data.class_names, dtype=object)[data.y[split.evaluate]])
        for head in heads:
            try:
                rows.append(_scored_row(data, split, head, eval_paths, truth, report_dir, refit, cv, scoring,
                                        seed, jobs, progress, log))
            except CnnfeatError as error:
                failures.append((data.backbone, head, str(error)))
                log(f"{data.backbone} {head}: not fitted: {error}")
        if finetune:
            run_finetune(data=data.data_root, backbone=data.backbone, out=out, seed=seed, log=log,
                         **(finetune_options or {}))
        finetuned = load_finetuned_row(out, data, eval_paths, truth, log)
        if finetuned is not None:
            rows.append(Row(data.backbone, FINETUNE_ROW, **finetuned))
    if not rows:
        raise CnnfeatError("no head could be fitted: " + "; ".join(f"{h}: {r}" for _, h, r in failures))
    _score_rows(rows, seed)
    markdown = write_report(report_dir, rows, failures, notes, meta={
        "dataset": dataset, "feature_files": [str(p) for p in paths], "seed": seed, "cv": cv, "scoring": scoring})
    return CompareOutcome(report_dir, markdown, rows, failures, notes)


def _check_heldout(data, split, notes, log):
    held = set(data.y[split.evaluate].tolist())
    missing = [c for i, c in enumerate(data.class_names) if i not in held]
    if missing:
        notes.append(f"{data.backbone}: class {', '.join(missing)} has no {split.name} images: its recall is "
                     f"unmeasured, and balanced accuracy and macro-F1 cover the other classes only")
        log(notes[-1])


def _scored_row(data, split, head, eval_paths, truth, report_dir, refit, cv, scoring, seed, jobs, progress,
                log) -> Row:
    key = cache_key(data, split, head, cv, scoring, seed)
    model_path = report_dir / "models" / f"{data.backbone}-{head}.joblib"
    json_path = model_path.with_suffix(".json")
    info = json.loads(json_path.read_text()) if json_path.is_file() else {}
    if not refit and info.get("cache_key") == key:
        model = load_model(model_path)
        X_eval = data.X[split.evaluate]
        log(f"{data.backbone} {head}: nothing changed, reusing the fitted model ({model_path.name}; --refit "
            f"searches again)")
        return Row(data.backbone, head, info, eval_paths, truth, list(model.predict(X_eval)),
                   model.predict_proba(X_eval), list(model.classes_), reused=True)
    scored = fit_and_score(data, split, head, cv=cv, scoring=scoring, jobs=jobs, seed=seed, progress=progress, log=log)
    save_model(scored.model, model_path, {**scored.info, "cache_key": key})
    return Row(data.backbone, head, scored.info, eval_paths, truth, list(scored.predicted), scored.proba,
               list(scored.model.classes_))


def _score_rows(rows, seed):
    """Metrics, bootstrap interval, and McNemar against the best row, on the images all rows share."""
    for row in rows:
        row.metrics = heldout_scores(row.truth, row.predicted, row.proba,
                                     np.asarray(row.classes, dtype=object) if row.proba is not None else None)
        row.metrics["ci_low"], row.metrics["ci_high"] = bootstrap_interval(row.correct, seed)
    rows.sort(key=lambda r: (-r.metrics["accuracy"], -r.metrics["balanced_accuracy"], r.backbone, r.head))
    best = rows[0]
    best_correct = dict(zip(best.paths, best.correct))
    for row in rows:
        shared = [(best_correct[p], c) for p, c in zip(row.paths, row.correct) if p in best_correct]
        row.metrics["mcnemar_p_vs_best"] = None if row is best else mcnemar_p(*zip(*shared)) if shared else None
