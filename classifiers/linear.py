"""The `linear` head: one linear layer trained in torch on the cached vectors (GPU when present).

A scikit-learn estimator, so it sits in the same Pipeline, search and saved bundle as the other
heads. Its fitted state is plain numpy (`coef_`, `intercept_`): a saved model needs no torch to
predict from vectors.
"""
from __future__ import annotations

import math

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted


class TorchLinearClassifier(ClassifierMixin, BaseEstimator):
    """Softmax regression trained with AdamW (or SGD + Nesterov), linear warm-up then cosine decay,
    and label smoothing."""

    def __init__(self, weight_decay=1e-2, lr=1e-2, epochs=100, batch_size=256, optimizer="adamw",
                 label_smoothing=0.1, warmup_fraction=0.1, seed=0, device="auto"):
        self.weight_decay = weight_decay
        self.lr = lr
        self.epochs = epochs
        self.batch_size = batch_size
        self.optimizer = optimizer
        self.label_smoothing = label_smoothing
        self.warmup_fraction = warmup_fraction
        self.seed = seed
        self.device = device

    def fit(self, X, y):
        import torch

        X = np.asarray(X, dtype=np.float32)
        self.classes_, y_index = np.unique(y, return_inverse=True)
        self.n_features_in_ = X.shape[1]
        device = "cuda" if self.device == "auto" and torch.cuda.is_available() else \
            ("cpu" if self.device == "auto" else self.device)
        generator = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        layer = torch.nn.Linear(X.shape[1], len(self.classes_)).to(device)
        if self.optimizer == "adamw":
            optimizer = torch.optim.AdamW(layer.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        elif self.optimizer == "sgd":
            optimizer = torch.optim.SGD(layer.parameters(), lr=self.lr, momentum=0.9, nesterov=True,
                                        weight_decay=self.weight_decay)
        else:
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        steps_per_epoch = math.ceil(len(X) / self.batch_size)
        total = self.epochs * steps_per_epoch
        warmup = max(1, int(self.warmup_fraction * total))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)
        inputs = torch.from_numpy(X).to(device)
        targets = torch.from_numpy(y_index.astype(np.int64)).to(device)
        for _ in range(self.epochs):
            order = torch.randperm(len(X), generator=generator).to(device)
            for start in range(0, len(X), self.batch_size):
                batch = order[start:start + self.batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss_fn(layer(inputs[batch]), targets[batch]).backward()
                optimizer.step()
                schedule.step()
        self.coef_ = layer.weight.detach().cpu().numpy()
        self.intercept_ = layer.bias.detach().cpu().numpy()
        return self

    def decision_function(self, X):
        check_is_fitted(self, "coef_")
        return np.asarray(X, dtype=np.float32) @ self.coef_.T + self.intercept_

    def predict_proba(self, X):
        logits = self.decision_function(X)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def predict(self, X):
        return self.classes_[self.decision_function(X).argmax(axis=1)]


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
