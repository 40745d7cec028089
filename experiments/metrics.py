"""Held-out scores, from scikit-learn's metrics."""
from __future__ import annotations

import numpy as np


def heldout_scores(y_true, y_pred, proba=None, classes=None) -> dict:
    """accuracy, balanced accuracy, macro-F1, and log-loss where probabilities are given."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, log_loss

    y_true, y_pred = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    scores = {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro")),
        "log_loss": None,
    }
    if proba is not None and set(y_true.tolist()) <= set(classes.tolist()):
        scores["log_loss"] = float(log_loss(y_true, proba, labels=list(classes)))
    return scores
