"""`fit`/`compare --normalize power`: the head's pipeline starts with PowerNormalizer, the saved model
predicts from images with it, a result fitted without it is never reused for it, `export` refuses it
in one line."""

import json

import joblib
import numpy as np

from classifiers.scaling import PowerNormalizer
from featurize import load_features
from tests.test_cli import assert_one_line_error, run


def test_a_power_normalised_head_is_fitted_saved_and_predicts(tinted_store, tmp_path):
    result = run("fit", "--features", tinted_store, "--out", tmp_path, "--clf", "logreg", "--normalize", "power")
    assert result.exit_code == 0, result.output
    model_path = next((tmp_path / "models").glob("*-logreg-power.joblib"))  # beside a plain fit's, not over it
    model = joblib.load(model_path)
    assert json.loads(model_path.with_suffix(".json").read_text())["normalize"] == "power"
    assert isinstance(model.pipeline_.named_steps["power"], PowerNormalizer)
    X = np.random.default_rng(0).normal(size=(5, model.n_features_in_)).astype(np.float32)
    inside = model.pipeline_.named_steps["power"].transform(X)
    np.testing.assert_allclose(np.linalg.norm(inside, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(model.predict_proba(X), model.pipeline_[1:].predict_proba(inside), rtol=1e-6)

    data = load_features(tinted_store)
    image = f"{data.data_root}/{data.paths[0]}"
    cam = run("explain", "--model", model_path, image, "--method", "cam", "--out", tmp_path / "cam")
    assert_one_line_error(cam, "one fitted with --normalize power is not")

    exported = run("export", "--model", model_path, "--out", tmp_path / "onnx")
    assert_one_line_error(exported, "--normalize power; export does not take it")
    assert not (tmp_path / "onnx").exists()


def test_compare_keeps_power_and_plain_results_apart(tinted_store, tmp_path):
    plain = run("compare", "--features", tinted_store, "--out", tmp_path, "--clf", "logreg")
    powered = run("compare", "--features", tinted_store, "--out", tmp_path, "--clf", "logreg", "--normalize", "power")
    assert plain.exit_code == 0 and powered.exit_code == 0, plain.output + powered.output
    assert "reusing the fitted model" not in powered.output  # the plain run's fitted head is not this one
    assert "--normalize power: every head starts with a signed square root" in powered.output
    report = next(tmp_path.glob("reports/*-power/report.md")).read_text()
    assert "export: does not take a --normalize power head yet" in report and "cli.py export" not in report
    models = [p.name for p in tmp_path.glob("reports/*/models/*.joblib")]
    assert any(n.endswith("-logreg.joblib") for n in models) and any(n.endswith("-logreg-power.joblib") for n in models)
    assert (
        len({p.parent for p in tmp_path.glob("reports/*/report.md")}) == 2
    )  # each its own report, neither over the other
    again = run("compare", "--features", tinted_store, "--out", tmp_path, "--clf", "logreg", "--normalize", "power")
    assert again.exit_code == 0 and "reusing the fitted model" in again.output
