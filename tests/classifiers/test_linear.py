import numpy as np
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from classifiers.linear import MiniBatchLogisticRegression, TorchLinearClassifier, auto_epochs, warmup_cosine


def _digits():
    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    return X[:1200], y[:1200].astype(str), X[1200:], y[1200:].astype(str)


def test_learns_as_well_as_scikit_learns_logistic_regression():
    X, y, X_test, y_test = _digits()
    torch_head = TorchLinearClassifier(weight_decay=1e-2, epochs=60).fit(X, y)
    reference = LogisticRegression(max_iter=5000).fit(X, y)
    ours, theirs = torch_head.score(X_test, y_test), reference.score(X_test, y_test)
    assert ours >= theirs - 0.02 and ours > 0.9, (ours, theirs)
    proba = torch_head.predict_proba(X_test)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    assert list(torch_head.classes_[proba.argmax(1)]) == list(torch_head.predict(X_test))


def test_same_seed_same_weights_and_estimator_rules():
    X, y, _, _ = _digits()
    first = TorchLinearClassifier(epochs=5, seed=3).fit(X, y)
    again = TorchLinearClassifier(epochs=5, seed=3).fit(X, y)
    other = TorchLinearClassifier(epochs=5, seed=4).fit(X, y)
    np.testing.assert_array_equal(first.coef_, again.coef_)
    assert not np.array_equal(first.coef_, other.coef_)
    assert not hasattr(clone(first), "coef_") and clone(first).get_params()["seed"] == 3
    sgd = TorchLinearClassifier(optimizer="sgd", lr=0.05, epochs=20).fit(X, y)
    assert sgd.score(X, y) > 0.9


def test_warmup_then_cosine():
    factors = [warmup_cosine(step, 10, 100) for step in range(100)]
    assert factors[0] == 0.1 and factors[9] == 1.0 and max(factors) == 1.0
    assert abs(factors[55] - 0.5) < 0.02 and factors[-1] < 0.001
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))


def test_a_path_of_weight_decays_gives_the_models_lone_fits_give():
    X, y, X_test, _ = _digits()
    decays = [1e-4, 1e-1, 3.0]
    reported = []
    path = TorchLinearClassifier(epochs=8, seed=5).fit_path(X, y, decays, report=reported.append)
    assert reported == [(epoch + 1) / 8 for epoch in range(8)]  # what moves the search's progress bar
    for decay, model in zip(decays, path):
        alone = TorchLinearClassifier(epochs=8, seed=5, weight_decay=decay).fit(X, y)
        assert model.get_params() == alone.get_params()
        np.testing.assert_allclose(model.coef_, alone.coef_, atol=1e-5)
        np.testing.assert_allclose(model.predict_proba(X_test), alone.predict_proba(X_test), atol=1e-5)
    assert np.abs(path[0].coef_).sum() > 1.2 * np.abs(path[-1].coef_).sum()  # the decay did act


def _logistic_objective(model, X, y, C):
    """scikit-learn's penalised objective, C * sum of log-losses + ||W||^2 / 2, in its own form
    (one weight vector for two classes), computed from the model's probabilities and weights."""
    proba = model.predict_proba(X)
    log_loss = -np.log(proba[np.arange(len(y)), np.searchsorted(model.classes_, y)]).sum()
    coef = model.coef_
    if len(model.classes_) == 2 and len(coef) == 2:  # the softmax pair as LogisticRegression's one vector
        coef = coef[1:] - coef[:1]
    return C * log_loss + 0.5 * (coef**2).sum()


def test_minibatch_logistic_regression_minimises_scikit_learns_objective():
    digits = _digits()[:2]
    cancer = load_breast_cancer(return_X_y=True)
    for X, y in (digits, (StandardScaler().fit_transform(cancer[0]), cancer[1])):  # many classes; two
        for C in (0.01, 1.0):
            reference = LogisticRegression(C=C, max_iter=5000).fit(X, y)
            ours = MiniBatchLogisticRegression(C=C, epochs=100, batch_size=64).fit(X, y)
            best, reached = _logistic_objective(reference, X, y, C), _logistic_objective(ours, X, y, C)
            assert best <= reached * 1.0001 and reached < best * 1.08, (len(set(y)), C, reached, best)
            assert (ours.predict(X) == reference.predict(X)).mean() >= 0.98


def test_minibatch_logistic_regression_path_of_C_and_estimator_rules():
    X, y, X_test, _ = _digits()
    path = MiniBatchLogisticRegression(epochs=4, seed=2).fit_path(X, y, [0.001, 10.0])
    for C, model in zip([0.001, 10.0], path):
        alone = MiniBatchLogisticRegression(C=C, epochs=4, seed=2).fit(X, y)
        assert model.get_params() == alone.get_params() and model.C == C
        np.testing.assert_allclose(model.predict_proba(X_test), alone.predict_proba(X_test), atol=1e-5)
    assert np.abs(path[0].coef_).sum() < 0.5 * np.abs(path[1].coef_).sum()  # small C: strong penalty
    assert sorted(clone(path[0]).get_params()) == ["C", "batch_size", "device", "epochs", "lr", "seed"]


def test_auto_epochs_keep_small_sets_as_they_were_and_bound_large_ones():
    """As documented: 100 epochs up to 20,000 rows; past them as many as make about 2,000,000
    samples (rounded up); never fewer than 5 (from 400,000 rows on)."""
    expected = {
        1: 100,
        245: 100,
        20_000: 100,
        20_001: 100,
        25_000: 80,
        30_000: 67,
        50_000: 40,
        100_000: 20,
        200_000: 10,
        300_000: 7,
        399_999: 6,
        400_000: 5,
        1_000_000: 5,
        10_000_000: 5,
    }
    assert {rows: auto_epochs(rows) for rows in expected} == expected


def test_auto_device_is_cuda_where_there_is_one_else_the_cpu(monkeypatch):
    """device="auto" goes through featurize's device policy: CUDA when torch sees it, else the CPU."""
    import torch

    X, y, _, _ = _digits()
    placed = []
    seeded_layer = TorchLinearClassifier._seeded_layer

    def recorded(self, features, classes, device):
        placed.append(device)
        return seeded_layer(self, features, classes, device)

    monkeypatch.setattr(TorchLinearClassifier, "_seeded_layer", recorded)
    TorchLinearClassifier(epochs=1).fit(X[:100], y[:100])
    MiniBatchLogisticRegression(epochs=1, device="cpu").fit(X[:100], y[:100])
    assert placed == ["cuda" if torch.cuda.is_available() else "cpu", "cpu"]


def test_importing_the_heads_imports_no_torch():
    """torch loads when a linear head is fitted, not before (`cnnfeat --help` stays instant)."""
    import subprocess
    import sys

    from tests.conftest import REPO

    code = "import sys, classifiers, classifiers.linear; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
