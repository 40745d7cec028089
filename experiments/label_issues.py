"""Images whose given label is likely wrong, found by cleanlab from probabilities no model computed
after seeing the image: out-of-fold probabilities for the training images (the head, with the
parameters its search chose, fitted K times on the other folds), and those of the model fitted on
all training images for the held-out ones."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from classifiers import SearchSettings, cross_validation_backend, search_head
from common.errors import CnnfeatError, error_line

from .audit_checks import Finding


class Probabilities(NamedTuple):
    train: np.ndarray  # (n_train, classes) out of fold
    heldout: np.ndarray  # (n_heldout, classes) from the model fitted on every training row
    best_params: dict


def label_findings(data, split, clf: str, settings: SearchSettings, log) -> tuple[list, np.ndarray, list[str]]:
    """Likely wrong labels: training rows by out-of-fold probabilities, held-out rows by the model
    fitted on train. Returns them, every row's probabilities (the report's typical images), and what
    the report should say of the check."""
    classes = len(data.class_names)
    found = out_of_fold(data.X, data.y, split, data.class_names, clf, settings, log)
    probabilities = np.zeros((len(data.y), classes))
    probabilities[split.train], probabilities[split.heldout] = found.train, found.heldout
    trained = np.unique(data.y[split.train])
    heldout = split.heldout[np.isin(data.y[split.heldout], trained)]  # a class never trained on: no verdict
    notes = [f"{clf} with {found.best_params}, {settings.cv}-fold out-of-fold probabilities on train"]
    if len(heldout) < len(split.heldout):
        notes.append(f"{len(split.heldout) - len(heldout)} held-out images of classes absent from train: not checked")
    findings = []
    for rows in (split.train, heldout):
        for row in rows[ranked_label_issues(data.y[rows], probabilities[rows])]:
            given = probabilities[row, data.y[row]]
            findings.append(Finding(int(row), "label", float(1 - given), suggested=int(probabilities[row].argmax())))
    return findings, probabilities, notes


def out_of_fold(X, y, split, class_names: list, clf: str, settings: SearchSettings, log) -> Probabilities:
    """The head searched on the training rows, then its chosen pipeline fitted fold by fold (each
    training row scored by the fit that left it out) and once on them all (the held-out rows)."""
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    classes = len(class_names)
    X_train, y_train = np.asarray(X[split.train]), y[split.train]
    _check_folds(y_train, settings.cv, class_names)
    try:
        result = search_head(clf, X_train, y_train, None, settings, log=log)
    except CnnfeatError as error:  # audit takes no --grid: say what it does take
        raise CnnfeatError(str(error).replace("check --grid", "lower --cv or take another --clf")) from None
    folds = StratifiedKFold(settings.cv, shuffle=True, random_state=settings.seed)
    try:
        with cross_validation_backend(settings.ray):  # --ray: the K out-of-fold fits too
            oof = cross_val_predict(
                clone(result.pipeline), X_train, y_train, cv=folds, method="predict_proba", n_jobs=settings.jobs
            )
    except ValueError as error:  # e.g. a calibrated head's own folds inside too small a class
        raise CnnfeatError(
            f"the label check cannot fit {clf} on {settings.cv}-fold parts of train ({error_line(error)}); "
            "lower --cv or take another --clf"
        ) from None
    fitted = clone(result.pipeline).fit(X_train, y_train)
    heldout = np.zeros((0, classes))
    if len(split.heldout):
        heldout = _all_classes(fitted.predict_proba(np.asarray(X[split.heldout])), fitted.classes_, classes)
    return Probabilities(_all_classes(oof, np.unique(y_train), classes), heldout, result.best_params)


def _check_folds(y_train: np.ndarray, folds: int, class_names: list) -> None:
    classes = len(class_names)
    counts = np.bincount(y_train, minlength=classes)
    present = counts[counts > 0]
    if len(present) < 2:
        raise CnnfeatError("the label check needs training images of at least two classes")
    if present.min() < folds:
        raise CnnfeatError(
            f"the label check needs at least --cv {folds} training images per class; the smallest class, "
            f"{class_names[int(np.flatnonzero(counts == present.min())[0])]}, has {present.min()} (lower --cv, or "
            "add images)"
        )


def _all_classes(proba: np.ndarray, present: np.ndarray, classes: int) -> np.ndarray:
    """Probabilities with one column per class of the store (a class absent from training: zeros)."""
    full = np.zeros((len(proba), classes))
    full[:, present] = proba
    return full


def ranked_label_issues(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Rows whose label is likely wrong, most suspicious first (lowest probability of the given label):
    cleanlab's `predicted_neq_given`, the rows a model that never saw them puts in another class.
    Chosen on planted faults (tests/experiments/test_audit.py, docs/audit.md): on hymenoptera with 16
    labels moved it found 13 in 23 training rows, where cleanlab's default filter (prune_by_noise_rate)
    found 10 in 13. An audit's list is read by a person: a missed wrong label costs more than a look
    at a right one."""
    from cleanlab.filter import find_label_issues

    if len(labels) == 0:
        return np.zeros(0, dtype=np.int64)
    if len(np.unique(labels)) < 2:  # cleanlab wants two classes; its rule, written out, needs none
        confidence = probabilities[np.arange(len(labels)), labels]
        wrong = np.flatnonzero(probabilities.argmax(axis=1) != labels)
        return wrong[np.argsort(confidence[wrong], kind="stable")]
    found = find_label_issues(
        labels, probabilities, filter_by="predicted_neq_given", return_indices_ranked_by="self_confidence"
    )
    return np.asarray(found, dtype=np.int64)
