"""The rows of `compare`'s table, scored and ranked: held-out metrics, a bootstrap interval of
accuracy, and McNemar's test of each row against the best one."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .metrics import bootstrap_interval, heldout_scores, mcnemar_p

RANKED_BY = ("accuracy", "balanced_accuracy", "f1_macro")  # the chosen score first, then these to break ties


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
    model_path: str | None = None  # the saved model (.joblib) that predicts as this row did

    @property
    def correct(self) -> np.ndarray:
        return np.asarray(self.predicted, dtype=object) == np.asarray(self.truth, dtype=object)


def score_rows(rows: list[Row], scoring: str, seed: int) -> None:
    """Metrics and bootstrap interval per row; sort the rows best first by `scoring` (the score the
    searches maximised); McNemar against the best row, on the images both scored."""
    for row in rows:
        classes = np.asarray(row.classes, dtype=object) if row.proba is not None else None
        row.metrics = heldout_scores(row.truth, row.predicted, row.proba, classes)
        row.metrics["ci_low"], row.metrics["ci_high"] = bootstrap_interval(row.correct, seed)
    others = [k for k in RANKED_BY if k != scoring]
    rows.sort(key=lambda r: (-r.metrics[scoring], *(-r.metrics[k] for k in others), r.backbone, r.head))
    best_correct = dict(zip(rows[0].paths, rows[0].correct))
    rows[0].metrics["mcnemar_p_vs_best"] = None
    for row in rows[1:]:
        row.metrics["mcnemar_p_vs_best"] = _mcnemar_against(best_correct, row)


def _mcnemar_against(best_correct: dict, row: Row) -> float | None:
    """McNemar's p of `row` against the best row ({path: correct}) on the images both scored; None
    when they share none."""
    shared = [(best_correct[p], c) for p, c in zip(row.paths, row.correct) if p in best_correct]
    return mcnemar_p(*zip(*shared)) if shared else None
