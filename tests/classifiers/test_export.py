"""`export`: one ONNX graph from uint8 images to label + probabilities, equal to the saved model."""

import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.datasets import load_digits

from classifiers import FeatureClassifier, save_model
from classifiers.export import export_onnx, head_graph
from classifiers.heads import HEADS
from featurize import CnnfeatError, load_features
from tests.test_cli import assert_one_line_error, run

HEAD_CASES = [
    ("knn", {"metric": "cosine", "weights": "distance"}),
    ("knn", {"metric": "euclidean", "weights": "distance"}),
    ("logreg", {}),
    ("svm", {"kernel": "rbf", "gamma": 1e-2}),
    ("svm", {"kernel": "linear", "C": 0.01}),
    ("knn", {"metric": "cosine"}),
    ("knn", {"metric": "euclidean"}),
    ("rf", {"n_estimators": 20}),
    ("mlp", {"hidden_layer_sizes": (32,)}),
    ("linear", {"epochs": 5}),
]


def _digits():
    X, y = load_digits(return_X_y=True)
    X = (X + np.random.default_rng(0).random(X.shape)).astype(np.float32)  # no exact distance ties
    return X[:1200], y[:1200], X[1200:], y[1200:]


def _pipeline(name, params):
    pipeline = HEADS[name].build(0).set_params(**{f"clf__{k}": v for k, v in params.items()})
    if HEADS[name].calibrate:  # as `fit` refits it
        pipeline.set_params(clf=CalibratedClassifierCV(pipeline.named_steps["clf"], ensemble=False, cv=3))
    return pipeline


def _fitted_head(name, params, X, y):
    return _pipeline(name, params).fit(X, y)


@pytest.mark.parametrize("classes", [10, 2])
@pytest.mark.parametrize("name,params", HEAD_CASES)
def test_every_head_converts_to_the_same_numbers(name, params, classes):
    X, y, X_test, y_test = _digits()
    pipeline = _fitted_head(name, params, X[y < classes], y[y < classes])
    session = ort.InferenceSession(head_graph(pipeline, 64, 17).SerializeToString(), providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(None, {"features": X_test[y_test < classes]})
    expected = pipeline.predict_proba(X_test[y_test < classes])
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)
    clear = np.sort(expected, axis=1)[:, -1] - np.sort(expected, axis=1)[:, -2] > 1e-4  # no tie for the top class
    assert labels.dtype == np.int64 and clear.mean() > 0.5
    np.testing.assert_array_equal(labels[clear], pipeline.predict(X_test[y_test < classes])[clear])


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_a_weighted_knn_query_on_a_training_row_votes_with_that_row_alone(metric):
    """scikit-learn gives a neighbour at distance 0 all the weight; the graph must too."""
    X, y, _, _ = _digits()
    pipeline = _fitted_head("knn", {"weights": "distance", "metric": metric}, X, y)
    session = ort.InferenceSession(head_graph(pipeline, 64, 17).SerializeToString(), providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(None, {"features": X[:50]})
    np.testing.assert_allclose(probabilities, pipeline.predict_proba(X[:50]), atol=1e-3)
    np.testing.assert_array_equal(labels, y[:50])


def test_a_head_that_cannot_be_converted_is_a_clear_error():
    X, y, _, _ = _digits()
    with pytest.raises(CnnfeatError, match="distance-weighted kNN with metric manhattan"):
        head_graph(_fitted_head("knn", {"weights": "distance", "metric": "manhattan"}, X, y), 64, 17)
    from sklearn.semi_supervised import LabelSpreading

    with pytest.raises(CnnfeatError, match="skl2onnx does not convert LabelSpreading"):
        head_graph(LabelSpreading().fit(X[:200], y[:200]), 64, 17)


def _saved(features, tmp_path, name="logreg", params=None):
    model = FeatureClassifier(
        _pipeline(name, params or {}),
        class_names=features.class_names,
        feature_config=features.config,
        feature_fingerprint=features.fingerprint,
        weights_source=features.weights_source,
    )
    train = features.splits == "train"
    model.fit(features.X[train], features.y[train])
    path, _ = save_model(model, tmp_path / "model.joblib", {"head": name, "heldout": {"accuracy": 0.5}})
    return model, path


def test_the_graph_equals_the_saved_model_on_images(tinted_store, tmp_path):
    """Fed the uint8 crops the product computes, the graph gives the model's labels and probabilities."""

    features = load_features(tinted_store)
    model, path = _saved(features, tmp_path, "svm", {"kernel": "rbf", "C": 10.0})
    graph = export_onnx(path, tmp_path / "exported")
    assert graph == tmp_path / "exported" / "model.onnx"
    meta = {p.key: p.value for p in onnx.load(graph).metadata_props}
    assert json.loads(meta["class_names"]) == ["blue", "red"] and meta["backbone"] == "resnet18"
    assert json.loads(meta["preprocessing"])["crop_size"] == 224
    assert json.loads(meta["model_info"])["heldout"] == {"accuracy": 0.5}

    val = [f"{features.data_root}/{p}" for p in features.paths[features.splits == "val"]]
    transform = model.backbone_record()[0].preprocessing().transform()
    crops = np.stack([transform.from_file(p) for p in val])
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(None, {"images": crops})
    np.testing.assert_allclose(probabilities, model.predict_proba(val), atol=1e-3)
    assert [model.classes_[i] for i in labels] == list(model.predict(val))


ONNX_ONLY = textwrap.dedent("""
    # What a consumer of model.onnx runs: onnxruntime, numpy and Pillow; no torch, no cnnfeat.
    import json, sys
    import numpy as np, onnxruntime as ort
    from PIL import Image

    session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    classes, prep = json.loads(meta["class_names"]), json.loads(meta["preprocessing"])

    def crop(path):
        image = Image.open(path).convert("RGB")
        scale = prep["resize_size"] / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)),
                             getattr(Image.Resampling, prep["interpolation"].upper()))
        left, top = (image.width - prep["crop_size"]) // 2, (image.height - prep["crop_size"]) // 2
        image = image.crop((left, top, left + prep["crop_size"], top + prep["crop_size"]))
        return np.asarray(image).transpose(2, 0, 1)

    paths = sys.argv[2:]
    labels, probabilities = session.run(None, {"images": np.stack([crop(p) for p in paths])})
    assert "torch" not in sys.modules and "cnnfeat" not in sys.modules
    print(json.dumps({"predicted": [classes[i] for i in labels], "probabilities": probabilities.tolist()}))
""")


def test_onnxruntime_alone_agrees_with_predict_on_hymenoptera(hymenoptera_lite0, tmp_path):
    features = load_features(hymenoptera_lite0)
    model, path = _saved(features, tmp_path)
    graph = export_onnx(path, tmp_path)
    val = [f"{features.data_root}/{p}" for p in features.paths[features.splits == "val"]]
    script = tmp_path / "consumer.py"
    script.write_text(ONNX_ONLY)
    done = subprocess.run([sys.executable, str(script), str(graph), *val], capture_output=True, text=True, check=True)
    alone = json.loads(done.stdout)
    predicted = model.predict(val)
    agreement = np.mean(np.asarray(alone["predicted"]) == predicted)
    difference = np.abs(np.asarray(alone["probabilities"]) - model.predict_proba(val))
    print(
        f"{len(val)} val images: agreement {agreement:.4f}, probability difference median "
        f"{np.median(difference):.2e} max {difference.max():.2e}"
    )
    assert len(val) == 153 and agreement >= 0.99
    assert np.median(difference) < 1e-3  # Pillow's resize differs from the tensor resize by a grey level here and there


def test_cli_export_and_its_errors(tinted_store, tmp_path):
    features = load_features(tinted_store)
    _, path = _saved(features, tmp_path, "knn", {"weights": "distance", "metric": "manhattan"})
    result = run("export", "--model", path, "--out", tmp_path / "x")
    assert_one_line_error(result, "cannot export this head to ONNX")
    assert not (tmp_path / "x" / "model.onnx").exists()
    _, path = _saved(features, tmp_path, "rf", {"n_estimators": 10})
    result = run("export", "--model", path, "--out", tmp_path / "x")
    assert result.exit_code == 0 and (tmp_path / "x" / "model.onnx").is_file()
    assert_one_line_error(run("export", "--model", tmp_path / "nope.joblib", "--out", tmp_path), "no such file")


def test_exporting_an_svm_warns_of_nothing(tinted_store, tmp_path):
    """skl2onnx's SVC converter reads probA_/probB_, deprecated in scikit-learn 1.9: `export` of an
    svm model printed two FutureWarnings a user can do nothing about."""
    _, path = _saved(load_features(tinted_store), tmp_path, "svm", {"kernel": "linear"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        result = run("export", "--model", path, "--out", tmp_path / "x")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "x" / "model.onnx").is_file() and "Warning" not in result.output
