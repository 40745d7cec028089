"""compare answers "which model do I ship, and where does it fail?": every backbone of the dataset in
one table by default, fits reused across report folders, the recommended row, per-class scores."""

from __future__ import annotations

import csv
import json

import joblib
import numpy as np
import pytest

from experiments.per_class import class_scores, confused_pairs, mistakes
from experiments.plots import fitted_title
from experiments.ranking import Row, score_rows
from experiments.recommend import SIGNIFICANT_P, recommend
from tests.conftest import write_tinted
from tests.test_cli import cli_process

FAST = ("--clf", "logreg,knn", "--cv", "2", "--ensemble", "none", "--jobs", "1", "--quiet")


def _row(backbone, head, correct, predict_ms, truth=None):
    """A scored-row stand-in: `correct` says which of the held-out images it got right."""
    truth = truth or ["a", "b"] * (len(correct) // 2)
    other = {"a": "b", "b": "a"}
    predicted = [t if ok else other[t] for t, ok in zip(truth, correct)]
    info = {"predict_seconds_per_image": predict_ms / 1000}
    paths = [f"img{i}.png" for i in range(len(truth))]
    return Row(
        backbone, head, info, paths, truth, predicted, None, ["a", "b"], model=object(), model_path=f"{head}.joblib"
    )


def _ranked(*rows):
    rows = list(rows)
    score_rows(rows, "accuracy", 0)
    return rows


def test_the_best_row_is_recommended_when_every_other_is_significantly_worse():
    best = _row("x", "svm", [True] * 40, predict_ms=5.0)
    worse = _row("x", "knn", [True] * 20 + [False] * 20, predict_ms=0.1)
    rows = _ranked(worse, best)
    assert rows[1].metrics["mcnemar_p_vs_best"] < SIGNIFICANT_P
    chosen = recommend(rows, {"x": ("net",)}, timer=pytest.fail)
    assert chosen.row is best and chosen.contenders == [best]
    assert "every other row is significantly worse" in chosen.text()


def test_the_fastest_row_not_significantly_worse_is_recommended():
    best = _row("x", "svm", [True] * 40, predict_ms=5.0)
    close = _row("x", "logreg", [True] * 38 + [False] * 2, predict_ms=0.05)
    slow = _row("x", "mlp", [True] * 39 + [False], predict_ms=9.0)
    rows = _ranked(slow, close, best)
    chosen = recommend(rows, {"x": ("net",)}, timer=pytest.fail)  # one backbone: not timed, it costs all rows alike
    assert chosen.best is best and chosen.row is close
    assert {id(r) for r in chosen.contenders} == {id(best), id(close), id(slow)}
    assert f"p = {close.metrics['mcnemar_p_vs_best']:.3f} >= {SIGNIFICANT_P}" in chosen.text()
    assert chosen.commands()[0] == "model: logreg.joblib"


def test_a_fused_row_pays_every_backbone_it_needs():
    """A head as fast on two backbones' vectors loses to one on a single, cheaper backbone."""
    fused = _row("small+large", "logreg", [True] * 40, predict_ms=0.1)
    large = _row("large", "logreg", [True] * 39 + [False], predict_ms=0.1)
    small = _row("small", "logreg", [True] * 38 + [False] * 2, predict_ms=0.2)
    rows = _ranked(small, large, fused)
    times = {"small": 3.0, "large": 30.0}
    passes = {"small": ("small",), "large": ("large",), "small+large": ("small", "large")}
    chosen = recommend(rows, passes, timer=times.__getitem__, log=lambda _: None)
    assert chosen.row is small
    assert chosen.ms_per_image[id(fused)] == pytest.approx(33.1)
    assert chosen.ms_per_image[id(small)] == pytest.approx(3.2)


def test_per_class_scores_and_confused_pairs_count_what_the_rows_did():
    truth = ["a", "a", "b", "b", "c", "c"]
    one = Row("x", "h1", {}, list("123456"), truth, ["a", "b", "b", "a", "c", "a"], None, ["a", "b", "c"])
    two = Row("x", "h2", {}, list("123456"), truth, ["b", "a", "b", "b", "c", "c"], None, ["a", "b", "c"])
    scores = {s["class"]: s for s in class_scores(one)}
    assert scores["a"]["precision"] == pytest.approx(1 / 3) and scores["a"]["recall"] == pytest.approx(0.5)
    assert scores["b"]["support"] == 2 and scores["c"]["recall"] == pytest.approx(0.5)
    pairs = confused_pairs([one, two])
    assert (pairs[0].first, pairs[0].second, pairs[0].total, pairs[0].rows) == ("a", "b", 3, 2)
    assert (pairs[1].first, pairs[1].second, pairs[1].first_as_second, pairs[1].second_as_first) == ("a", "c", 0, 1)
    assert [m.path for found in mistakes(one).values() for m in found] == ["2", "4", "6"]


def test_a_title_too_long_for_its_picture_is_wrapped_not_cut():
    name = "efficientnet_lite0+efficientnet_lite2 rf: accuracy 0.953"
    wrapped = fitted_title(name, 3.0)
    assert wrapped.replace("\n", " ") == name and all(len(line) <= 39 for line in wrapped.splitlines())


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def two_backbones(tmp_path_factory):
    """The quick start's shape, through `cli.py`: extract, compare, extract a second backbone, compare."""
    root = write_tinted(tmp_path_factory.mktemp("data") / "tinted", 16)
    out = tmp_path_factory.mktemp("artifacts")
    runs = []
    for backbone in ("resnet18", "mobilenet_v3_small"):
        status, printed = cli_process(
            "extract",
            "--backbone",
            backbone,
            "--weights",
            "random",
            "--data",
            root,
            "--out",
            out,
            "--workers",
            "0",
            "--quiet",
        )
        assert status == 0, printed
        status, printed = cli_process("compare", "--out", out, *FAST)
        assert status == 0, printed
        runs.append(printed)
    return out, runs


def test_a_plain_compare_takes_every_backbone_and_fits_only_the_new_rows(two_backbones):
    out, (first, second) = two_backbones
    assert "features: 1 file of tinted-" in first
    assert "features: 2 files of tinted-" in second
    report = json.loads(next((out / "reports").glob("*+*/report.json")).read_text())
    rows = {(r["backbone"], r["head"]) for r in report["rows"]}
    labels = {"resnet18-random", "mobilenet_v3_small-random", "mobilenet_v3_small-random+resnet18-random"}
    assert rows == {(label, head) for label in labels for head in ("logreg", "knn")}
    reused = [line for line in second.splitlines() if "reusing the model fitted for another report" in line]
    assert sorted(line.split(":")[0] for line in reused) == ["resnet18-random knn", "resnet18-random logreg"]
    assert sum(r["reused"] for r in report["rows"]) == 2  # of 6 rows, 4 fitted
    assert second.rstrip().splitlines()[-1].startswith("use: ")


def test_the_recommended_model_loads_and_the_report_says_how_to_ship_it(two_backbones):
    out, (_, second) = two_backbones
    folder = next((out / "reports").glob("*+*"))
    report = json.loads((folder / "report.json").read_text())
    chosen = report["recommendation"]
    model = joblib.load(chosen["model_path"])
    assert model.classes_.tolist() == ["blue", "red"]
    assert f"use: {chosen['backbone']} {chosen['head']}, {chosen['model_path']}" in second
    markdown = (folder / "report.md").read_text()
    assert markdown.startswith("# tinted: which head wins\n\n## Recommendation\n")
    assert f"serve: python cli.py serve --model {chosen['model_path']}" in markdown


def test_per_class_numbers_agree_with_scikit_learn_on_the_saved_predictions(two_backbones):
    from sklearn.metrics import classification_report

    out, _ = two_backbones
    folder = next((out / "reports").glob("*+*"))
    report = json.loads((folder / "report.json").read_text())
    assert report["per_class"]
    for name, scores in report["per_class"].items():
        backbone, head = name.split(" ")
        saved = _read_csv(folder / "predictions" / f"{backbone}-{head}.csv")
        expected = classification_report(
            [r["true"] for r in saved], [r["predicted"] for r in saved], output_dict=True, zero_division=0
        )
        for s in scores:
            want = expected[s["class"]]
            got = [s["precision"], s["recall"], s["f1"], s["support"]]
            assert got == pytest.approx([want["precision"], want["recall"], want["f1-score"], want["support"]])
    assert np.isclose(sum(s["support"] for s in scores), report["rows"][0]["n"])


def test_a_backbone_forward_pass_is_timed_on_its_own_architecture():
    from experiments.recommend import backbone_ms_per_image

    ms = backbone_ms_per_image("mobilenet_v3_small")
    assert np.isfinite(ms) and 0 < ms < 10_000
