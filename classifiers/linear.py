"""The `linear` head: one linear layer trained in torch on the cached vectors (GPU when present).

A scikit-learn estimator, so it sits in the same Pipeline, search and saved bundle as the other
heads. Its fitted state is plain numpy (`coef_`, `intercept_`): a saved model needs no torch to
predict from vectors.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, check_X_y, validate_data

_SHARED_CONSTRAINTS = {
    "lr": [Interval(Real, 0, None, closed="neither")],
    "epochs": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
    "batch_size": [Interval(Integral, 1, None, closed="left")],
    "seed": [Integral],
    "device": [str],
}


class TorchLinearClassifier(ClassifierMixin, BaseEstimator):
    """Softmax regression trained with AdamW (or SGD + Nesterov), linear warm-up then cosine decay,
    and label smoothing."""

    def __init__(
        self,
        weight_decay=1e-2,
        lr=1e-2,
        epochs="auto",
        batch_size=256,
        optimizer="adamw",
        label_smoothing=0.1,
        warmup_fraction=0.1,
        seed=0,
        device="auto",
    ):
        self.weight_decay = weight_decay
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.label_smoothing = label_smoothing
        self.warmup_fraction = warmup_fraction
        self.seed = seed
        self.device = device

    path_param = "weight_decay"  # what fit_path trains side by side
    # scikit-learn's parameter rules: a --grid value outside them is one clear error before any fit
    _parameter_constraints = {
        **_SHARED_CONSTRAINTS,
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "optimizer": [StrOptions({"adamw", "sgd"})],
        "label_smoothing": [Interval(Real, 0, 1, closed="left")],
        "warmup_fraction": [Interval(Real, 0, 1, closed="both")],
    }

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float32)  # n_features_in_ (and feature names) recorded
        fitted = self.fit_path(X, y, [getattr(self, self.path_param)])[0]
        self.classes_, self.coef_, self.intercept_ = fitted.classes_, fitted.coef_, fitted.intercept_
        return self

    def fit_path(self, X, y, values, report=None) -> list[TorchLinearClassifier]:
        """One fitted copy of this estimator per value of `path_param` (the weight decay), trained
        side by side: the same seeded start, the same batches and learning rates, each layer its own
        optimizer group, so each copy is the model `fit` would give with that value (tested), for
        little more than one fit's time: the batches' cost is shared and one wider product replaces
        several narrow ones. `report(done_fraction)` is called after every epoch (a progress bar)."""
        import torch

        from featurize import resolve_device  # "auto": CUDA where there is one, else the CPU

        self._validate_params()
        for value in values:
            self._with(value)._validate_params()
        X, y = check_X_y(X, y, dtype=np.float32)
        check_classification_targets(y)
        classes, y_index = np.unique(y, return_inverse=True)
        device = resolve_device(self.device)
        layers = [self._seeded_layer(X.shape[1], len(classes), device) for _ in values]
        optimizer = self._optimizer(
            [group for layer, value in zip(layers, values) for group in self._groups(layer, value, len(X))]
        )
        self._train(
            layers,
            optimizer,
            torch.from_numpy(X).to(device),
            torch.from_numpy(y_index.astype(np.int64)).to(device),
            report,
        )
        fitted = []
        for layer, value in zip(layers, values):
            model = self._with(value)
            model.classes_, model.n_features_in_ = classes, X.shape[1]
            model.coef_ = layer.weight.detach().cpu().numpy()
            model.intercept_ = layer.bias.detach().cpu().numpy()
            fitted.append(model)
        return fitted

    def _with(self, value) -> TorchLinearClassifier:
        """An unfitted copy with `value` as its `path_param`."""
        return self.__class__(**{**self.get_params(), self.path_param: value})

    def _seeded_layer(self, features, classes, device):
        import torch

        torch.manual_seed(self.seed)  # every copy starts from the weights a lone fit draws
        return torch.nn.Linear(features, classes).to(device)

    def _groups(self, layer, weight_decay, rows: int) -> list[dict]:
        return [{"params": layer.parameters(), "weight_decay": weight_decay}]

    def _optimizer(self, groups):
        import torch

        if self.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=self.lr)
        if self.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.lr, momentum=0.9, nesterov=True)
        raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")

    def _train(self, layers, optimizer, inputs, targets, report=None):
        """Mini-batch epochs with warm-up + cosine; the layers' losses are summed, so each layer's
        gradient is its own loss's."""
        import torch

        generator = torch.Generator().manual_seed(self.seed)
        epochs = auto_epochs(len(inputs)) if self.epochs == "auto" else self.epochs
        steps_per_epoch = math.ceil(len(inputs) / self.batch_size)
        total = epochs * steps_per_epoch
        warmup = max(1, int(self.warmup_fraction * total))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=self.label_smoothing, reduction="sum")
        for epoch in range(epochs):
            order = torch.randperm(len(inputs), generator=generator).to(inputs.device)
            for start in range(0, len(inputs), self.batch_size):
                batch = order[start : start + self.batch_size]
                optimizer.zero_grad(set_to_none=True)
                weight = torch.cat([layer.weight for layer in layers])  # one product for all layers
                bias = torch.cat([layer.bias for layer in layers])
                logits = torch.nn.functional.linear(inputs[batch], weight, bias).view(len(batch), len(layers), -1)
                loss = loss_fn(logits.reshape(-1, logits.shape[-1]), targets[batch].repeat_interleave(len(layers)))
                (loss / len(batch)).backward()
                optimizer.step()
                schedule.step()
            if report is not None:
                report((epoch + 1) / epochs)

    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self, "coef_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        return X @ self.coef_.T + self.intercept_

    def decision_function(self, X):
        """Class scores x W^T + b, (n, classes); with two classes scikit-learn's form, one score a row
        (classes_[1]'s over classes_[0]'s, the log-odds of predict_proba's second column)."""
        logits = self._logits(X)
        return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits

    def predict_proba(self, X):
        logits = self._logits(X)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def predict(self, X):
        index = self._logits(X).argmax(axis=1)
        return self.classes_[index]


class MiniBatchLogisticRegression(TorchLinearClassifier):
    """scikit-learn's LogisticRegression objective - mean log-loss + ||W||^2 / (2 C n), the
    intercept not penalised, multinomial - minimised on mini-batches with Adam (its coupled L2 keeps
    that objective's minimum; AdamW's decoupled decay would not). The `logreg` head past
    heads.MINIBATCH_ABOVE training rows, where lbfgs on the whole matrix takes hours; C means what
    LogisticRegression's C means, so the grid is the same. GPU when present."""

    path_param = "C"
    label_smoothing, warmup_fraction = 0.0, 0.1  # fixed: plain log-loss
    _parameter_constraints = {**_SHARED_CONSTRAINTS, "C": [Interval(Real, 0, None, closed="neither")]}

    def __init__(self, C=1.0, lr=1e-2, epochs="auto", batch_size=256, seed=0, device="auto"):
        # scikit-learn reads the parameters from this signature, each stored under its own name: the
        # ones shared with TorchLinearClassifier are written again, not passed up
        self.C = C
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.seed = seed
        self.device = device

    def _groups(self, layer, C, rows: int) -> list[dict]:
        # Two classes: LogisticRegression keeps one weight vector w = W1 - W0; the softmax pair
        # that gives it has ||W0||^2 + ||W1||^2 = ||w||^2 / 2 at best, so twice the decay.
        decay = 1.0 / (C * rows) * (2 if layer.out_features == 2 else 1)
        return [{"params": [layer.weight], "weight_decay": decay}, {"params": [layer.bias], "weight_decay": 0.0}]

    def _optimizer(self, groups):
        import torch

        return torch.optim.Adam(groups, lr=self.lr)


AUTO_EPOCH_SAMPLES = 2_000_000  # epochs="auto": 100 epochs up to 20,000 rows, then about this many samples
MIN_EPOCHS = 5


def auto_epochs(rows: int) -> int:
    """100 epochs on small sets (where they cost seconds); past 20,000 rows as many as make about
    AUTO_EPOCH_SAMPLES samples, at least MIN_EPOCHS: a million rows needs few passes, and 100 of
    them would take hours on a CPU."""
    return max(MIN_EPOCHS, min(100, math.ceil(AUTO_EPOCH_SAMPLES / max(1, rows))))


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
