"""An SVC that computes its kernel matrix with BLAS and shares it across a grid search.

scikit-learn's SVC evaluates kernel values inside libsvm, one pair at a time, for every candidate
(C, gamma) of a search again. This one hands libsvm a precomputed kernel: the Gram matrix of the
training rows is computed once per distinct training set (one matrix product) and kept in a small
per-process cache, so the 28 candidates of the default grid on one CV fold pay for it once; each
RBF gamma is then one elementwise exp. Same model as SVC (tested: equal decisions).
"""
from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.svm import SVC
from sklearn.utils.validation import check_is_fitted, validate_data

_GRAMS: OrderedDict = OrderedDict()  # digest of X -> (X X^T, squared row norms), per process
_GRAMS_KEPT = 8  # the folds of one search, plus the refit


class PrecomputedKernelSVC(ClassifierMixin, BaseEstimator):
    """SVC with kernel 'linear' or 'rbf' (gamma: a float or 'scale', as SVC's)."""

    def __init__(self, C=1.0, kernel="rbf", gamma="scale", random_state=None):
        self.C = C
        self.kernel = kernel
        self.gamma = gamma
        self.random_state = random_state

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64)
        if self.kernel not in ("linear", "rbf"):
            raise ValueError(f"kernel {self.kernel!r}: use 'linear' or 'rbf'")
        self.X_fit_ = X
        self.gamma_ = 1.0 / (X.shape[1] * X.var()) if self.gamma == "scale" else float(self.gamma)
        gram, norms = _gram(X)
        self.fit_norms_ = norms
        self.svc_ = SVC(C=self.C, kernel="precomputed", random_state=self.random_state)
        self.svc_.fit(self._kernel(gram, norms, norms), y)
        self.classes_ = self.svc_.classes_
        return self

    def decision_function(self, X):
        return self.svc_.decision_function(self._kernel_to_fit(X))

    def predict(self, X):
        return self.svc_.predict(self._kernel_to_fit(X))

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
        return self._kernel(X @ self.X_fit_.T, np.einsum("ij,ij->i", X, X), self.fit_norms_)

    def _kernel(self, products, row_norms, fit_norms):
        if self.kernel == "linear":
            return products
        kernel = products * -2.0  # then in place: ||a||^2 + ||b||^2 - 2ab, clipped at 0, times -gamma, exp
        kernel += row_norms[:, None]
        kernel += fit_norms[None, :]
        np.maximum(kernel, 0, out=kernel)
        kernel *= -self.gamma_
        return np.exp(kernel, out=kernel)


def _gram(X: np.ndarray):
    key = (X.shape, hashlib.blake2b(np.ascontiguousarray(X).view(np.uint8), digest_size=16).digest())
    if key in _GRAMS:
        _GRAMS.move_to_end(key)
        return _GRAMS[key]
    gram = X @ X.T
    _GRAMS[key] = (gram, np.diag(gram).copy())
    while len(_GRAMS) > _GRAMS_KEPT:
        _GRAMS.popitem(last=False)
    return _GRAMS[key]
