"""An SVC that computes its kernel matrix with BLAS and shares it across a grid search.

scikit-learn's SVC evaluates kernel values inside libsvm, one pair at a time, for every candidate
(C, gamma) of a search again. This one hands libsvm a precomputed kernel: the Gram matrix of the
training rows is computed once per distinct training set (one matrix product) and kept in a small
per-process cache, so the 28 candidates of the default grid on one CV fold pay for it once; each
RBF gamma is then one elementwise exp; the product of a fold's held-out rows with its training
rows is kept likewise. Same model as SVC (tested: equal decisions).
"""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict
from numbers import Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.svm import SVC
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

_GRAMS: OrderedDict = OrderedDict()  # digest of X -> (X X^T, squared row norms), per process
_PRODUCTS: OrderedDict = OrderedDict()  # (digest of rows, digest of X) -> (rows X^T, squared row norms)
_KEPT = 8  # the folds of one search, plus the refit
_KEEP_PRODUCTS_UP_TO = 8_000_000  # entries (64 MB of float64)


class PrecomputedKernelSVC(ClassifierMixin, BaseEstimator):
    """SVC with kernel 'linear' or 'rbf' (gamma: a float or 'scale', as SVC's)."""

    # SVC's rules: C is SVC's own (it is handed to one); gamma and kernel those of the kernels computed here
    _parameter_constraints = {
        "C": SVC._parameter_constraints["C"],
        "gamma": [StrOptions({"scale"}), Interval(Real, 0.0, None, closed="left")],
        "kernel": [StrOptions({"linear", "rbf"})],
        "random_state": ["random_state"],
    }

    def __init__(self, C=1.0, kernel="rbf", gamma="scale", random_state=None):
        self.C = C
        self.kernel = kernel
        self.gamma = gamma
        self.random_state = random_state

    def fit(self, X, y):
        self._validate_params()
        X, y = validate_data(self, X, y, dtype=np.float64)
        self.X_fit_ = X
        self.gamma_ = 1.0 / (X.shape[1] * X.var()) if self.gamma == "scale" else float(self.gamma)
        self.fit_key_ = _digest(X)
        gram, norms = _cached(_GRAMS, self.fit_key_, lambda: _gram(X))
        self.fit_norms_ = norms
        self.svc_ = SVC(C=self.C, kernel="precomputed", random_state=self.random_state)
        self.svc_.fit(self._kernel(gram, norms, norms), y)
        self.classes_ = self.svc_.classes_
        return self

    def decision_function(self, X):
        kernel = self._kernel_to_fit(X)  # checks first that it is fitted
        return self.svc_.decision_function(kernel)

    def predict(self, X):
        kernel = self._kernel_to_fit(X)
        return self.svc_.predict(kernel)

    def as_svc(self) -> SVC:
        """The fitted scikit-learn SVC with this kernel that computes the same decisions: libsvm's
        solution with the support vectors put back (a precomputed-kernel SVC keeps only their
        indices). For tools that know SVC (skl2onnx); tested equal to `decision_function`."""
        check_is_fitted(self, "svc_")
        svc = copy.deepcopy(self.svc_)
        svc.kernel, svc.gamma, svc._gamma = self.kernel, self.gamma_, self.gamma_
        svc.support_vectors_ = self.X_fit_[svc.support_]
        svc.shape_fit_ = self.X_fit_.shape
        svc.n_features_in_ = self.X_fit_.shape[1]
        return svc

    def _kernel_to_fit(self, X):
        check_is_fitted(self, "svc_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        # The same held-out rows meet the same training rows for every candidate of a fold: one
        # product, kept while small (a large prediction is computed, not kept).
        if len(X) * len(self.X_fit_) > _KEEP_PRODUCTS_UP_TO:
            products, norms = _products(X, self.X_fit_)
        else:
            fit_key = getattr(self, "fit_key_", None) or _digest(self.X_fit_)  # models saved before it
            products, norms = _cached(_PRODUCTS, (_digest(X), fit_key), lambda: _products(X, self.X_fit_))
        return self._kernel(products, norms, self.fit_norms_)

    def _kernel(self, products, row_norms, fit_norms):
        if self.kernel == "linear":
            return products
        kernel = row_norms[:, None] + fit_norms[None, :]  # then in place: - 2ab, clipped at 0, times -gamma, exp
        kernel -= 2 * products  # (libsvm's own order of operations: the same solution, tested to 1e-9)
        np.maximum(kernel, 0, out=kernel)
        kernel *= -self.gamma_
        return np.exp(kernel, out=kernel)


def _digest(X: np.ndarray) -> tuple:
    return X.shape, hashlib.blake2b(np.ascontiguousarray(X).view(np.uint8), digest_size=16).digest()


def _gram(X: np.ndarray):
    gram = X @ X.T
    return gram, np.diag(gram).copy()


def _products(rows: np.ndarray, X: np.ndarray):
    """(rows X^T, squared norms of rows)."""
    return rows @ X.T, np.einsum("ij,ij->i", rows, rows)


def _cached(cache: OrderedDict, key, compute):
    """compute(), kept in a small least-recently-used cache under `key` (an exact digest of its inputs)."""
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    cache[key] = compute()
    while len(cache) > _KEPT:
        cache.popitem(last=False)
    return cache[key]
