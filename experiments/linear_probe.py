"""The fine-tune's starting head: a logistic regression on the frozen network's own pooled vectors
of the training images (a linear probe), put into the new linear layer before any backbone weight
moves. Starting from a good head keeps the first gradients from tearing up the pretrained features
that a random head's large errors would (linear-probe-then-fine-tune, Kumar et al. 2022)."""

from __future__ import annotations

import numpy as np

from common.errors import CnnfeatError

PROBE_FOLDS = 3  # the probe's C is chosen by this many folds of the training images
PROBE_CS = [0.001, 0.01, 0.1, 1.0]


def probe_head(extractor, images, rows: list[int], prep, compute, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(W, b, C): a logistic regression on the pooled vectors of the centre crops of the images
    `rows`, its C chosen by PROBE_FOLDS-fold cross-validation, as one linear layer on the raw
    vectors."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from classifiers import one_row_per_class

    from .finetune_data import forward_rows

    _, labels, vectors = forward_rows(extractor, images, rows, prep, compute)
    if sorted(set(labels)) != list(range(len(images.class_names))):
        raise CnnfeatError("the linear probe needs readable training images of every class: use --head-init random")
    mean, spread = probe_scaling(vectors)
    folds = StratifiedKFold(min(PROBE_FOLDS, min(np.bincount(labels))), shuffle=True, random_state=seed)
    search = GridSearchCV(LogisticRegression(max_iter=5000, random_state=seed), {"C": PROBE_CS}, cv=folds, n_jobs=1)
    search.fit((vectors - mean) / spread, np.asarray(labels))
    W, b = one_row_per_class(search.best_estimator_.coef_, search.best_estimator_.intercept_)
    W = W / spread  # (x - mean) / spread, folded into the layer
    return W.astype(np.float32), (b - W @ mean).astype(np.float32), float(search.best_params_["C"])


def probe_scaling(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, spread) the probe standardises by: each feature's spread floored at the median one.
    Standardised as it is, a feature that hardly varies on these images gets a weight so large,
    once folded into the layer, that the first steps of fine-tuning, which move it, blow the loss
    up (digits, every block unfrozen: a loss of 1,265 and 0.12 accuracy after an epoch). Not
    standardised at all, the search converges slowly (27 s a fit there, 2-4 s floored)."""
    spread = vectors.std(0)
    return vectors.mean(0), np.maximum(spread, np.median(spread), dtype=np.float64)
