import json
import subprocess
import sys

import joblib
import numpy as np
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression

from classifiers import FeatureClassifier, FeatureMismatch, load_model, save_model
from featurize import load_features
from featurize.errors import CnnfeatError
from tests.conftest import REPO


def _fitted(store):
    features = load_features(store)
    model = FeatureClassifier(LogisticRegression(max_iter=1000), class_names=features.class_names,
                              feature_config=features.config, feature_fingerprint=features.fingerprint,
                              weights_source=features.weights_source)
    train = features.splits == "train"
    return model.fit(features.X[train], features.y[train]), features


def test_follows_scikit_learn_estimator_rules(tinted_store):
    model = FeatureClassifier(LogisticRegression(), class_names=["a", "b"])
    assert model.get_params()["class_names"] == ["a", "b"] and not hasattr(model, "classes_")
    fitted, features = _fitted(tinted_store)
    assert isinstance(fitted, FeatureClassifier) and list(fitted.classes_) == ["blue", "red"]
    assert fitted.n_features_in_ == 512 and not hasattr(clone(fitted), "pipeline_")


def test_predicts_class_names_and_probabilities(tinted_store):
    model, features = _fitted(tinted_store)
    val = features.splits == "val"
    predicted = model.predict(features.X[val])
    assert set(predicted) <= {"blue", "red"}
    assert (predicted == np.asarray(features.class_names)[features.y[val]]).mean() >= 0.9
    proba = model.predict_proba(features)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert model.score(features.X[val], np.asarray(features.class_names, dtype=object)[features.y[val]]) >= 0.9


def test_refuses_features_of_another_backbone(tinted_store):
    model, features = _fitted(tinted_store)
    with pytest.raises(FeatureMismatch, match="got vectors of width 1280; this model expects 512 .resnet18"):
        model.predict(np.zeros((2, 1280)))
    with pytest.raises(FeatureMismatch, match="2-D array"):
        model.predict(np.zeros(512))
    features.fingerprint = "0123456789abcdef"
    with pytest.raises(FeatureMismatch, match="fingerprint 0123456789abcdef"):
        model.predict(features)


def test_predicts_from_image_paths_and_pil_images_like_from_the_stored_vectors(tinted_store):
    model, features = _fitted(tinted_store)
    root = features.data_root
    paths = [f"{root}/{p}" for p in features.paths[:6]]
    expected = model.predict(features.X[:6])
    assert list(model.predict(paths)) == list(expected)
    np.testing.assert_allclose(model.predict_proba(paths), model.predict_proba(features.X[:6]), atol=1e-4)
    assert list(model.predict([Image.open(p) for p in paths])) == list(expected)
    with pytest.raises(CnnfeatError, match="cannot read image .*nope.png: file not found"):
        model.predict([paths[0], f"{root}/nope.png"])


def test_saved_model_loads_in_a_fresh_interpreter_and_predicts_the_same(tinted_store, tmp_path):
    model, features = _fitted(tinted_store)
    path, json_path = save_model(model, tmp_path / "m.joblib", {"head": "logreg"})
    record = json.loads(json_path.read_text())
    assert record["head"] == "logreg" and len(record["sha256"]) == 64
    code = (f"import joblib, numpy as np; m = joblib.load({str(path)!r}); "
            f"print(list(m.predict(np.load({str(tmp_path / 'x.npy')!r}))))")
    np.save(tmp_path / "x.npy", features.X)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(list(model.predict(features.X)))


def test_load_model_refuses_changed_corrupt_or_foreign_files(tinted_store, tmp_path):
    model, _ = _fitted(tinted_store)
    path, _ = save_model(model, tmp_path / "m.joblib", {})
    assert isinstance(load_model(path), FeatureClassifier)
    with open(path, "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(CnnfeatError, match="sha256 does not match m.json"):
        load_model(path)
    (tmp_path / "junk.joblib").write_bytes(b"\x80\x04 junk")
    with pytest.raises(CnnfeatError, match="not a readable model file"):
        load_model(tmp_path / "junk.joblib")
    joblib.dump({"a": 1}, tmp_path / "dict.joblib")
    with pytest.raises(CnnfeatError, match="not a cnnfeat model .it holds a dict"):
        load_model(tmp_path / "dict.joblib")
    with pytest.raises(CnnfeatError, match="no such file"):
        load_model(tmp_path / "absent.joblib")
