"""Held-out scores, from scikit-learn's metrics."""

from __future__ import annotations

import warnings

import numpy as np


def heldout_scores(y_true, y_pred, proba=None, classes=None) -> dict:
    """accuracy, balanced accuracy, macro-F1, and log-loss where probabilities are given."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, log_loss

    y_true, y_pred = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    with warnings.catch_warnings():  # a class absent from the held-out rows is reported as a note instead
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced = float(balanced_accuracy_score(y_true, y_pred))
    scores = {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": balanced,
        "f1_macro": float(f1_score(y_true, y_pred, average="macro")),
        "log_loss": None,
    }
    if proba is not None and set(y_true.tolist()) <= set(classes.tolist()):
        proba = np.asarray(proba, dtype=np.float64)  # rows off 1 by float32 rounding (a vote of float32 heads)
        # log_loss pairs sorted labels with proba's columns: named classes not in sorted order
        # ("2" before "10") would be scored against the wrong column, so score column numbers
        column = {name: i for i, name in enumerate(classes.tolist())}
        y_column = np.array([column[name] for name in y_true.tolist()])
        scores["log_loss"] = float(
            log_loss(y_column, proba / proba.sum(axis=1, keepdims=True), labels=np.arange(len(column)))
        )
    return scores


def bootstrap_interval(correct, seed: int = 0, resamples: int = 2000, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of accuracy from per-image correctness (resampling images).

    A resample of n images with replacement holds Binomial(n, k/n) correct ones (k: correct in
    all), so the resamples are drawn as counts: memory grows with `resamples`, not resamples x n."""
    correct = np.asarray(correct, dtype=bool)
    if not len(correct):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = rng.binomial(len(correct), correct.mean(), size=resamples) / len(correct)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def mcnemar_p(correct_a, correct_b) -> float:
    """Exact McNemar test (two-sided binomial on the discordant pairs) for two classifiers scored on
    the same images; 1.0 when they never disagree."""
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)
