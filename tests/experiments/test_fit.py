import csv
import json
import shutil
import subprocess
import sys

import h5py
import joblib
import numpy as np
import pytest

from experiments.fit import fit_model
from experiments.splits import train_eval_split
from featurize import extract, load_features
from featurize.discovery import find_images
from tests.conftest import REPO, generated_store, write_image
from tests.test_cli import assert_one_line_error, run

QUIET = {"log": lambda _: None}


@pytest.mark.parametrize("head", ["svm", "rf", "mlp", "knn", "logreg"])
def test_every_head_reaches_092_on_hymenoptera_val(hymenoptera_lite0, tmp_path, head):
    outcome = fit_model(features=hymenoptera_lite0, out=tmp_path, clf=head, **QUIET)
    held = outcome.info["heldout"]
    print(f"{head}: val accuracy {held['accuracy']:.4f}, CV {outcome.info['cv']['mean']:.4f}")
    assert held["evaluated_on"] == "val" and held["n"] == 153 and held["train_rows"] == 245
    assert held["accuracy"] >= 0.92
    saved = json.loads(outcome.json_path.read_text())
    assert saved["heldout"]["accuracy"] == held["accuracy"] and saved["class_names"] == ["ants", "bees"]
    assert saved["feature_fingerprint"] == load_features(hymenoptera_lite0).fingerprint
    assert outcome.model_path.name == f"{hymenoptera_lite0.stem}-{head}.joblib"
    assert saved["selection"] == "grid search, 5-fold CV on train"  # 245 rows: the full grid is quick
    assert saved["fit_seconds"] == pytest.approx(saved["search_seconds"] + saved["refit_seconds"], abs=0.002)


def test_predict_csv_matches_a_fresh_interpreter(tinted_store, tmp_path, monkeypatch):
    fitted = run("fit", "--clf", "knn", "--features", tinted_store, "--out", tmp_path)
    assert fitted.exit_code == 0, fitted.output
    model_path = tmp_path / "models" / f"{tinted_store.stem}-knn.joblib"
    features = load_features(tinted_store)
    folder = tmp_path / "val"
    shutil.copytree(f"{features.data_root}/val", folder)
    (tmp_path / "broken.png").write_bytes(b"nope")
    (folder / "blue" / "b2-broken.png").write_bytes(b"nope")  # a bad file amid the good ones
    result = run(
        "predict",
        "--model",
        model_path,
        folder,
        tmp_path / "broken.png",
        "--out",
        tmp_path / "p.csv",
        "--quiet",
        "--batch-size",
        "5",
    )  # written batch by batch: rows still in input order
    assert result.exit_code == 0 and "14 images, 2 unreadable" in result.output
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert [r["path"] for r in rows] == [*map(str, find_images(folder)), str(tmp_path / "broken.png")]
    assert [r["path"].endswith("broken.png") for r in rows] == [r["error"] != "" for r in rows]
    assert list(rows[0]) == ["path", "predicted", "probability", "p_blue", "p_red", "error"]
    assert rows[-1]["error"] == "not an image PIL can read" and rows[-1]["predicted"] == ""
    good = [r for r in rows if not r["error"]]
    code = (
        "import joblib, json, sys; m = joblib.load(sys.argv[1]); paths = json.loads(sys.argv[2]); "
        "print(json.dumps([list(m.predict(paths)), m.predict_proba(paths).tolist()]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(model_path), json.dumps([r["path"] for r in good])],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    classes, proba = json.loads(out)
    assert classes == [r["predicted"] for r in good]
    np.testing.assert_allclose([[float(r["p_blue"]), float(r["p_red"])] for r in good], proba, atol=1e-6)

    monkeypatch.chdir(tmp_path)  # no --out: under the default output root, named by the model
    default = run("predict", "--model", model_path, folder, tmp_path / "broken.png", "--quiet")
    written = tmp_path / "artifacts" / "predictions" / f"{tinted_store.stem}-knn.csv"
    assert default.output.strip() == f"14 images, 2 unreadable: artifacts/predictions/{written.name}"
    assert written.read_bytes() == (tmp_path / "p.csv").read_bytes()

    # A mistyped folder: nothing readable at all is an error, and the CSV of the run before stays
    typo = run("predict", "--model", model_path, tmp_path / "vall", "--quiet")
    assert_one_line_error(typo, "none of the 1 images could be read", "vall: file not found", "left as it was")
    assert written.read_bytes() == (tmp_path / "p.csv").read_bytes()


def test_no_split_gets_a_recorded_holdout_the_same_for_every_head(tmp_path):
    for i in range(15):
        write_image(tmp_path / "data" / "red" / f"{i}.png", seed=i, tint=(1, 0.4, 0.4))
        write_image(tmp_path / "data" / "blue" / f"{i}.png", seed=50 + i, tint=(0.4, 0.4, 1))
    store = extract(
        data=tmp_path / "data", backbone="resnet18", weights="random", out=tmp_path, workers=0, progress=False
    ).store
    features = load_features(store)
    first, second = train_eval_split(features, seed=7), train_eval_split(features, seed=7)
    assert first.name == "holdout" and len(first.heldout) == 6 and np.array_equal(first.heldout, second.heldout)
    assert not set(first.train) & set(first.heldout)
    splits = [
        fit_model(features=store, out=tmp_path, clf=h, seed=7, cv=3, **QUIET).info["heldout"] for h in ("knn", "logreg")
    ]
    assert splits[0]["holdout_seed"] == 7 and all(
        {k: s[k] for k in ("train_rows", "eval_rows", "evaluated_on")}
        == {"train_rows": 24, "eval_rows": 6, "evaluated_on": "holdout"}
        for s in splits
    )


def test_fit_takes_the_newest_feature_file_and_says_so(tinted_store, tmp_path):
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / tinted_store.name).write_bytes(tinted_store.read_bytes())
    result = run("fit", "--clf", "logreg", "--out", tmp_path, "--grid", '{"C": [1.0]}')
    assert result.exit_code == 0, result.output
    assert "features: " in result.output and f"{tinted_store.name} (the newest under" in result.output
    assert "logreg: grid search over 1 candidates x 5 folds on 36 rows" in result.output


def test_a_class_smaller_than_the_folds_lowers_them(tinted_store, tmp_path):
    result = run("fit", "--clf", "logreg", "--features", tinted_store, "--out", tmp_path, "--cv", "30")
    assert result.exit_code == 0 and "has only 18 training images: using 18-fold cross-validation" in result.output


def _store_with(tmp_path, classes):
    for name, count in classes.items():
        for i in range(count):
            write_image(tmp_path / "d" / name / f"{i}.png", seed=i)
    return extract(
        data=tmp_path / "d", backbone="resnet18", weights="random", out=tmp_path / "o", workers=0, progress=False
    ).store


def _record_beside(path):
    from common.hashing import file_sha256

    path.with_suffix(".json").write_text(json.dumps({"sha256": file_sha256(path)}))


@pytest.mark.parametrize(
    "case",
    [
        "unknown head",
        "no feature file",
        "incomplete file",
        "one class",
        "bad grid",
        "unknown parameter",
        "corrupt model",
        "foreign model",
    ],
)
def test_bad_input_is_one_line(tinted_store, tmp_path, case):
    if case == "unknown head":
        result = run("fit", "--clf", "xgboost", "--features", tinted_store)
        fragments = ["unknown head 'xgboost'", "logreg"]
    elif case == "no feature file":
        result = run("fit", "--clf", "svm", "--out", tmp_path)
        fragments = ["no feature file under", "cnnfeat extract"]
    elif case == "incomplete file":
        copy = tmp_path / "copy.h5"
        copy.write_bytes(tinted_store.read_bytes())
        with h5py.File(copy, "a") as h5:
            h5.attrs["complete"] = False
        result = run("fit", "--clf", "svm", "--features", copy)
        fragments = ["incomplete feature file"]
    elif case == "one class":
        result = run("fit", "--clf", "svm", "--features", _store_with(tmp_path, {"only": 8}), "--out", tmp_path)
        fragments = ["one class only"]
    elif case == "bad grid":
        result = run("fit", "--clf", "svm", "--features", tinted_store, "--grid", "{C: 1", "--out", tmp_path)
        fragments = ["--grid: neither a JSON file nor valid JSON"]
    elif case == "unknown parameter":
        result = run("fit", "--clf", "rf", "--features", tinted_store, "--grid", '{"depth": [2]}', "--out", tmp_path)
        fragments = ["rf has no parameter 'depth'", "max_features"]
    elif case == "corrupt model":  # beside a record that vouches for it: what is inside is then read
        (tmp_path / "m.joblib").write_bytes(b"garbage")
        _record_beside(tmp_path / "m.joblib")
        result = run("predict", "--model", tmp_path / "m.joblib", tmp_path)
        fragments = ["not a readable model file"]
    else:
        joblib.dump([1, 2], tmp_path / "m.joblib")
        _record_beside(tmp_path / "m.joblib")
        result = run("predict", "--model", tmp_path / "m.joblib", tmp_path)
        fragments = ["not a cnnfeat model (it holds a list)"]
    assert_one_line_error(result, *fragments)


@pytest.mark.parametrize(
    "clf,grid,fragments",
    [
        ("svm", '{"C": [-1]}', ["svm cannot take C=-1", "must be a float in the range (0.0, inf]"]),  # a traceback
        ("logreg", '{"C": [-1]}', ["logreg cannot take C=-1", "LogisticRegression"]),
        ("logreg", '{"C": [1, "x"]}', ['logreg cannot take C="x"']),  # was skipped, with a warning, among good ones
        ("svm", '{"kernel": ["poly"]}', ['svm cannot take kernel="poly"']),  # SVC takes it; our svm does not
        ("svm", '{"C": []}', ["C has an empty list of values"]),  # a traceback
        ("svm", "[]", ["expected a JSON object of parameter -> list of values, or a list of such objects; got []"]),
        ("svm", '[{"C": [1]}, 2]', ["expected a JSON object", "got 2"]),
        ("linear", '{"lr": [-1]}', ["linear cannot take lr=-1", "range (0.0, inf)"]),  # a traceback
        ("linear", '{"batch_size": [0]}', ["linear cannot take batch_size=0"]),  # ZeroDivisionError
        ("linear", '{"epochs": [0]}', ["linear cannot take epochs=0"]),  # fitted nothing, saved, accuracy 0.34
        ("linear", '{"weight_decay": [-1]}', ["linear cannot take weight_decay=-1"]),  # fitted and saved
        ("linear", '{"optimizer": ["nope"]}', ['linear cannot take optimizer="nope"', "'adamw'"]),
        ("knn", '{"n_neighbors": [1000]}', ["n_neighbors 1000", "rows of a training fold"]),  # fitted n_neighbors=1
    ],
)
def test_a_grid_the_head_cannot_search_is_one_line_before_any_fit(tinted_store, tmp_path, clf, grid, fragments):
    result = run("fit", "--clf", clf, "--features", tinted_store, "--out", tmp_path, "--grid", grid)
    assert_one_line_error(result, *fragments)  # one line: not even the search's first


def test_a_grid_whose_every_fit_fails_is_one_error_line(tinted_store, tmp_path):
    """A value no parameter check refuses but every fit does (an MLP layer of no units)."""
    result = run(
        "fit",
        "--clf",
        "mlp",
        "--features",
        tinted_store,
        "--out",
        tmp_path,
        "--jobs",
        1,
        "--grid",
        '{"hidden_layer_sizes": [[0]], "alpha": [1]}',
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == (
        "Error: mlp: its fits failed (ValueError: hidden_layer_sizes must be > 0, got [0].); check --grid"
    )


def test_a_long_grid_given_inline_is_read_as_json(tinted_store, tmp_path):
    """Asking whether a grid longer than a file name may be is a file raised OSError (a traceback)."""
    grid = json.dumps(
        [
            {"kernel": ["linear"], "C": [0.01, 0.1, 1.0]},
            {"kernel": ["rbf"], "C": [0.1, 1.0, 10.0], "gamma": ["scale", 0.001, 0.01]},
        ],
        indent=4,
    )
    assert len(grid) > 255
    result = run("fit", "--clf", "svm", "--features", tinted_store, "--out", tmp_path, "--jobs", 1, "--grid", grid)
    assert result.exit_code == 0, result.output
    assert "svm: grid search over 12 candidates" in result.output


def test_a_best_value_at_the_edge_of_its_grid_is_flagged_with_a_wider_grid(tmp_path):
    """The svm chose C=1e-4, the smallest value of its grid, and nothing said so. On these vectors a
    linear svm does best at C=0.01 (CV 0.99; 0.3 at 1e-3, 0.98 at 0.1)."""
    store = generated_store(tmp_path, 300)[0]

    def fit(values):
        result = run(
            "fit",
            "--clf",
            "svm",
            "--features",
            store,
            "--out",
            tmp_path,
            "--jobs",
            1,
            "--grid",
            json.dumps([{"kernel": ["linear"], "C": values}]),
        )
        assert result.exit_code == 0, result.output
        return result.output, json.loads((tmp_path / "models" / "scale-svm.json").read_text())

    output, saved = fit([0.01, 0.1, 1.0])
    note = (
        "svm: best C=0.01 is the smallest value of its grid (0.01 to 1): the best may lie past it; widen the "
        """grid, e.g. --grid '{"C": [0.0001, 0.001, 0.01, 0.1, 1]}'"""
    )
    assert saved["best_params"]["C"] == 0.01 and note in output
    assert saved["notes"] == [note]  # what compare's report lists as its notes
    output, saved = fit([0.0001, 0.001, 0.01, 0.1, 1])  # the advice, followed: no note sends the user back
    assert saved["best_params"]["C"] == 0.01 and saved["notes"] == [] and "best C=" not in output


@pytest.mark.parametrize("clf", ["linear", "logreg"])
def test_fit_holds_the_training_rows_not_the_whole_matrix_beside_them(tmp_path, monkeypatch, clf):
    """The fault: at a million rows `fit` held X, its training rows, the search's copy of them, that
    copy scaled, and the scaler's float64 temporaries (19.5 GB peak for a 4.9 GB matrix). Now X stays
    in the file, the path search scales its copy in place, and the scaler fits in chunks: measured
    here 1.8x the matrix at the peak, where the old code reached 4.1x. And the model is the one
    fitted on the matrix in memory."""
    import tracemalloc

    import classifiers.scaling
    from classifiers import heads
    from experiments.fit import fit_and_score
    from tests.conftest import generated_store

    monkeypatch.setattr(heads, "MINIBATCH_ABOVE", 1_000)  # logreg on mini-batches, as at a million rows
    # its chunk as small beside 20 MB as 64 MB beside 4 GB
    monkeypatch.setattr(classifiers.scaling, "FIT_BYTES", 1 << 20)
    grid = {"epochs": [2], **({"weight_decay": [1e-3, 1e-1]} if clf == "linear" else {"C": [0.1, 10.0]})}
    (tmp_path / "small").mkdir()
    fit_model(
        generated_store(tmp_path / "small", 2_000, dim=256)[0], out=tmp_path, clf=clf, grid=grid, log=lambda _: None
    )  # imports done before measuring: they allocate tens of MB
    store, _, _, _, X = generated_store(tmp_path, 20_000, dim=256)  # 20 MB: the paths' strings are a few %
    tracemalloc.start()
    outcome = fit_model(store, out=tmp_path, clf=clf, grid=grid, log=lambda _: None)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2.3 * X.nbytes, peak / X.nbytes
    data = load_features(store)  # the same fit from the matrix in memory
    in_memory = fit_and_score(data, train_eval_split(data), clf, grid, log=lambda _: None)
    saved = joblib.load(outcome.model_path)
    np.testing.assert_allclose(saved.predict_proba(X[:500]), in_memory.model.predict_proba(X[:500]), atol=1e-6)
    assert outcome.info["heldout"]["accuracy"] == in_memory.info["heldout"]["accuracy"] > 0.5
