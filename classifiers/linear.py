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

    path_param = "weight_decay"  # what fit_path trains side by side

    def fit(self, X, y):
        fitted = self.fit_path(X, y, [self.weight_decay])[0]
        self.classes_, self.n_features_in_ = fitted.classes_, fitted.n_features_in_
        self.coef_, self.intercept_ = fitted.coef_, fitted.intercept_
        return self

    def fit_path(self, X, y, weight_decays) -> list["TorchLinearClassifier"]:
        """One fitted copy of this estimator per weight decay, trained side by side: the same seeded
        start, the same batches and learning rates, each layer its own AdamW/SGD group, so each copy
        is the model `fit` would give with that weight decay (tested), for little more than one
        fit's time: the batches' cost is shared and one wider product replaces several narrow ones."""
        import torch

        X = np.asarray(X, dtype=np.float32)
        classes, y_index = np.unique(y, return_inverse=True)
        device = "cuda" if self.device == "auto" and torch.cuda.is_available() else \
            ("cpu" if self.device == "auto" else self.device)
        layers = [self._seeded_layer(X.shape[1], len(classes), device) for _ in weight_decays]
        optimizer = self._optimizer([{"params": layer.parameters(), "weight_decay": decay}
                                     for layer, decay in zip(layers, weight_decays)])
        self._train(layers, optimizer, torch.from_numpy(X).to(device),
                    torch.from_numpy(y_index.astype(np.int64)).to(device))
        fitted = []
        for layer, decay in zip(layers, weight_decays):
            model = self.__class__(**{**self.get_params(), "weight_decay": decay})
            model.classes_, model.n_features_in_ = classes, X.shape[1]
            model.coef_ = layer.weight.detach().cpu().numpy()
            model.intercept_ = layer.bias.detach().cpu().numpy()
            fitted.append(model)
        return fitted

    def _seeded_layer(self, features, classes, device):
        import torch
        torch.manual_seed(self.seed)  # every copy starts from the weights a lone fit draws
        return torch.nn.Linear(features, classes).to(device)

    def _optimizer(self, groups):
        import torch
        if self.optimizer == "adamw":
            return torch.optim.AdamW(groups, lr=self.lr)
        if self.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=self.lr, momentum=0.9, nesterov=True)
        raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")

    def _train(self, layers, optimizer, inputs, targets):
        """Mini-batch epochs with warm-up + cosine; the layers' losses are summed, so each layer's
        gradient is its own loss's."""
        import torch

        generator = torch.Generator().manual_seed(self.seed)
        steps_per_epoch = math.ceil(len(inputs) / self.batch_size)
        total = self.epochs * steps_per_epoch
        warmup = max(1, int(self.warmup_fraction * total))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total))
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=self.label_smoothing, reduction="sum")
        for _ in range(self.epochs):
            order = torch.randperm(len(inputs), generator=generator).to(inputs.device)
            for start in range(0, len(inputs), self.batch_size):
                batch = order[start:start + self.batch_size]
                optimizer.zero_grad(set_to_none=True)
                weight = torch.cat([layer.weight for layer in layers])  # one product for all layers
                bias = torch.cat([layer.bias for layer in layers])
                logits = torch.nn.functional.linear(inputs[batch], weight, bias).view(len(batch), len(layers), -1)
                loss = loss_fn(logits.reshape(-1, logits.shape[-1]), targets[batch].repeat_interleave(len(layers)))
                (loss / len(batch)).backward()
                optimizer.step()
                schedule.step()

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
