"""A fitted head as one linear layer on the raw pooled vector, where it is one: class scores
x W^T + b whose largest is the prediction (for logreg and the torch `linear` head their softmax is
the probability; for a two-class linear SVM the scores are -/+ half its decision function, which
its calibration maps to probabilities monotonically).

What an exact class activation map needs (`explain`): with the pooled vector the spatial mean of
the last feature map F, a class's score is the spatial mean of sum_c W[k, c] F[c] plus b[k].
"""

from __future__ import annotations

import numpy as np


def linear_form(pipeline) -> tuple[np.ndarray, np.ndarray] | None:
    """(W (classes x D), b) of a fitted scaler + linear classifier pipeline; None for any other head
    (forests, kernels, a linear SVM of more than two classes, fused pipelines, ensembles)."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 2:
        return None
    scale, clf = pipeline.steps[0][1], pipeline.steps[1][1]
    layer = _layer(clf)
    if layer is None:
        return None
    W, b = one_row_per_class(*layer)
    if isinstance(scale, StandardScaler):  # (x - mean) / scale, folded into the layer
        W = W / scale.scale_
        b = b - W @ scale.mean_
    elif scale not in (None, "passthrough"):
        return None
    return W, b


def one_row_per_class(W: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A linear classifier's (coef, intercept) with a row per class. scikit-learn's binary form
    keeps one (class 1 scores w x + b over class 0): split it -/+ in halves."""
    if len(W) == 1:
        return np.vstack([-W, W]) / 2, np.concatenate([-b, b]) / 2
    return W, b


def _layer(clf):
    """(coef, intercept) of a linear classifier, as arrays; None for another kind."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression

    from .kernel_svm import PrecomputedKernelSVC
    from .linear import TorchLinearClassifier

    if isinstance(clf, (LogisticRegression, TorchLinearClassifier)):
        return np.asarray(clf.coef_, np.float64), np.asarray(clf.intercept_, np.float64)
    if isinstance(clf, CalibratedClassifierCV) and len(clf.calibrated_classifiers_) == 1:
        svm = clf.calibrated_classifiers_[0].estimator
        if isinstance(svm, PrecomputedKernelSVC) and svm.kernel == "linear" and len(svm.svc_.classes_) == 2:
            svc = svm.as_svc()  # one hyperplane: its coef_ is the primal weight vector
            return np.asarray(svc.coef_, np.float64), np.asarray(svc.intercept_, np.float64)
    return None
