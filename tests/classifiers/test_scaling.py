import tracemalloc

import numpy as np
from sklearn.preprocessing import StandardScaler

import classifiers.scaling
from classifiers.scaling import ChunkedStandardScaler


def test_chunked_scaler_fits_what_standard_scaler_fits_without_its_temporary_copies(monkeypatch):
    X = np.random.default_rng(0).random((40_000, 64), dtype=np.float32) * 3 + 1
    reference = StandardScaler().fit(X)
    whole = ChunkedStandardScaler().fit(X)  # one chunk: scikit-learn's own fit, bit for bit
    np.testing.assert_array_equal(whole.mean_, reference.mean_)
    np.testing.assert_array_equal(whole.scale_, reference.scale_)
    monkeypatch.setattr(classifiers.scaling, "FIT_BYTES", 64 * 4 * 999)  # 41 chunks
    tracemalloc.start()
    chunked = ChunkedStandardScaler().fit(X)
    chunked_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    StandardScaler().fit(X)
    plain_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_allclose(chunked.mean_, reference.mean_, rtol=1e-12)
    np.testing.assert_allclose(chunked.var_, reference.var_, rtol=1e-12)
    assert chunked.n_samples_seen_ == reference.n_samples_seen_ == 40_000
    np.testing.assert_allclose(chunked.transform(X[:100]), reference.transform(X[:100]), rtol=1e-6)
    assert plain_peak > 2 * X.nbytes and chunked_peak < 0.1 * X.nbytes, (plain_peak, chunked_peak)


def test_a_scaler_pickled_before_the_floor_keeps_the_old_rule():
    import pickle

    import numpy as np

    from classifiers.scaling import ChunkedStandardScaler

    old = ChunkedStandardScaler().fit(np.random.default_rng(0).random((20, 3)))
    del old.__dict__["smallest_scale"]  # as an instance pickled before the setting existed
    loaded = pickle.loads(pickle.dumps(old))
    assert loaded.get_params()["smallest_scale"] == 0.0 and repr(loaded)
    loaded.partial_fit(np.ones((2, 3)))


def test_power_normalisation_is_a_signed_square_root_of_unit_length():
    from classifiers.scaling import PowerNormalizer

    X = np.array([[4.0, -9.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1e-30, -1e-30, 2.0, 0.0]])
    out = PowerNormalizer().fit_transform(X)
    for row, expected in zip(out, X):  # written out per row: sign(x) |x|^0.5 / its L2 norm
        rooted = [np.copysign(abs(v) ** 0.5, v) for v in expected]
        norm = sum(r * r for r in rooted) ** 0.5
        np.testing.assert_allclose(row, [r / norm if norm else 0.0 for r in rooted], rtol=1e-12)
    assert np.isfinite(out).all()  # an all-zero vector stays zero, not NaN
