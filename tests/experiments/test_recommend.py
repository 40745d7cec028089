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
from tests.conftest import write_tinted_with_mistakes
from tests.test_cli import cli_process

FAST = ("--clf", "logreg,knn", "--cv", "2", "--ensemble", "none", "--jobs", "1", "--quiet")


def _row(backbone, head, correct, predict_ms, truth=None, path=None, **info):
    """A scored-row stand-in: `correct` says which of the held-out images it got right."""
    truth = truth or ["a", "b"] * (len(correct) // 2)
    other = {"a": "b", "b": "a"}
    predicted = [t if ok else other[t] for t, ok in zip(truth, correct)]
    info = {"predict_seconds_per_image": None if predict_ms is None else predict_ms / 1000, **info}
    paths = [f"img{i}.png" for i in range(len(truth))]
    model = None if head == "finetuned" else object()
    path = path or f"{head}.joblib"
    return Row(backbone, head, info, paths, truth, predicted, None, ["a", "b"], model=model, model_path=path)


def _ranked(*rows, scoring="accuracy"):
    rows = list(rows)
    score_rows(rows, scoring, 0)
    return rows


QUIET = {"log": lambda _: None}


def test_the_best_row_is_recommended_when_every_other_is_told_apart():
    best = _row("x", "svm", [True] * 40, predict_ms=5.0)
    worse = _row("x", "knn", [True] * 20 + [False] * 20, predict_ms=0.1)
    rows = _ranked(worse, best)
    assert rows[1].metrics["mcnemar_p_vs_best"] < SIGNIFICANT_P
    chosen = recommend(rows, {"x": ("net",)}, timer=pytest.fail)  # one contender: nothing to time
    assert chosen.row is best and chosen.contenders == [best]
    assert "McNemar's test tells the other row apart from it (p < 0.05 on the same 40 held-out images)" in chosen.text()


def test_the_most_accurate_row_within_a_tenth_of_the_fastest_is_recommended():
    best = _row("x", "svm", [True] * 40, predict_ms=5.0)  # 15 ms with the backbone's 10
    slow = _row("x", "mlp", [True] * 39 + [False], predict_ms=9.0)  # 19 ms
    close = _row("x", "logreg", [True] * 38 + [False] * 2, predict_ms=0.05)  # 10.05 ms
    rows = _ranked(slow, close, best)
    chosen = recommend(rows, {"x": ("net",)}, timer={"net": 10.0}.__getitem__, **QUIET)
    assert chosen.best is best and chosen.row is close
    assert [r.head for r in chosen.contenders] == ["svm", "mlp", "logreg"]
    assert chosen.ms_per_image[("x", "logreg")] == pytest.approx(10.05)
    assert f"p = {close.metrics['mcnemar_p_vs_best']:.3f} >= {SIGNIFICANT_P}" in chosen.text()
    assert "~10.1 ms/image" in chosen.text() and "the best row ~15.0 ms/image" in chosen.text()
    assert chosen.commands()[0] == "model: logreg.joblib"
    # a saving of under 10% is no reason to ship a less accurate row
    best.info["predict_seconds_per_image"] = 0.0009  # 10.9 ms
    assert recommend(rows, {"x": ("net",)}, timer={"net": 10.0}.__getitem__, **QUIET).row is best


def test_every_forward_pass_a_row_needs_is_paid_and_a_fused_row_is_not_shipped_where_another_can_be():
    """A fused row needs both backbones (and export and serve refuse it); --tta flip vectors need two
    passes of one backbone."""
    fused = _row("small+large", "logreg", [True] * 40, predict_ms=0.1)
    large = _row("large", "logreg", [True] * 39 + [False], predict_ms=0.1)
    flip = _row("small-flip", "logreg", [True] * 39 + [False], predict_ms=0.1)
    small = _row("small", "logreg", [True] * 38 + [False] * 2, predict_ms=0.2)
    rows = _ranked(small, flip, large, fused)
    passes = {"small": ("small",), "small-flip": ("small", "small"), "large": ("large",)}
    passes["small+large"] = ("small", "large")
    chosen = recommend(rows, passes, fused={"small+large"}, timer={"small": 3.0, "large": 30.0}.__getitem__, **QUIET)
    assert chosen.row is small and chosen.fused == {("small+large", "logreg")}
    assert "(the best joins several feature files, which export and serve do not take)" in chosen.text()
    times = chosen.ms_per_image
    assert times[("small+large", "logreg")] == pytest.approx(33.1) and times[("small-flip", "logreg")] == pytest.approx(
        6.1
    )
    assert times[("small", "logreg")] == pytest.approx(3.2)


def test_a_fused_best_told_apart_from_every_other_row_is_recommended_with_what_can_ship_it():
    fused = _row("a+b", "svm", [True] * 40, predict_ms=1.0, path="/models dir/a+b-svm.joblib")
    worse = _row("a", "svm", [True] * 20 + [False] * 20, predict_ms=1.0)
    chosen = recommend(_ranked(worse, fused), {"a+b": ("a", "b"), "a": ("a",)}, fused={"a+b"}, timer=pytest.fail)
    assert chosen.row is fused and ("a+b", "svm") in chosen.fused
    assert "it joins several feature files, which export and serve do not take" in chosen.text()
    assert chosen.commands() == [
        "model: /models dir/a+b-svm.joblib",
        "predict: python cli.py predict --model '/models dir/a+b-svm.joblib' IMAGES (export and serve take "
        "one-backbone models)",
    ]


def test_an_ensemble_is_served_but_not_exported():
    vote = _row("x", "vote", [True] * 40, predict_ms=1.0, members=["svm", "knn"])
    worse = _row("x", "knn", [True] * 20 + [False] * 20, predict_ms=1.0)
    commands = recommend(_ranked(worse, vote), {"x": ("x",)}, timer=pytest.fail).commands()
    assert commands[1].startswith("export: takes one head, not an ensemble") and commands[2].startswith("serve: ")


def test_a_row_whose_time_is_unknown_is_not_chosen_for_speed():
    best = _row("odd", "svm", [True] * 40, predict_ms=5.0)
    fast = _row("odd", "logreg", [True] * 39 + [False], predict_ms=0.01)

    def timer(name):
        raise RuntimeError(f"cannot build {name}\nsecond line")

    said = []
    chosen = recommend(_ranked(fast, best), {"odd": ("odd",)}, timer=timer, log=said.append)
    assert chosen.row is best and chosen.ms_per_image[("odd", "logreg")] is None
    assert said == ["recommendation: odd's forward pass not timed (cannot build odd)"]
    assert "no time to predict could be measured, so the best by accuracy of those that ship" in chosen.text()
    times = {"odd": None, "ok": 1.0}  # the best row's backbone untimed, another's timed: no speed to trade it for
    fast.backbone = "ok"
    kept = recommend(_ranked(fast, best), {"odd": ("odd",), "ok": ("ok",)}, timer=_failing_on(times), **QUIET)
    assert kept.row is best


def _failing_on(times):
    def timer(name):
        if times[name] is None:
            raise RuntimeError(f"cannot build {name}")
        return times[name]

    return timer


def test_the_fine_tuned_network_costs_one_pass_of_its_backbone_and_wins_within_a_tenth():
    tuned = _row("x-flip", "finetuned", [True] * 40, predict_ms=None)  # beside a --tta flip file: still one pass
    head = _row("x-flip", "logreg", [True] * 39 + [False], predict_ms=0.05)
    chosen = recommend(_ranked(head, tuned), {"x-flip": ("x", "x")}, timer={"x": 5.0}.__getitem__, **QUIET)
    assert chosen.ms_per_image[("x-flip", "logreg")] == pytest.approx(10.05)
    assert chosen.ms_per_image[("x-flip", "finetuned")] == pytest.approx(5.0) and chosen.row is tuned


def test_rows_scored_on_other_images_are_not_compared_and_the_text_says_so():
    best = _row("x", "svm", [True] * 40, predict_ms=1.0)
    other = _row("y", "svm", [True] * 38, predict_ms=1.0, truth=["a", "b"] * 19)
    chosen = recommend(_ranked(other, best), {"x": ("x",), "y": ("y",)}, timer=pytest.fail)
    assert chosen.row is best and chosen.elsewhere == 1
    assert "1 row was scored on other images, not compared" in chosen.text()


def test_with_another_scoring_the_text_names_it_and_does_not_call_the_best_the_most_accurate():
    truth = ["a"] * 36 + ["b"] * 4
    balanced = _row("x", "svm", [True] * 30 + [False] * 6 + [True] * 4, predict_ms=1.0, truth=truth)
    accurate = _row("x", "knn", [True] * 36 + [False] * 4, predict_ms=1.0, truth=truth)
    rows = _ranked(accurate, balanced, scoring="balanced_accuracy")
    assert rows[0] is balanced and rows[0].metrics["accuracy"] < rows[1].metrics["accuracy"]
    text = recommend(rows, {"x": ("x",)}, scoring="balanced_accuracy", timer={"x": 1.0}.__getitem__, **QUIET).text()
    assert "best row by held-out balanced accuracy" in text and "balanced accuracy 0.917, accuracy 0.850" in text
    assert "most accurate" not in text and "the best by balanced accuracy" in text


def test_a_fusion_of_one_backbone_s_files_is_not_shipped_either():
    """Pretrained and fine-tuned vectors of one backbone joined: one backbone, but a joined model that
    export and serve refuse all the same (fused rows are known by their label, not their backbones)."""
    fused = _row("x+x-ft1", "logreg", [True] * 40, predict_ms=0.1)
    plain = _row("x", "logreg", [True] * 39 + [False], predict_ms=0.1)
    passes = {"x+x-ft1": ("x", "x"), "x": ("x",)}
    chosen = recommend(_ranked(plain, fused), passes, fused={"x+x-ft1"}, timer={"x": 5.0}.__getitem__, **QUIET)
    assert chosen.row is plain and chosen.commands()[1].startswith("export: python cli.py export")


def test_when_every_contender_is_fused_the_best_is_kept_and_the_text_says_why():
    one = _row("a+b", "svm", [True] * 40, predict_ms=0.1)
    two = _row("a+b", "logreg", [True] * 39 + [False], predict_ms=0.1)
    chosen = recommend(
        _ranked(two, one), {"a+b": ("a", "b")}, fused={"a+b"}, timer={"a": 1, "b": 2}.__getitem__, **QUIET
    )
    assert chosen.row is one
    assert "each of them joins several feature files, which export and serve do not take: the best is kept" in (
        chosen.text()
    )


def test_a_lone_row_is_recommended_without_claiming_a_test():
    only = _row("x", "svm", [True] * 40, predict_ms=0.1)
    text = recommend(_ranked(only), {"x": ("x",)}, timer=pytest.fail).text()
    assert "no other row was scored on the same images" in text and "McNemar" not in text


def test_a_timer_failing_without_a_message_is_said_by_its_kind():
    best = _row("x", "svm", [True] * 40, predict_ms=0.1)
    other = _row("x", "knn", [True] * 40, predict_ms=0.1)

    def timer(name):
        raise MemoryError()

    said = []
    recommend(_ranked(other, best), {"x": ("x",)}, timer=timer, log=said.append)
    assert said == ["recommendation: x's forward pass not timed (MemoryError)"]


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
    root = write_tinted_with_mistakes(tmp_path_factory.mktemp("data") / "tinted", 16)
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
        assert [s["class"] for s in scores] == sorted(k for k in expected if k in ("blue", "red"))
        for s in scores:
            want = expected[s["class"]]
            got = [s["precision"], s["recall"], s["f1"], s["support"]]
            assert got == pytest.approx([want["precision"], want["recall"], want["f1-score"], want["support"]])
        assert sum(s["support"] for s in scores) == report["rows"][0]["n"]
        assert min(s["f1"] for s in scores) < 1  # the planted mistakes: numbers worth checking


def test_a_backbone_forward_pass_is_timed_without_its_weights():
    from experiments.recommend import backbone_ms_per_image

    ms = backbone_ms_per_image("mobilenet_v3_small")
    assert np.isfinite(ms) and 0 < ms < 10_000


def test_the_confusion_matrix_is_normalised_per_true_class_and_keeps_the_counts():
    from sklearn.metrics import confusion_matrix

    from experiments.per_class import confusion

    truth, predicted = ["a", "a", "a", "b", "c"], ["a", "b", "b", "b", "a"]
    counts, shares = confusion(truth, predicted, ["a", "b", "c"])
    assert (counts == confusion_matrix(truth, predicted, labels=["a", "b", "c"])).all()
    assert shares[0] == pytest.approx([1 / 3, 2 / 3, 0]) and shares.sum(axis=1) == pytest.approx([1, 1, 1])


def test_mistakes_come_most_confident_first_per_true_class():
    proba = np.array([[0.2, 0.8], [0.4, 0.6], [0.9, 0.1], [0.1, 0.9], [0.05, 0.95]])
    row = Row("x", "h", {}, list("12345"), ["a", "a", "a", "a", "a"], ["b", "b", "a", "b", "b"], proba, ["a", "b"])
    found = mistakes(row, per_class=2)
    assert [(m.path, m.probability) for m in found["a"]] == [("5", 0.95), ("4", 0.9)]


def test_a_thumbnail_is_small_upright_and_none_for_what_cannot_be_read(tmp_path, monkeypatch):
    from PIL import Image

    import experiments.per_class as per_class

    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (2000, 1000), (200, 30, 30)).save(photo, exif=_rotated_exif())
    small = Image.open(__import__("io").BytesIO(per_class.thumbnail(photo)))
    assert max(small.size) == per_class.THUMBNAIL_PIXELS and small.size[1] > small.size[0]  # turned upright
    (tmp_path / "not-an-image.jpg").write_bytes(b"hello")
    assert per_class.thumbnail(tmp_path / "not-an-image.jpg") is None
    assert per_class.thumbnail(tmp_path / "gone.jpg") is None
    Image.new("RGB", (300, 300)).save(tmp_path / "big.png")
    monkeypatch.setattr(per_class, "THUMBNAIL_SOURCE_PIXELS", 300 * 300 - 1)
    assert per_class.thumbnail(tmp_path / "big.png") is None  # too many pixels to decode for a thumbnail


def _rotated_exif():
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turn 90 degrees to show upright
    return exif


def test_class_names_in_a_script_the_font_lacks_draw_without_a_warning(recwarn):
    from experiments.plots import confusion_png

    truth = ["日本", "Ärzte"] * 3
    row = Row("x", "h", {}, list("123456"), truth, truth[::-1], None, ["日本", "Ärzte"])
    row.metrics = {"accuracy": 0.0}
    assert confusion_png(row).startswith(b"\x89PNG")
    assert not [w for w in recwarn if "Glyph" in str(w.message)]


def test_a_recipe_s_passes_are_counted_at_its_own_input_size(tinted_store, tmp_path):
    """--tta crops vectors need ten passes; an --image-size of its own is timed at that size (a
    larger input costs more than the weights' own)."""
    from experiments.recommend import backbone_ms_per_image, forward_passes
    from featurize import Recipe, extract, load_features

    data = load_features(tinted_store)
    options = dict(data=data.data_root, backbone="resnet18", weights="random", out=tmp_path, workers=0, progress=False)
    sized = load_features(extract(**options, recipe=Recipe(image_size=96, tta="crops")).store)
    assert forward_passes(sized) == ("resnet18@96",) * 10 and forward_passes(data) == ("resnet18",)
    assert backbone_ms_per_image("resnet18@96") > 0
