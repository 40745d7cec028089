"""A fitted head as one linear layer on the raw pooled vector, where it is one: scores = x W^T + b,
the class with the highest score is the prediction, and softmax(scores) its probabilities.

What an exact class activation map needs (`explain`): with the pooled vector the spatial mean of
the last feature map F, a class's score is the spatial mean of sum_c W[k, c] F[c] plus b[k].
"""
from __future__ import annotations

import numpy as np


def linear_form(pipeline) -> tuple[np.ndarray, np.ndarray] | None:
    """(W (classes x D), b) of a fitted scaler + linear classifier pipeline; None for any other head
    (forests, kernels, calibrated or fused pipelines, ensembles)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from .linear import TorchLinearClassifier

    if not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 2:
        return None
    scale, clf = pipeline.steps[0][1], pipeline.steps[1][1]
    if not isinstance(clf, (LogisticRegression, TorchLinearClassifier)):
        return None
    W, b = np.asarray(clf.coef_, np.float64), np.asarray(clf.intercept_, np.float64)
    if len(W) == 1:  # scikit-learn's binary form, sigmoid(w x + b) = softmax([-(w x + b), w x + b] / 2)[1]
        W, b = np.vstack([-W, W]) / 2, np.concatenate([-b, b]) / 2
    if isinstance(scale, StandardScaler):  # (x - mean) / scale, folded into the layer
        W = W / scale.scale_
        b = b - W @ scale.mean_
    elif scale not in (None, "passthrough"):
        return None
    return W, b
