"""Standardisation that fits on a million rows without copying them three times."""

from __future__ import annotations

import numpy as np
from scipy.sparse import issparse
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data

FIT_BYTES = 64 << 20  # rows per partial fit: about this many bytes of them


class ChunkedStandardScaler(StandardScaler):
    """scikit-learn's StandardScaler, its mean and variance accumulated over chunks of rows with
    its own `partial_fit`. A one-shot fit of float32 rows makes temporaries of about three times
    their size (the rows minus their mean in float64, and a float copy of the NaN mask): 13 GB beside
    a million 1,280-wide rows. Chunked, those temporaries are one chunk's. With one chunk (up to
    FIT_BYTES of rows) it is exactly StandardScaler's fit; with more, the same statistics up to
    rounding (Chan's merge of partial means and variances).

    `smallest_scale`: each feature's scale is at least this fraction of the median feature's. A
    pooled CNN channel that fires on one training image has a spread near 0; divided by it, the
    same channel lit in a new image becomes a z-score of 10^4 or more, and one such value decides a
    linear head's answer at p = 1.0 (a 9 predicted as 1 on digits). 0: StandardScaler's own rule
    (only a spread of exactly 0 is left alone)."""

    smallest_scale = 0.0  # a scaler pickled before this setting keeps the old rule

    def __init__(self, *, copy=True, with_mean=True, with_std=True, smallest_scale=0.0):
        super().__init__(copy=copy, with_mean=with_mean, with_std=with_std)
        self.smallest_scale = smallest_scale

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.array_api_support = False  # its chunks are numpy (or h5py) rows; other namespaces are not tested
        return tags

    def fit(self, X, y=None, sample_weight=None):
        # What is not a dense 2-D array of rows (sparse matrices, lists, weighted rows) is StandardScaler's
        # to fit, or to refuse, as it is
        if sample_weight is not None or issparse(X) or not hasattr(X, "shape") or len(X.shape) != 2 or not X.shape[0]:
            return super().fit(X, y, sample_weight)
        rows = max(1, FIT_BYTES // max(1, X.shape[1] * X.dtype.itemsize))
        self._reset()
        for start in range(0, X.shape[0], rows):
            self.partial_fit(X[start : start + rows], y)
        return self._floor_scale()

    def partial_fit(self, X, y=None, sample_weight=None):
        super().partial_fit(X, y, sample_weight)
        return self._floor_scale()

    def _floor_scale(self):
        """Each feature's scale raised to `smallest_scale` x the median one (from the accumulated
        variance, so a later partial fit starts from the true statistics)."""
        if not self.smallest_scale or getattr(self, "var_", None) is None or not self.with_std:
            return self
        spread = np.sqrt(self.var_)
        floor = self.smallest_scale * np.nanmedian(spread) if not np.isnan(spread).all() else 0.0
        if floor > 0:  # a median spread of 0 (most features constant): StandardScaler's own rule stands
            self.scale_ = np.where(np.isnan(spread), spread, np.maximum(spread, floor))
        return self


class PowerNormalizer(TransformerMixin, BaseEstimator):
    """Signed square root, then each row scaled to unit L2 norm: the "power" normalisation of
    Perronnin et al. and Razavian et al., which damps the few channels of a pooled CNN vector that
    fire far above the rest. Stateless (nothing learnt from the rows), so it leaks nothing across folds."""

    def fit(self, X, y=None):
        validate_data(self, X, reset=True)
        return self

    def transform(self, X):
        check_is_fitted(self, "n_features_in_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        rooted = np.sign(X) * np.sqrt(np.abs(X))
        return rooted / np.maximum(np.linalg.norm(rooted, axis=1, keepdims=True), np.finfo(rooted.dtype).tiny)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = True
        return tags
