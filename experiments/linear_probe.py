"""The fine-tune's starting head: a logistic regression on the frozen network's own pooled vectors
of the training images (a linear probe), put into the new linear layer before any backbone weight
moves. Starting from a good head keeps the first gradients from tearing up the pretrained features
that a random head's large errors would (linear-probe-then-fine-tune, Kumar et al. 2022)."""

from __future__ import annotations

import numpy as np

from common.errors import CnnfeatError

PROBE_FOLDS = 3  # the probe's C is chosen by this many folds of the training images
PROBE_CS = [0.001, 0.01, 0.1, 1.0]
SMALLEST_SPREAD = 1e-6  # where most features are constant (the median spread 0), no division by 0
UNSEARCHED_C = 0.1  # where a class has a single training image, there are no folds to choose C with


def probe_head(extractor, images, rows: list[int], prep, compute, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(W, b, C): a logistic regression on the pooled vectors of the centre crops of the images
    `rows`, its C chosen by PROBE_FOLDS-fold cross-validation (UNSEARCHED_C where a class has one
    image), as one linear layer on the raw vectors."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from classifiers import one_row_per_class

    from .finetune_data import forward_rows

    _, labels, vectors = forward_rows(extractor, images, rows, prep, compute)
    if sorted(set(labels)) != list(range(len(images.class_names))):
        raise CnnfeatError(
            "the linear probe that starts the fine-tune needs a readable training image of every class "
            "(finetune --head-init random starts without one)"
        )
    mean, spread = probe_scaling(vectors)
    probe, scaled = LogisticRegression(C=UNSEARCHED_C, max_iter=5000, random_state=seed), (vectors - mean) / spread
    smallest = min(np.bincount(labels))
    if smallest >= 2:
        folds = StratifiedKFold(min(PROBE_FOLDS, smallest), shuffle=True, random_state=seed)
        probe = GridSearchCV(probe, {"C": PROBE_CS}, cv=folds, n_jobs=1).fit(scaled, labels).best_estimator_
    else:
        probe.fit(scaled, labels)
    W, b = one_row_per_class(probe.coef_, probe.intercept_)
    W = W / spread  # (x - mean) / spread, folded into the layer
    return W.astype(np.float32), (b - W @ mean).astype(np.float32), float(probe.C)


def probe_scaling(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, spread) the probe standardises by: each feature's spread floored at the median one.
    Standardised as it is, a feature that hardly varies on these images gets a weight so large,
    once folded into the layer, that the first steps of fine-tuning, which move it, blow the loss
    up (digits, every block unfrozen: a loss of 1,265 and 0.12 accuracy after an epoch). Not
    standardised at all, the search converges slowly (27 s a fit there, 2-4 s floored)."""
    spread = vectors.std(0, dtype=np.float64)
    return vectors.mean(0, dtype=np.float64), np.maximum(spread, max(np.median(spread), SMALLEST_SPREAD))
