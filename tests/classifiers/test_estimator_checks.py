"""scikit-learn's own estimator checks on every estimator of ours (the rules a Pipeline, a search,
clone and joblib rely on). The torch heads train a few epochs only: the checks are about the
contract, and their one score check (> 0.83 on blobs) is met in 5 epochs at lr 0.1."""

from sklearn.linear_model import LogisticRegression
from sklearn.utils.estimator_checks import parametrize_with_checks

from classifiers import FeatureClassifier
from classifiers.kernel_svm import PrecomputedKernelSVC
from classifiers.linear import MiniBatchLogisticRegression, TorchLinearClassifier
from classifiers.scaling import ChunkedStandardScaler, PowerNormalizer

ESTIMATORS = [
    PrecomputedKernelSVC(),
    TorchLinearClassifier(epochs=5, lr=0.1, batch_size=64),
    MiniBatchLogisticRegression(epochs=5, lr=0.1, batch_size=64),
    ChunkedStandardScaler(),
    ChunkedStandardScaler(smallest_scale=1.0),  # as the heads build it
    PowerNormalizer(),
    FeatureClassifier(LogisticRegression()),  # on vectors; from images: tests/classifiers/test_model.py
]


def expected_failures(estimator) -> dict:
    """Checks that fail on purpose, each with its reason."""
    if isinstance(estimator, FeatureClassifier):
        return {
            "check_n_features_in_after_fitting": "vectors of another width raise FeatureMismatch (a ValueError) "
            "worded for the user who fed a saved model another backbone's features: 'got vectors of width 1280; "
            "this model expects 512 (resnet18 features)', not scikit-learn's 'X has 1280 features, but ... is "
            "expecting 512'"
        }
    return {}


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=expected_failures)
def test_follows_scikit_learns_estimator_contract(estimator, check, monkeypatch):
    # scikit-learn runs its check "array API dispatch on, NumPy input: same results" only where SciPy's
    # array API mode is asked for; NumPy input needs nothing else from it
    monkeypatch.setenv("SCIPY_ARRAY_API", "1")
    check(estimator)
