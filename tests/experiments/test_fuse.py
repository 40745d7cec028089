"""Fused backbones: several feature files of the same images joined per image, searched like one."""

import json
from dataclasses import replace

import joblib
import numpy as np
import pytest
from sklearn.preprocessing import normalize

from classifiers import get_head
from common.errors import CnnfeatError
from experiments.compare import compare
from featurize import extract, load_features
from featurize.fuse import fuse_features
from tests.conftest import write_tinted
from tests.test_cli import assert_one_line_error, run

QUIET = {"log": lambda _: None}


@pytest.fixture(scope="module")
def two_backbones(tmp_path_factory):
    """The same folder through two random-weight backbones; one image deleted between the two runs,
    so the second file lacks it."""
    root = write_tinted(tmp_path_factory.mktemp("fuse") / "shapes", 20)
    out = tmp_path_factory.mktemp("fuse-artifacts")
    first = extract(data=root, backbone="resnet18", weights="random", out=out, workers=0, progress=False).store
    (root / "train" / "blue" / "b5.png").unlink()
    second = extract(
        data=root, backbone="mobilenet_v3_small", weights="random", out=out, workers=0, progress=False
    ).store
    return first, second


def test_fused_rows_join_each_image_and_name_the_ones_left_out(two_backbones):
    a, b = (load_features(p) for p in two_backbones)
    said = []
    fused, notes = fuse_features([a, b], said.append)
    assert len(fused.y) == len(a.y) - 1 and "train/blue/b5.png" not in fused.paths.tolist()
    assert notes == said and len(notes) == 1 and "1 image(s)" in notes[0] and "train/blue/b5.png" in notes[0]
    assert fused.X.shape[1] == a.X.shape[1] + b.X.shape[1] == fused.config["feature_dim"]
    for row, path in enumerate(fused.paths.tolist()):  # each row: the two files' own vectors, side by side
        i, j = a.paths.tolist().index(path), b.paths.tolist().index(path)
        assert np.array_equal(fused.X[row], np.concatenate([a.X[i], b.X[j]]))
        assert fused.y[row] == a.y[i] == b.y[j] and fused.splits[row] == a.splits[i]
    assert fused.fingerprint not in (a.fingerprint, b.fingerprint) and fused.files == (a.path, b.path)
    assert fuse_features([b, a], said.append)[0].fingerprint != fused.fingerprint  # order is part of it


def test_fusing_refuses_files_that_are_not_of_the_same_images(two_backbones):
    a, b = (load_features(p) for p in two_backbones)
    with pytest.raises(CnnfeatError, match="different datasets"):
        fuse_features([a, replace(b, dataset="other-1234abcd")], print)
    with pytest.raises(CnnfeatError, match="class names differ"):
        fuse_features([a, replace(b, class_names=["blue", "green"])], print)
    with pytest.raises(CnnfeatError, match="labels some images differently"):
        fuse_features([a, replace(b, y=1 - b.y)], print)


def test_the_fused_model_normalises_each_part_then_fits_the_head(two_backbones):
    """Against an independent computation: the head's own pipeline fitted on vectors that were
    L2-normalised part by part by hand gives the same probabilities."""
    a, b = (load_features(p) for p in two_backbones)
    fused, _ = fuse_features([a, b], print)
    outcome = compare(features=list(two_backbones), out=a.path.parents[1], clf="logreg", refit=True, **QUIET)
    row = next(r for r in outcome.rows if "+" in r.backbone)
    model = joblib.load(outcome.report_dir / "models" / f"{row.backbone}-logreg.joblib")
    train = fused.splits == "train"
    width = a.X.shape[1]
    by_hand = np.hstack([normalize(fused.X[:, :width]), normalize(fused.X[:, width:])])
    reference = get_head("logreg").build(0).set_params(**{f"clf__{k}": v for k, v in row.info["best_params"].items()})
    reference.fit(by_hand[train], fused.y[train])
    assert np.allclose(model.predict_proba(fused.X[~train]), reference.predict_proba(by_hand[~train]), atol=1e-6)
    assert np.allclose(model.predict_proba(fused), model.predict_proba(fused.X))  # fused Features accepted
    with pytest.raises(CnnfeatError, match="fingerprint"):
        model.predict_proba(a)  # one backbone's features are not the fused ones


def test_compare_adds_fused_rows_that_predict_from_images_and_are_reused(two_backbones, tmp_path):
    first, second = two_backbones
    result = run("compare", "--features", first, "--features", second, "--out", tmp_path, "--clf", "knn,logreg")
    assert result.exit_code == 0, result.output
    assert "left out of the fused rows: train/blue/b5.png" in result.output
    report = json.loads(next((tmp_path / "reports").glob("*/report.json")).read_text())
    fused_label = "resnet18-random+mobilenet_v3_small-random"
    assert sorted({r["backbone"] for r in report["rows"]}) == [
        "mobilenet_v3_small-random",
        "resnet18-random",
        fused_label,
    ]
    assert sorted(r["head"] for r in report["rows"] if r["backbone"] == fused_label) == ["knn", "logreg", "vote"]

    models = next((tmp_path / "reports").glob("*/models"))
    model = joblib.load(models / f"{fused_label}-logreg.joblib")
    data = load_features(first)
    images = [str(data.data_root + "/" + p) for p in data.paths[data.splits == "val"][:4]]
    fused, _ = fuse_features([data, load_features(second)], print)
    rows = [fused.paths.tolist().index(p) for p in data.paths[data.splits == "val"][:4].tolist()]
    assert np.allclose(model.predict_proba(images), model.predict_proba(fused.X[rows]), atol=1e-5)
    assert model.embed_images(images)[0].shape == (4, fused.X.shape[1])
    cli = run("predict", "--model", models / f"{fused_label}-logreg.joblib", *images, "--out", tmp_path / "p.csv")
    assert cli.exit_code == 0, cli.output
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 5

    again = run("compare", "--features", first, "--features", second, "--out", tmp_path, "--clf", "knn,logreg")
    assert again.output.count("nothing changed, reusing the fitted model") == 9  # 3 heads (vote too) x 3 labels

    alone = run(
        "compare",
        "--features",
        first,
        "--features",
        second,
        "--out",
        tmp_path / "none",
        "--clf",
        "knn",
        "--fuse",
        "none",
    )
    assert alone.exit_code == 0, alone.output
    rows = json.loads(next((tmp_path / "none" / "reports").glob("*/report.json")).read_text())["rows"]
    assert sorted(r["backbone"] for r in rows) == ["mobilenet_v3_small-random", "resnet18-random"]


def test_fused_models_are_refused_by_export_in_one_line(two_backbones, tmp_path):
    first, second = two_backbones
    outcome = compare(features=[first, second], out=tmp_path, clf="logreg", **QUIET)
    model = next(outcome.report_dir.glob("models/*+*-logreg.joblib"))
    assert_one_line_error(run("export", "--model", model, "--out", tmp_path / "onnx"), "joins the features of 2")
