"""Standardisation that fits on a million rows without copying them three times."""

from __future__ import annotations

from scipy.sparse import issparse
from sklearn.preprocessing import StandardScaler

FIT_BYTES = 64 << 20  # rows per partial fit: about this many bytes of them


class ChunkedStandardScaler(StandardScaler):
    """scikit-learn's StandardScaler, its mean and variance accumulated over chunks of rows with
    its own `partial_fit`. A one-shot fit of float32 rows makes temporaries of about three times
    their size (the rows minus their mean in float64, and a float copy of the NaN mask): 13 GB beside
    a million 1,280-wide rows. Chunked, those temporaries are one chunk's. With one chunk (up to
    FIT_BYTES of rows) it is exactly StandardScaler's fit; with more, the same statistics up to
    rounding (Chan's merge of partial means and variances)."""

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
        return self
