import numpy as np
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from classifiers.linear import TorchLinearClassifier, warmup_cosine


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
    path = TorchLinearClassifier(epochs=8, seed=5).fit_path(X, y, decays)
    for decay, model in zip(decays, path):
        alone = TorchLinearClassifier(epochs=8, seed=5, weight_decay=decay).fit(X, y)
        assert model.get_params() == alone.get_params()
        np.testing.assert_allclose(model.coef_, alone.coef_, atol=1e-5)
        np.testing.assert_allclose(model.predict_proba(X_test), alone.predict_proba(X_test), atol=1e-5)
    assert np.abs(path[0].coef_).sum() > 1.2 * np.abs(path[-1].coef_).sum()  # the decay did act
