import importlib
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
from common.errors import CnnfeatError
from featurize import load_features
from tests.conftest import REPO
from tests.test_cli import assert_one_line_error, run


def _fitted(store):
    features = load_features(store)
    model = FeatureClassifier(
        LogisticRegression(max_iter=1000),
        class_names=features.class_names,
        feature_config=features.config,
        feature_fingerprint=features.fingerprint,
        weights_source=features.weights_source,
    )
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
    # The columns are the classes of `classes_`, in that order: the same numbers as a logistic
    # regression fitted here on the class names (its own columns put in that order), and the
    # largest is the predicted class.
    names = np.asarray(features.class_names, dtype=object)
    train = features.splits == "train"
    reference = LogisticRegression(max_iter=1000).fit(features.X[train], names[features.y[train]].astype(str))
    columns = [list(reference.classes_).index(name) for name in model.classes_]
    np.testing.assert_allclose(proba, reference.predict_proba(features.X)[:, columns], atol=1e-6)
    assert list(model.classes_[proba.argmax(axis=1)]) == list(model.predict(features.X))
    assert proba[:, 1].max() > 0.9 and proba[:, 1].min() < 0.1  # the columns do differ: swapped ones would fail


def test_probability_columns_follow_class_names_not_the_alphabet(tinted_store):
    """class_names set the order of classes_ and so of predict_proba's columns; labels may be names."""
    features = load_features(tinted_store)
    names = np.asarray(features.class_names, dtype=object)
    assert list(names) == ["blue", "red"]
    train = features.splits == "train"
    model = FeatureClassifier(LogisticRegression(max_iter=1000), class_names=["red", "blue"]).fit(
        features.X[train], names[features.y[train]]
    )
    assert list(model.classes_) == ["red", "blue"]
    proba = model.predict_proba(features.X)
    reddish = features.y == 1
    assert (proba[reddish, 0] > 0.5).mean() >= 0.9 and (proba[~reddish, 1] > 0.5).mean() >= 0.9
    assert list(model.classes_[proba.argmax(axis=1)]) == list(model.predict(features.X))


def test_from_fitted_takes_the_fitted_head_as_it_is(tinted_store):
    """The alternative to fit for a head the caller already fitted (an out-of-bag search's forest):
    the model fit gives, with that very head, and no second fit."""
    features = load_features(tinted_store)
    train = features.splits == "train"
    params = dict(
        pipeline=LogisticRegression(max_iter=1000),
        class_names=features.class_names,
        feature_config=features.config,
        feature_fingerprint=features.fingerprint,
    )
    fitted = FeatureClassifier(**params).fit(features.X[train], features.y[train])
    head = clone(params["pipeline"]).fit(features.X[train], features.y[train])
    adopted = FeatureClassifier.from_fitted(head, features.X[train], features.y[train], **params)
    assert adopted.pipeline_ is head and adopted.get_params() == fitted.get_params()
    assert list(adopted.classes_) == list(fitted.classes_) and adopted.n_features_in_ == fitted.n_features_in_ == 512
    np.testing.assert_allclose(adopted.predict_proba(features.X), fitted.predict_proba(features.X))
    with pytest.raises(FeatureMismatch, match="got vectors of width 8; this model expects 512"):
        FeatureClassifier.from_fitted(head, np.zeros((4, 8)), [0, 1, 0, 1], **params)


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
    code = (
        f"import joblib, numpy as np; m = joblib.load({str(path)!r}); "
        f"print(list(m.predict(np.load({str(tmp_path / 'x.npy')!r}))))"
    )
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
        load_model(tmp_path / "junk.joblib", verify=False)
    joblib.dump({"a": 1}, tmp_path / "dict.joblib")
    with pytest.raises(CnnfeatError, match="not a cnnfeat model .it holds a dict"):
        load_model(tmp_path / "dict.joblib", verify=False)
    with pytest.raises(CnnfeatError, match="no such file"):
        load_model(tmp_path / "absent.joblib")


def _edit_one_coefficient(path):
    """Change one byte of the saved logistic regression's coef_ in the .joblib (its raw float64s)."""
    model = joblib.load(path)
    target = model.pipeline_.coef_.tobytes()[:64]
    data = bytearray(path.read_bytes())
    at = data.index(target) + 7  # the top byte of the first weight: its sign and exponent
    data[at] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("record", ["missing", "cut short", "without sha256"])
def test_a_model_without_its_record_is_refused_through_the_cli(tinted_store, tmp_path, record):
    """Fault 7: an edited coefficient with the .json gone or unreadable predicted on, exit 0."""
    model, features = _fitted(tinted_store)
    path, json_path = save_model(model, tmp_path / "m.joblib", {"head": "logreg"})
    _edit_one_coefficient(path)
    assert joblib.load(path).predict_proba(features.X[:5]).tolist() != model.predict_proba(features.X[:5]).tolist()
    if record == "missing":
        json_path.unlink()
    elif record == "cut short":
        json_path.write_text(json_path.read_text()[:40])
    else:
        json_path.write_text(json.dumps({k: v for k, v in json.loads(json_path.read_text()).items() if k != "sha256"}))
    image = f"{features.data_root}/{features.paths[0]}"
    fragment = {
        "missing": "no m.json beside it",
        "cut short": "its record m.json is damaged",
        "without sha256": "gives no sha256",
    }[record]
    assert_one_line_error(
        run("predict", "--model", path, "--out", tmp_path / "p.csv", image), fragment, "refusing to load it"
    )
    assert not (tmp_path / "p.csv").exists()
    with pytest.raises(CnnfeatError, match=fragment):
        load_model(path)
    assert isinstance(load_model(path, verify=False), FeatureClassifier)  # for those who know why
    if record == "missing":
        assert "runs code when it is loaded" in run("predict", "--model", path, image).output


class _CreatesAFile:
    """A pickle that, when loaded, creates a file: what a hostile model file would do."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_changed_model_file_is_refused_before_it_is_unpickled(tinted_store, tmp_path):
    model, _ = _fitted(tinted_store)
    path, _ = save_model(model, tmp_path / "m.joblib", {})
    target = tmp_path / "created-by-the-pickle"
    joblib.dump(_CreatesAFile(target), path)  # swapped after saving; the .json still names the original
    result = run("predict", "--model", path, tmp_path)
    assert_one_line_error(result, "sha256 does not match m.json", "refusing to load it")
    assert not target.exists()
    joblib.load(path)
    assert target.exists()  # the same file does run code when loaded without the check


def test_an_interrupted_save_never_pairs_a_new_record_with_an_old_model(tinted_store, tmp_path, monkeypatch):
    import common.files as module  # where atomic_write makes a file official

    model, _ = _fitted(tinted_store)
    path, json_path = save_model(model, tmp_path / "m.joblib", {"version": 1})
    stale = tmp_path / "m.joblib.tmp-99999999"  # left by a writer killed earlier
    stale.write_bytes(b"half")
    real_publish = module.publish

    def killed_before(tmp, final):
        raise KeyboardInterrupt  # the kill comes before the .json is renamed into place

    monkeypatch.setattr(module, "publish", killed_before)
    with pytest.raises(KeyboardInterrupt):
        save_model(model, path, {"version": 2})
    assert json.loads(json_path.read_text())["version"] == 1 and isinstance(load_model(path), FeatureClassifier)

    def killed_between(tmp, final):
        real_publish(tmp, final)
        raise KeyboardInterrupt  # the .json is in place, the .joblib not yet

    monkeypatch.setattr(module, "publish", killed_between)
    other = clone(model).fit(np.asarray(_fitted(tinted_store)[1].X[:10]), [0, 1] * 5)  # other bytes
    with pytest.raises(KeyboardInterrupt):
        save_model(other, path, {"version": 3})
    with pytest.raises(CnnfeatError, match="or its save was interrupted"):
        load_model(path)
    monkeypatch.setattr(module, "publish", real_publish)
    save_model(model, path, {"version": 4})
    assert json.loads(json_path.read_text())["version"] == 4 and isinstance(load_model(path), FeatureClassifier)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("m.")) == ["m.joblib", "m.json"]


def test_a_saved_model_exports_its_backbone_once_then_reads_the_graph(tinted_store, tmp_path, graph_cache, monkeypatch):
    """`predict` exported lite0 to ONNX again in every process: a loaded model now keeps the graph in
    the cache folder, keyed by its features' fingerprint, and the next process reads it."""
    engines = importlib.import_module("featurize.engines")
    exported = []
    export = engines.export_backbone
    monkeypatch.setattr(engines, "export_backbone", lambda module: exported.append(1) or export(module))
    model, features = _fitted(tinted_store)
    save_model(model, tmp_path / "m.joblib", {})
    paths = [f"{features.data_root}/{p}" for p in features.paths[:3]]
    first, _ = load_model(tmp_path / "m.joblib").embed_images(paths)  # a process of its own: nothing built yet
    assert len(exported) == 1 and sorted(p.suffix for p in graph_cache.iterdir()) == [".onnx", ".sha256"]
    again, _ = load_model(tmp_path / "m.joblib").embed_images(paths)
    assert len(exported) == 1  # read, not exported
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(first, features.X[:3], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("engine,precision", [("onnxruntime", "float32"), ("torch", "float32"), ("torch", "float16")])
def test_pil_images_and_files_give_the_same_vectors(tinted_store, tmp_path, monkeypatch, engine, precision):
    """One path from a batch to the model: PIL images and files (PNG: the same pixels) agree exactly,
    with either engine and in either compute precision."""
    engines = importlib.import_module("featurize.engines")
    monkeypatch.setattr(engines, "compute_precision", lambda device, engine: precision)
    model, features = _fitted(tinted_store)
    assert features.config["engine"] == "onnxruntime"  # auto on a CPU
    model.feature_config = {**features.config, "engine": engine}  # the engine predicting follows the features'
    paths = [f"{features.data_root}/{p}" for p in features.paths[:5]]
    from_files, _ = model.embed_images(paths)
    from_pil, _ = model.embed_images([Image.open(p) for p in paths])
    np.testing.assert_array_equal(from_files, from_pil)
    if precision == "float32":  # torch and onnxruntime agree to float32 rounding
        np.testing.assert_allclose(
            from_files,
            features.X[:5],
            rtol=1e-5 if engine == "onnxruntime" else 1e-4,
            atol=1e-5 if engine == "onnxruntime" else 1e-4,
        )
    else:  # float16 autocast moves the vectors a little, so it has its own fingerprint
        assert not np.allclose(from_files, features.X[:5], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(from_files, features.X[:5], rtol=0.05, atol=0.05)


@pytest.mark.parametrize(
    "name, says",
    [
        ("model.onnx", "an exported model (`serve --model` runs it)"),
        ("m-svm.json", "a saved model's record"),
        ("x-lite0.h5", "a feature file (`fit --features` takes it)"),
    ],
)
def test_a_file_that_is_not_a_saved_model_is_named_for_what_it_is(tmp_path, name, says):
    (tmp_path / name).write_bytes(b"{}")
    result = run("predict", "--model", tmp_path / name, tmp_path)
    assert_one_line_error(result, says, "not a saved model (.joblib)")


def test_features_of_other_settings_are_refused_naming_the_setting(tinted_store):
    """A model saved before `decoding` entered the features' config, given a feature file made now."""
    model, features = _fitted(tinted_store)
    model.feature_config = {k: v for k, v in features.config.items() if k != "decoding"}
    model.feature_fingerprint = "0123456789abcdef"
    with pytest.raises(FeatureMismatch, match=r"differ in decoding \(absent: an older cnnfeat\)"):
        model.predict(features)
