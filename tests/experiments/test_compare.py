import csv
import json
import math
import zlib

import h5py
import numpy as np
import pytest
import torch
import torchvision

from common.errors import CnnfeatError
from experiments.compare import compare
from experiments.metrics import bootstrap_interval, mcnemar_p
from featurize import extract, load_features
from featurize.integrity import attributes_checksum
from tests.conftest import write_image
from tests.test_cli import assert_one_line_error, run

QUIET = {"log": lambda _: None}
HEADS = ["svm", "rf", "mlp", "knn", "logreg", "linear"]


def test_hymenoptera_compare_best_head_reaches_094_and_reuses_fits(hymenoptera_lite0, tmp_path):
    result = run("compare", "--features", hymenoptera_lite0, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    report = tmp_path / "reports" / hymenoptera_lite0.stem
    rows = json.loads((report / "report.json").read_text())["rows"]
    print("".join(f"\n{r['head']}: {r['accuracy']:.4f}" for r in rows))
    assert [r["head"] for r in rows] and sorted(r["head"] for r in rows) == sorted(HEADS + ["vote"])
    assert rows[0]["accuracy"] >= 0.94 and rows[0]["mcnemar_p_vs_best"] is None
    assert [r["accuracy"] for r in rows] == sorted((r["accuracy"] for r in rows), reverse=True)
    for r in rows:
        assert r["n"] == 153 and r["ci_low"] <= r["accuracy"] <= r["ci_high"] and r["log_loss"] is not None
        assert (report / "predictions" / f"efficientnet_lite0-{r['head']}.csv").is_file()
        assert (report / "confusion" / f"efficientnet_lite0-{r['head']}.png").stat().st_size > 1000
    for name in ("report.md", "report.csv", "summary.png"):
        assert (report / name).stat().st_size > 100
    assert "| 1 | efficientnet_lite0 |" in result.output  # the table is printed too
    with open(report / "predictions" / "efficientnet_lite0-svm.csv") as handle:
        predictions = list(csv.DictReader(handle))
    assert len(predictions) == 153 and list(predictions[0]) == ["path", "true", "predicted", "probability"]
    svm = next(r for r in rows if r["head"] == "svm")
    assert sum(p["true"] == p["predicted"] for p in predictions) / 153 == svm["accuracy"]

    again = run("compare", "--features", hymenoptera_lite0, "--out", tmp_path)
    assert again.output.count("nothing changed, reusing the fitted model") == len(HEADS) + 1
    rows_again = json.loads((report / "report.json").read_text())["rows"]
    assert [(r["head"], r["accuracy"], r["log_loss"]) for r in rows_again] == [
        (r["head"], r["accuracy"], r["log_loss"]) for r in rows
    ]


def test_same_seed_same_table_and_refit_searches_again(tinted_store, tmp_path):
    def table(*extra):
        outcome = compare(
            features=[tinted_store], out=tmp_path, clf="knn,logreg,linear", seed=3, **QUIET, **dict(extra)
        )
        return [
            (
                r.head,
                r.metrics["accuracy"],
                r.metrics["ci_low"],
                r.metrics["log_loss"],
                str(r.info["best_params"]),
                r.reused,
            )
            for r in outcome.rows
        ]

    first = table()
    refitted = table(("refit", True))
    assert not any(r[-1] for r in refitted) and [r[:-1] for r in refitted] == [r[:-1] for r in first]
    assert all(r[-1] for r in table())


def test_several_backbones_make_one_table(tinted_store, tmp_path):
    data = load_features(tinted_store).data_root
    other = extract(
        data=data, backbone="mobilenet_v3_small", weights="random", out=tmp_path, workers=0, progress=False
    ).store
    outcome = compare(features=[tinted_store, other], out=tmp_path, clf="logreg", **QUIET)
    dataset = load_features(tinted_store).dataset
    assert outcome.report_dir.name == f"{dataset}-resnet18-random+mobilenet_v3_small-random"
    # each file, and the two joined (tests/experiments/test_fuse.py)
    assert sorted(r.backbone for r in outcome.rows) == [
        "mobilenet_v3_small-random",
        "resnet18-random",
        "resnet18-random+mobilenet_v3_small-random",
    ]
    assert all(r.metrics["n"] == 12 for r in outcome.rows)


def test_one_backbone_twice_keeps_both_sets_of_outputs(tinted_store, tmp_path):
    """Pretrained and fine-tuned weights of one backbone: two rows, two models, two prediction files."""
    features = load_features(tinted_store)
    torch.manual_seed(5)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "tuned.pth")
    tuned = extract(
        data=features.data_root,
        backbone="resnet18",
        weights=str(tmp_path / "tuned.pth"),
        out=tmp_path,
        workers=0,
        progress=False,
    ).store
    outcome = compare(features=[tinted_store, tuned], out=tmp_path, clf="knn", **QUIET)
    labels = sorted(r.backbone for r in outcome.rows)
    assert labels[0].startswith("resnet18-ft") and labels[1] == "resnet18-random"
    for label in labels:
        assert (outcome.report_dir / "models" / f"{label}-knn.joblib").is_file()
        assert (outcome.report_dir / "predictions" / f"{label}-knn.csv").is_file()
    with pytest.raises(CnnfeatError, match="one dataset's held-out images; these feature files are of 2 datasets"):
        other = _store(tmp_path, [("train", "a", 6), ("train", "b", 6), ("val", "a", 2), ("val", "b", 2)])
        compare(features=[tinted_store, other], out=tmp_path, clf="knn", **QUIET)


def test_reuse_needs_every_input_unchanged_and_a_loadable_model(tinted_store, tmp_path, monkeypatch):
    def heads(*args, **kwargs):
        logs = []
        outcome = compare(*args, features=[tinted_store], out=tmp_path, clf="knn", log=logs.append, **kwargs)
        return outcome, " ".join(logs)

    first, _ = heads()
    model = first.report_dir / "models" / "resnet18-random-knn.joblib"
    assert not first.rows[0].reused and heads()[0].rows[0].reused
    model.unlink()  # a .json without its .joblib: fitted again, not reported as a failure
    again, said = heads()
    assert not again.rows[0].reused and not again.failures and "fitting it again" in said and model.is_file()
    import experiments.reuse as module

    real = module.library_versions
    monkeypatch.setattr(module, "library_versions", lambda packages: {**real(packages), "scikit-learn": "0.0"})
    assert not heads()[0].rows[0].reused  # another scikit-learn: searched again


def _row(head, truth, predicted):
    from experiments.ranking import Row

    return Row("b", head, {}, [f"{i}.png" for i in range(len(truth))], truth, predicted, None, ["x", "y"])


def test_rows_are_ranked_by_the_chosen_score():
    from experiments.ranking import score_rows

    truth = ["x"] * 8 + ["y"] * 2

    def ranked(scoring):
        rows = [
            _row("always_x", truth, ["x"] * 10),  # accuracy 0.8, balanced accuracy 0.5
            _row("fair", truth, ["x"] * 5 + ["y"] * 5),
        ]  # accuracy 0.7, balanced accuracy 0.8125
        score_rows(rows, scoring, seed=0)
        return [r.head for r in rows], [r.metrics["mcnemar_p_vs_best"] for r in rows]

    # the two disagree on 5 images: 3 only always_x gets right, 2 only fair: exact p = 2 x P(B(5, 1/2) <= 2) = 1
    assert ranked("accuracy") == (["always_x", "fair"], [None, 1.0])
    assert ranked("balanced_accuracy") == (["fair", "always_x"], [None, 1.0])
    assert ranked("f1_macro")[0] == ["fair", "always_x"]


def test_names_from_a_shared_file_never_leave_out(tinted_store, tmp_path):
    hostile = tmp_path / "shared" / "hostile.h5"
    hostile.parent.mkdir()
    hostile.write_bytes(tinted_store.read_bytes())
    for attribute, value in (("dataset", "../../evil"), ("config", "backbone")):
        with h5py.File(hostile, "a") as h5:
            if attribute == "config":
                config = json.loads(h5.attrs["config"])
                h5.attrs["config"] = json.dumps({**config, "backbone": "../../../evil"})
            else:
                h5.attrs["dataset"] = value
            sealed = json.loads(h5.attrs["sealed"])  # resealed, as whoever crafts a file can
            h5.attrs["sealed"] = json.dumps({**sealed, "attributes": attributes_checksum(h5.attrs)})
        before = sorted(p for p in tmp_path.rglob("*"))
        result = run("compare", "--features", hostile, "--out", tmp_path / "out", "--clf", "knn", "--quiet")
        assert_one_line_error(result, "is not a plain name", "evil")
        assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere


def _store(tmp_path, layout):
    """Images of each (split, class, count), seeded by their place (the same pixels in every run:
    `hash()` of a str is salted per process)."""
    for split, name, count in layout:
        for i in range(count):
            seed = zlib.crc32(f"{split}/{name}/{i}".encode()) % 1000
            write_image(tmp_path / "d" / split / name / f"{i}.png", seed=seed)
    return extract(
        data=tmp_path / "d", backbone="resnet18", weights="random", out=tmp_path, workers=0, progress=False
    ).store


def test_single_image_per_class_is_a_clear_message(tmp_path):
    store = _store(tmp_path, [("", "a", 1), ("", "b", 1)])
    with pytest.raises(CnnfeatError, match="too few images to hold some out"):
        compare(features=[store], out=tmp_path, **QUIET)


def test_class_missing_from_val_is_noted(tmp_path):
    store = _store(
        tmp_path, [("train", "a", 6), ("train", "b", 6), ("train", "c", 6), ("val", "a", 2), ("val", "b", 2)]
    )
    outcome = compare(features=[store], out=tmp_path, clf="logreg", cv=3, **QUIET)
    assert any("class c has no val images" in n for n in outcome.notes)
    assert "class c has no val images" in (outcome.report_dir / "report.md").read_text()


def test_empty_val_falls_back_to_a_stated_holdout(tmp_path):
    store = _store(tmp_path, [("train", "a", 10), ("train", "b", 10)])
    (tmp_path / "d" / "val" / "a").mkdir(parents=True)  # a val/ folder with no images
    outcome = compare(features=[store], out=tmp_path, clf="knn", cv=3, **QUIET)
    assert outcome.rows[0].metrics["n"] == 4
    assert any(
        "no val/ or test/ rows: scoring on a stratified 20% hold-out of the train rows" in n for n in outcome.notes
    )


def test_statistics_against_independent_computations():
    rng = np.random.default_rng(0)
    a, b = rng.random(200) < 0.9, rng.random(200) < 0.8
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    exact = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    assert mcnemar_p(a, b) == pytest.approx(exact, rel=1e-9)
    assert mcnemar_p(a, a) == 1.0
    low, high = bootstrap_interval(a, seed=1)
    normal = 1.96 * math.sqrt(a.mean() * (1 - a.mean()) / len(a))
    assert low < a.mean() < high and abs((high - low) / 2 - normal) < 0.01
    # Drawn as counts, the resamples match resampling the images themselves (2,000 index vectors).
    resampled = a[rng.integers(0, len(a), size=(2000, len(a)))].mean(axis=1)
    assert np.percentile(resampled, [2.5, 97.5]) == pytest.approx([low, high], abs=0.011)
    low, high = bootstrap_interval(np.ones(10**7, bool) & (np.arange(10**7) % 10 > 0))  # 10M images, no 2000 x n
    assert low < 0.9 < high and high - low < 0.001


def test_a_budget_is_said_in_the_report(tinted_store, tmp_path):
    result = run(
        "compare",
        "--features",
        tinted_store,
        "--out",
        tmp_path,
        "--clf",
        "knn",
        "--budget",
        "0.000001",
        "--jobs",
        "1",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    report = next((tmp_path / "reports").iterdir()) / "report.md"
    assert "knn: the 1e-06 s budget ran out after 2 of 28 candidates" in report.read_text()


def test_all_leaves_out_heads_too_slow_for_the_size_and_naming_one_runs_it(tinted_store, tmp_path, monkeypatch):
    """Above a head's stated size `--clf all` leaves it out with a note (lowered here to the 36
    training rows of the tinted set); named, it runs."""
    import dataclasses

    from classifiers.heads import HEADS

    for name in [n for n in HEADS if n != "logreg"]:
        monkeypatch.setitem(HEADS, name, dataclasses.replace(HEADS[name], scales_badly_above=10))
    logs = []
    outcome = compare(features=[tinted_store], out=tmp_path, clf="all", jobs=1, log=logs.append)
    assert [row.head for row in outcome.rows] == ["logreg"]
    assert any(
        "knn left out of --clf all: 36 training rows is past 10" in note and "--clf knn runs it anyway" in note
        for note in outcome.notes
    )
    assert "left out of --clf all" in (outcome.report_dir / "report.md").read_text()
    named = compare(features=[tinted_store], out=tmp_path, clf="knn", jobs=1, log=logs.append)
    assert [row.head for row in named.rows] == ["knn"]


def test_report_html_holds_the_table_and_every_picture_inline(tinted_store, tmp_path):
    import base64
    import re

    outcome = compare(features=[tinted_store], out=tmp_path, clf="knn,logreg", **QUIET)
    page = (outcome.report_dir / "report.html").read_text()
    assert "<td>knn</td>" in page and "<td>logreg</td>" in page and "<td>vote</td>" in page
    pictures = [base64.b64decode(data) for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]
    files = [
        outcome.report_dir / "summary.png",
        outcome.report_dir / "embedding.png",
        outcome.report_dir / "per_class.png",
        *(outcome.report_dir / "confusion" / f"resnet18-random-{h}.png" for h in ("knn", "logreg", "vote")),
    ]
    assert sorted(pictures) == sorted(f.read_bytes() for f in files)  # opens offline: nothing linked
    assert 'src="http' not in page and "href=" not in page


def test_compare_on_a_hundred_classes_prints_no_plotting_warning(tmp_path):
    """`cli.py compare` on 100 held-out classes once put 101 entries in the t-SNE legend, which matplotlib
    could not lay out: a `UserWarning: Tight layout not applied` with a file path on the user's
    screen, and a plot covered by its legend. Now past 30 classes the legend names the mistakes only."""
    import subprocess
    import sys

    from tests.conftest import REPO, generated_store

    store = generated_store(tmp_path, 1_010, dim=8, classes=101)[0]  # every fifth row val: all 101 held out
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "cli.py"),
            "compare",
            "--features",
            str(store),
            "--out",
            str(tmp_path / "out"),
            "--clf",
            "logreg",
            "--ensemble",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "Tight layout" not in done.stderr and "UserWarning" not in done.stderr, done.stderr
    assert (tmp_path / "out" / "reports" / "scale" / "embedding.png").stat().st_size > 0


@pytest.mark.parametrize("classes", [3, 101])
def test_the_embedding_legend_names_each_class_and_the_mistakes_until_there_are_too_many(classes):
    """Up to LEGEND_AT_MOST classes the t-SNE legend names every class, then the mistakes ringed in
    red (their count worked out here); past it, the mistakes only (and the title says the classes
    are unnamed)."""
    from experiments.plots import LEGEND_AT_MOST, Embedding, embedding_figure, pyplot

    rows = 2 * classes
    truth = [f"c{i % classes:03d}" for i in range(rows)]
    predicted = [name if i % 5 else "c000" for i, name in enumerate(truth)]
    mistakes = f"mistakes ({sum(t != p for t, p in zip(truth, predicted))})"
    vectors = np.random.default_rng(0).random((rows, 8), dtype=np.float32)
    figure = embedding_figure(Embedding(vectors, truth, predicted, "the test's"), seed=0)
    try:
        legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
        title = figure.axes[0].get_title()
    finally:
        pyplot().close(figure)
    if classes > LEGEND_AT_MOST:
        assert legend == [mistakes] and f"{classes} classes, unnamed" in title
    else:
        assert legend == [f"c{c:03d}" for c in range(classes)] + [mistakes] and "unnamed" not in title


def test_log_loss_of_numbered_classes_scores_each_image_against_its_own_class(tmp_path):
    """Class folders 0..10 sort as numbers ("2" before "10"), not as scikit-learn's log_loss sorts
    labels ("10" before "2"): the report's log-loss once paired images with other classes'
    probabilities. Checked against -mean log p(true class) from the saved model, loaded with joblib."""
    import joblib

    from tests.conftest import write_image

    root = tmp_path / "digits"
    for c in range(11):
        for i in range(6):
            write_image(
                root / ("val" if i < 2 else "train") / str(c) / f"{i}.png",
                seed=20 * c + i,
                tint=(1.0, 0.3 + 0.07 * c, 1.0 - 0.07 * c),
            )
    store = extract(
        data=root, backbone="resnet18", weights="random", out=tmp_path / "out", workers=0, progress=False
    ).store
    result = run("compare", "--features", store, "--out", tmp_path / "out", "--clf", "logreg", "--ensemble", "none")
    assert result.exit_code == 0, result.output
    report = tmp_path / "out" / "reports" / store.stem
    reported = json.loads((report / "report.json").read_text())["rows"][0]["log_loss"]
    model = joblib.load(next((report / "models").glob("*-logreg.joblib")))
    features = load_features(store)
    val = features.splits == "val"
    proba = model.predict_proba(features.X[val])
    truth = np.asarray(features.class_names, dtype=object)[features.y[val]]
    column = np.array([list(model.classes_).index(name) for name in truth])
    assert features.class_names[:3] == ["0", "1", "2"] and len(set(truth)) == 11
    assert reported == pytest.approx(-np.log(proba[np.arange(len(truth)), column]).mean(), rel=1e-6)


def test_an_empty_clf_is_refused_not_read_as_all(tinted_store, tmp_path):
    assert_one_line_error(
        run("compare", "--features", tinted_store, "--out", tmp_path, "--clf", ""), "--clf '': no head named"
    )


def test_compare_settings_take_a_search_method_by_name_and_finetune_as_a_flag():
    from classifiers import SearchSettings
    from experiments.compare import CompareSettings, compare_settings
    from experiments.finetune import FinetuneSettings

    settings = compare_settings(search="halving", finetune=True, cv=3, clf="knn")
    assert settings.search == SearchSettings(search="halving", cv=3)
    assert settings.finetune == FinetuneSettings() and settings.clf == "knn"
    assert compare_settings(CompareSettings(finetune=FinetuneSettings()), finetune=False).finetune is None
    given = SearchSettings(seed=7)
    assert compare_settings(search=given, jobs=1).search == SearchSettings(seed=7, jobs=1)
    with pytest.raises(CnnfeatError):
        compare_settings(search="no-such-method")


def test_a_narrower_compare_leaves_no_outputs_of_rows_it_no_longer_has(tinted_store, tmp_path):
    """A head named twice is one row; the predictions and confusion matrix of a head the earlier
    compare had and this one has not are removed with it (its fitted model stays, for reuse)."""
    wide = compare(features=[tinted_store], out=tmp_path, clf="knn,logreg", ensemble="none", **QUIET)
    folder = wide.report_dir
    assert sorted(p.name for p in (folder / "predictions").iterdir()) == [
        f"{tinted_store.stem.split('-', 2)[-1]}-{h}.csv" for h in ("knn", "logreg")
    ]
    narrow = compare(features=[tinted_store], out=tmp_path, clf="logreg, logreg", ensemble="none", **QUIET)
    assert narrow.report_dir == folder and [r.head for r in narrow.rows] == ["logreg"]
    assert [p.name.rsplit("-", 1)[-1] for p in (folder / "predictions").iterdir()] == ["logreg.csv"]
    assert [p.name.rsplit("-", 1)[-1] for p in (folder / "confusion").iterdir()] == ["logreg.png"]
    assert any(p.name.endswith("-knn.joblib") for p in (folder / "models").iterdir())
