import csv
import json
import math

import numpy as np
import pytest

from experiments.compare import compare
from experiments.metrics import bootstrap_interval, mcnemar_p
from featurize import extract
from featurize.errors import CnnfeatError
from tests.conftest import write_image
from tests.test_cli import run

QUIET = {"log": lambda _: None}
HEADS = ["svm", "rf", "mlp", "knn", "logreg", "linear"]


def test_hymenoptera_compare_best_head_reaches_094_and_reuses_fits(hymenoptera_lite0, tmp_path):
    result = run("compare", "--features", hymenoptera_lite0, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    report = tmp_path / "reports" / "hymenoptera-efficientnet_lite0"
    rows = json.loads((report / "report.json").read_text())["rows"]
    print("".join(f"\n{r['head']}: {r['accuracy']:.4f}" for r in rows))
    assert [r["head"] for r in rows] and sorted(r["head"] for r in rows) == sorted(HEADS)
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
    assert again.output.count("nothing changed, reusing the fitted model") == len(HEADS)
    rows_again = json.loads((report / "report.json").read_text())["rows"]
    assert [(r["head"], r["accuracy"], r["log_loss"]) for r in rows_again] == \
        [(r["head"], r["accuracy"], r["log_loss"]) for r in rows]


def test_same_seed_same_table_and_refit_searches_again(tinted_store, tmp_path):
    def table(*extra):
        outcome = compare(features=[tinted_store], out=tmp_path, clf="knn,logreg,linear", seed=3, **QUIET, **dict(extra))
        return [(r.head, r.metrics["accuracy"], r.metrics["ci_low"], r.metrics["log_loss"], str(r.info["best_params"]),
                 r.reused) for r in outcome.rows]
    first = table()
    refitted = table(("refit", True))
    assert not any(r[-1] for r in refitted) and [r[:-1] for r in refitted] == [r[:-1] for r in first]
    assert all(r[-1] for r in table())


def test_several_backbones_make_one_table(tinted_store, tmp_path):
    data = tmp_path / "tinted"
    for split, seeds in (("train", range(18)), ("val", range(18, 24))):
        for i in seeds:
            write_image(data / split / "red" / f"r{i}.png", seed=i, tint=(1.0, 0.4, 0.4))
            write_image(data / split / "blue" / f"b{i}.png", seed=100 + i, tint=(0.4, 0.4, 1.0))
    other = extract(data=data, backbone="mobilenet_v3_small", weights="random", out=tmp_path, workers=0,
                    progress=False).store
    outcome = compare(features=[tinted_store, other], out=tmp_path, clf="logreg", **QUIET)
    assert outcome.report_dir.name == "tinted-resnet18+mobilenet_v3_small"
    assert sorted(r.backbone for r in outcome.rows) == ["mobilenet_v3_small", "resnet18"]
    assert all(r.metrics["n"] == 12 for r in outcome.rows)


def _store(tmp_path, layout):
    for split, name, count in layout:
        for i in range(count):
            write_image(tmp_path / "d" / split / name / f"{i}.png", seed=hash((split, name, i)) % 1000)
    return extract(data=tmp_path / "d", backbone="resnet18", weights="random", out=tmp_path, workers=0,
                   progress=False).store


def test_single_image_per_class_is_a_clear_message(tmp_path):
    store = _store(tmp_path, [("", "a", 1), ("", "b", 1)])
    with pytest.raises(CnnfeatError, match="too few images to hold some out"):
        compare(features=[store], out=tmp_path, **QUIET)


def test_class_missing_from_val_is_noted(tmp_path):
    store = _store(tmp_path, [("train", "a", 6), ("train", "b", 6), ("train", "c", 6), ("val", "a", 2), ("val", "b", 2)])
    outcome = compare(features=[store], out=tmp_path, clf="logreg", cv=3, **QUIET)
    assert any("class c has no val images" in n for n in outcome.notes)
    assert "class c has no val images" in (outcome.report_dir / "report.md").read_text()


def test_empty_val_falls_back_to_a_stated_holdout(tmp_path):
    store = _store(tmp_path, [("train", "a", 10), ("train", "b", 10)])
    (tmp_path / "d" / "val" / "a").mkdir(parents=True)  # a val/ folder with no images
    outcome = compare(features=[store], out=tmp_path, clf="knn", cv=3, **QUIET)
    assert outcome.rows[0].metrics["n"] == 4
    assert any("no val/ or test/ rows: scoring on a stratified 20% hold-out of the train rows" in n
               for n in outcome.notes)


def test_statistics_against_independent_computations():
    rng = np.random.default_rng(0)
    a, b = rng.random(200) < 0.9, rng.random(200) < 0.8
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    exact = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
    assert mcnemar_p(a, b) == pytest.approx(exact, rel=1e-9)
    assert mcnemar_p(a, a) == 1.0
    low, high = bootstrap_interval(a, seed=1)
    normal = 1.96 * math.sqrt(a.mean() * (1 - a.mean()) / len(a))
    assert low < a.mean() < high and abs((high - low) / 2 - normal) < 0.01
