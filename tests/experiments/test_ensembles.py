"""`compare` rows `vote` and `stack`: ensembles of the heads fitted on one feature file."""

import json

import joblib
import numpy as np
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from featurize import load_features
from tests.test_cli import assert_one_line_error, run

MEMBERS = "knn,logreg"


def _compare(store, out, *extra):
    result = run(
        "compare", "--features", store, "--out", out, "--clf", MEMBERS, "--ensemble", "vote,stack", "--cv", "3", *extra
    )
    assert result.exit_code == 0, result.output
    return result


def test_vote_and_stack_rows_equal_an_independent_computation(tinted_store, tmp_path):
    _compare(tinted_store, tmp_path)
    report = next((tmp_path / "reports").iterdir())
    rows = {r["head"]: r for r in json.loads((report / "report.json").read_text())["rows"]}
    assert set(rows) == {"knn", "logreg", "vote", "stack"}
    assert all(rows[k]["n"] == rows["knn"]["n"] and rows[k]["ci_low"] <= rows[k]["accuracy"] for k in rows)
    models = {head: joblib.load(report / "models" / f"resnet18-random-{head}.joblib") for head in rows}
    data = load_features(tinted_store)
    train, val = data.splits == "train", data.splits == "val"

    members = [models["knn"], models["logreg"]]  # the vote: the mean of the members' probabilities
    expected = np.mean([m.predict_proba(data.X[val]) for m in members], axis=0)
    np.testing.assert_allclose(models["vote"].predict_proba(data.X[val]), expected, atol=1e-6)

    # the stack: a logistic regression on out-of-fold probabilities (3 folds, seed 0), over the heads
    # refitted on every training row - worked out here with scikit-learn's cross_val_predict
    # (two classes: one column per head, as scikit-learn's stacking keeps)
    folds = StratifiedKFold(3, shuffle=True, random_state=0)
    X, y = data.X[train], data.y[train]
    out_of_fold = np.hstack(
        [cross_val_predict(clone(m.pipeline), X, y, cv=folds, method="predict_proba")[:, 1:] for m in members]
    )
    top = LogisticRegression(max_iter=5000, random_state=0).fit(out_of_fold, y)
    refitted = np.hstack([clone(m.pipeline).fit(X, y).predict_proba(data.X[val])[:, 1:] for m in members])
    np.testing.assert_allclose(models["stack"].predict_proba(data.X[val]), top.predict_proba(refitted), atol=1e-5)

    paths = [f"{data.data_root}/{p}" for p in data.paths[val][:3]]  # saved ensembles predict from images
    for kind in ("vote", "stack"):
        np.testing.assert_allclose(
            models[kind].predict_proba(paths), models[kind].predict_proba(data.X[val][:3]), atol=1e-5
        )
    info = json.loads((report / "models" / "resnet18-random-stack.json").read_text())
    assert info["members"] == ["knn", "logreg"] and "out-of-fold" in info["selection"]


def test_ensembles_are_reused_refused_in_one_line_and_can_be_left_out(tinted_store, tmp_path):
    _compare(tinted_store, tmp_path)
    again = _compare(tinted_store, tmp_path)
    assert again.output.count("nothing changed, reusing the fitted model") == 4
    report = next((tmp_path / "reports").iterdir())
    assert_one_line_error(
        run("export", "--model", report / "models" / "resnet18-random-vote.joblib", "--out", tmp_path / "onnx"),
        "an ensemble of heads",
    )
    assert_one_line_error(
        run("compare", "--features", tinted_store, "--out", tmp_path / "bad", "--ensemble", "bag"),
        "--ensemble bag: unknown",
    )
    assert not (tmp_path / "bad").exists()  # refused before anything was fitted
    none = run(
        "compare", "--features", tinted_store, "--out", tmp_path / "none", "--clf", MEMBERS, "--ensemble", "none"
    )
    rows = json.loads(next((tmp_path / "none" / "reports").iterdir()).joinpath("report.json").read_text())["rows"]
    assert none.exit_code == 0 and sorted(r["head"] for r in rows) == ["knn", "logreg"]
