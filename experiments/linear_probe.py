"""The fine-tune's starting head: a logistic regression on the frozen network's own pooled vectors
of the training images (a linear probe), put into the new linear layer before any backbone weight
moves. Starting from a good head keeps the first gradients from tearing up the pretrained features
that a random head's large errors would (linear-probe-then-fine-tune, Kumar et al. 2022)."""

from __future__ import annotations

import numpy as np

from common.errors import CnnfeatError

PROBE_FOLDS = 3  # the probe's C is chosen by this many folds of the training images


def probe_head(extractor, images, rows: list[int], prep, compute, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(W, b, C): cnnfeat's logreg head (standardised), its C chosen by PROBE_FOLDS-fold
    cross-validation, fitted on the centre crops of the images `rows` and folded into one linear
    layer on the raw pooled vector."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from classifiers import get_head, linear_form
    from classifiers.heads import C_DECADES

    from .finetune_data import forward_rows

    _, labels, vectors = forward_rows(extractor, images, rows, prep, compute)
    classes = len(images.class_names)
    if sorted(set(labels)) != list(range(classes)):
        raise CnnfeatError("the linear probe needs readable training images of every class: use --head-init random")
    folds = StratifiedKFold(min(PROBE_FOLDS, min(np.bincount(labels))), shuffle=True, random_state=seed)
    search = GridSearchCV(get_head("logreg").build(seed), {"clf__C": C_DECADES}, cv=folds, n_jobs=1)
    search.fit(vectors, np.asarray(labels))
    W, b = linear_form(search.best_estimator_)
    return W.astype(np.float32), b.astype(np.float32), float(search.best_params_["clf__C"])
