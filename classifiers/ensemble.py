"""Ensembles of heads fitted on the same feature vectors, as scikit-learn's own meta-estimators.

- `vote`: VotingClassifier, soft: the mean of the heads' (calibrated) probabilities. The heads go
  in already fitted (FrozenEstimator), so the vote costs no fit.
- `stack`: StackingClassifier: a logistic regression on the heads' out-of-fold probabilities
  (each head, with its searched parameters, refitted on K-1 folds to predict the K-th), over the
  heads refitted on every training row. Honest - no head's probabilities on its own training
  rows reach the top model - and so it costs each head K+1 fits.

Both are the `pipeline` of a FeatureClassifier, so a saved ensemble loads with joblib and
predicts from vectors and from images like any head.
"""

from __future__ import annotations

from common.errors import CnnfeatError

from .model import FeatureClassifier

ENSEMBLES = ("vote", "stack")


def parse_ensembles(text: str | None) -> list[str]:
    """--ensemble: a comma list of ENSEMBLES, "all", or "none"."""
    if text in (None, "", "none"):
        return []
    names = list(ENSEMBLES) if text == "all" else [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in ENSEMBLES]
    if unknown:
        raise CnnfeatError(f"--ensemble {', '.join(unknown)}: unknown; valid: {', '.join(ENSEMBLES)}, all, none")
    return names


def is_ensemble(estimator) -> bool:
    from sklearn.ensemble import StackingClassifier, VotingClassifier

    return isinstance(estimator, (StackingClassifier, VotingClassifier))


def ensemble_model(
    kind: str, members: dict[str, FeatureClassifier], X, y, folds: int, seed: int, jobs: int = -1
) -> FeatureClassifier:
    """A FeatureClassifier of `kind` over `members` (head name -> fitted model, all fitted on X, y),
    fitted on X, y."""
    from sklearn.base import clone
    from sklearn.ensemble import StackingClassifier, VotingClassifier
    from sklearn.frozen import FrozenEstimator
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    first = next(iter(members.values()))
    if any(list(m.classes_) != list(first.classes_) for m in members.values()):
        raise CnnfeatError("the heads were fitted on different classes; they cannot be combined")
    if kind == "vote":
        pipeline = VotingClassifier(
            [(name, FrozenEstimator(m.pipeline_)) for name, m in members.items()], voting="soft"
        )
    elif kind == "stack":
        pipeline = StackingClassifier(
            [(name, clone(m.pipeline)) for name, m in members.items()],
            final_estimator=LogisticRegression(max_iter=5000, random_state=seed),
            stack_method="predict_proba",
            cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
            n_jobs=jobs,
        )
    else:
        raise CnnfeatError(f"unknown ensemble {kind!r}; valid: {', '.join(ENSEMBLES)}")
    model = FeatureClassifier(
        pipeline, first.class_names, first.feature_config, first.feature_fingerprint, first.weights_source
    )
    return model.fit(X, y)
