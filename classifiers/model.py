"""The saved model's estimator: a fitted head plus everything needed to use it alone.

`joblib.load(path)` gives a FeatureClassifier: `classes_` are class names; `predict` and
`predict_proba` take a 2-D array of feature vectors, a `featurize.Features`, or image paths / PIL
images (the backbone is then rebuilt from the registry, with the preprocessing the features were
made with: classifiers.embedding). Vectors of another width, or Features of another fingerprint,
are refused. Saving and loading: classifiers.bundle.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_consistent_length, check_is_fitted, column_or_1d

from common.errors import CnnfeatError

from . import embedding
from .embedding import BackboneSource, FeatureMismatch


class FeatureClassifier(ClassifierMixin, BaseEstimator):
    """A scikit-learn classifier on frozen-CNN feature vectors that also accepts images.

    Parameters
    ----------
    pipeline : unfitted scikit-learn estimator (the head).
    class_names : list of str, optional. Order of the classes; y may then be indices into it.
    feature_config : dict, optional. The feature store's config (backbone, weights, preprocessing...).
    feature_fingerprint : str, optional. Features with another fingerprint are refused.
    weights_source : str. How to rebuild the backbone: "" (its own weights), "random", or a path.
    """

    def __init__(
        self, pipeline=None, class_names=None, feature_config=None, feature_fingerprint=None, weights_source=""
    ):
        self.pipeline = pipeline
        self.class_names = class_names
        self.feature_config = feature_config
        self.feature_fingerprint = feature_fingerprint
        self.weights_source = weights_source

    @classmethod
    def from_linear_layer(cls, weight, bias, class_names, feature_config, feature_fingerprint, weights_source):
        """A fitted model from a trained linear layer on the features (the fine-tuned network's head)."""
        from sklearn.pipeline import Pipeline

        from .linear import TorchLinearClassifier

        layer = TorchLinearClassifier()
        layer.coef_, layer.intercept_ = np.asarray(weight, np.float32), np.asarray(bias, np.float32)
        layer.classes_, layer.n_features_in_ = np.arange(len(class_names)), layer.coef_.shape[1]
        model = cls(
            Pipeline([("scale", "passthrough"), ("clf", TorchLinearClassifier())]),
            list(class_names),
            feature_config,
            feature_fingerprint,
            weights_source,
        )
        model.pipeline_ = Pipeline([("scale", "passthrough"), ("clf", layer)])
        model.classes_ = np.asarray(class_names, dtype=object)
        model.n_features_in_ = layer.n_features_in_
        return model

    @classmethod
    def from_fitted(cls, fitted, X, y, **params) -> FeatureClassifier:
        """The model `cls(**params).fit(X, y)` gives, with `fitted` as its head: a clone of
        params["pipeline"] the caller already fitted on (X, the labels `encode_labels(y)` gives) - the
        forest an out-of-bag search grew on these very rows - taken as it is, not fitted again."""
        model = cls(**params)
        model._check_training_rows(X, y)
        model.pipeline_ = fitted
        return model

    def fit(self, X, y):
        """Fit the head on vectors X and labels y (class names, or indices into class_names)."""
        X, index = self._check_training_rows(X, y)
        self.pipeline_ = clone(self.pipeline).fit(X, index)
        return self

    def _check_training_rows(self, X, y) -> tuple[np.ndarray, np.ndarray]:
        """(X checked as vectors, its width recorded; y as indices into `classes_`, which it sets)."""
        X = self._check_vectors(X, fitting=True)
        y = column_or_1d(y, warn=True)
        check_consistent_length(X, y)
        check_classification_targets(y)
        return X, self.encode_labels(y)

    def encode_labels(self, y) -> np.ndarray:
        """Set `classes_` (class_names order, those present in y) and return y as indices into
        it: the labels the pipeline is fitted on."""
        y = np.asarray(y)
        if self.class_names is not None:
            names = np.asarray(self.class_names, dtype=object)
            y = names[y] if np.issubdtype(y.dtype, np.integer) else y.astype(object)
            present = set(y.tolist())
            self.classes_ = np.asarray([c for c in self.class_names if c in present], dtype=object)
        else:
            self.classes_ = np.unique(y)
        index = {c: i for i, c in enumerate(self.classes_.tolist())}
        return np.asarray([index[c] for c in y.tolist()])

    def predict(self, X):
        check_is_fitted(self, "pipeline_")
        return self.classes_[self.pipeline_.predict(self.vectors(X))]

    def predict_proba(self, X):
        """Probabilities, one column per class of `classes_`, in that order."""
        check_is_fitted(self, "pipeline_")
        if not hasattr(self.pipeline_, "predict_proba"):
            raise CnnfeatError("this head gives no probabilities")
        return self.pipeline_.predict_proba(self.vectors(X))

    # -- inputs ------------------------------------------------------------------------------
    def vectors(self, X) -> np.ndarray:
        """Feature vectors for X: an (n, D) array, a featurize.Features, or images (paths / PIL)."""
        from featurize import Features

        if isinstance(X, Features):
            if self.feature_fingerprint and X.fingerprint != self.feature_fingerprint:
                differing = embedding.differing_settings(self.feature_config, X.config)
                raise FeatureMismatch(
                    f"{X.path} holds features of {X.config.get('backbone')} (fingerprint {X.fingerprint}); "
                    f"this model was fitted on {self._backbone_name()} features (fingerprint "
                    f"{self.feature_fingerprint}); they differ in {differing}: "
                    f"extract with the model's settings, or fit it again on these features"
                )
            return self._check_vectors(X.X)
        images = embedding.as_image_list(X)
        if images is not None:
            vectors, failures = self.embed_images(images)
            if failures:
                position, reason = failures[0]
                raise CnnfeatError(f"cannot read image {images[position]}: {reason}")
            return vectors
        return self._check_vectors(X)

    def _check_vectors(self, X, fitting=False) -> np.ndarray:
        # scikit-learn's own checks (sparse or complex input refused); finite values are the head's to judge
        X = check_array(
            X, dtype=np.float32, ensure_2d=False, allow_nd=True, ensure_all_finite=False, ensure_min_samples=0
        )
        if X.ndim != 2:
            raise FeatureMismatch(
                f"expected a 2-D array of feature vectors (rows = images), got shape {X.shape} "
                f"(Reshape your data: X.reshape(1, -1) for one image's vector)"
            )
        expected = self.n_features_in_ if not fitting else (self.feature_config or {}).get("feature_dim")
        if expected is not None and X.shape[1] != expected:
            raise FeatureMismatch(
                f"got vectors of width {X.shape[1]}; this model expects {expected} ({self._backbone_name()} features)"
            )
        if fitting:
            self.n_features_in_ = X.shape[1]
        return X

    def _backbone_name(self) -> str:
        return (self.feature_config or {}).get("backbone", "unknown backbone")

    # -- images (classifiers.embedding) ------------------------------------------------------
    def sources(self) -> list[BackboneSource]:
        """The backbone(s) our features come from: one, or one per part of fused features."""
        cached = getattr(self, "_sources", None)
        if cached is None:
            self._sources = cached = embedding.backbone_sources(self.feature_config, self.weights_source)
        return cached

    def embed_images(self, images, device: str = "auto", batch_size=None, workers=None, progress=False, reader=None):
        """Vectors for image paths (or URLs; `reader`: a featurize.ImageSource that reads them) or PIL
        images, with the exact backbone(s) and preprocessing of the training features. Returns
        (vectors of the readable ones, in order; [(position, reason)])."""
        return embedding.embed_images(self.sources(), images, device, batch_size, workers, progress, reader)

    def iter_embedded(self, paths, device: str = "auto", batch_size=None, workers=None, progress=False, reader=None):
        """Image files (or URLs of objects; `reader`: a featurize.ImageSource that reads them) embedded
        batch by batch, in order: (positions of the readable ones in `paths`, their vectors,
        [(position, reason)] of the others) - memory of one batch."""
        return embedding.iter_embedded(self.sources(), paths, device, batch_size, workers, progress, reader=reader)

    def embedder(self, device: str = "auto"):
        """(the embedder of featurize.engines that made our features, the device it runs on), for a
        one-backbone model (what `serve` and `export` take)."""
        return self._single_source().embedder(device)

    def backbone_record(self):
        """(the registry's backbone record, weights) that rebuild the network of our features."""
        return self._single_source().record()

    def _single_source(self) -> BackboneSource:
        sources = self.sources()
        if len(sources) > 1:
            raise CnnfeatError(
                f"this model joins the features of {len(sources)} backbones "
                f"({self._backbone_name()}); serve and export take one-backbone models"
            )
        return sources[0]

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_sources", None)  # torch modules: rebuilt on first use, never pickled
        return state
