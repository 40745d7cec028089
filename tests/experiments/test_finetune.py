import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from classifiers import load_model
from common.errors import CnnfeatError
from experiments.compare import compare
from experiments.finetune import run_finetune
from experiments.unfreeze import set_trainable, trunk_blocks
from featurize import extract, get_backbone, load_features
from tests.conftest import write_image
from tests.test_cli import assert_one_line_error, run

QUIET = {"log": lambda _: None, "progress": False}


def test_blocks_and_unfreezing():
    lite = get_backbone("efficientnet_lite0").load("random").trunk
    assert len(trunk_blocks(lite)) == 20  # stem conv + bn, 16 MBConv blocks, head conv + bn; not the unused _fc
    assert set_trainable(lite, "last-2-blocks") == 2
    trainable = [name for name, p in lite.named_parameters() if p.requires_grad]
    assert trainable and all(name.startswith(("_conv_head", "_bn1")) for name in trainable)
    assert set_trainable(lite, "none") == 0 and not any(p.requires_grad for p in lite.parameters())
    resnet = get_backbone("resnet18").load("random").trunk
    assert len(trunk_blocks(resnet)) == 10 and set_trainable(resnet, "all") == 10
    with pytest.raises(CnnfeatError, match="use all, none, or last-N-blocks"):
        set_trainable(resnet, "half")


def test_unfrozen_batchnorm_follows_the_new_images():
    """EfficientNet-Lite's batch-norm momentum (TensorFlow's 0.01) is raised to 0.1 where the layer
    trains, and left where it is frozen."""
    from experiments.finetune import FinetuneSettings, build_network

    settings = FinetuneSettings(weights="random", unfreeze="last-2-blocks")
    trunk = build_network(get_backbone("efficientnet_lite0"), settings, 2, "cpu").trunk
    momenta = {
        name: module.momentum
        for name, module in trunk.named_modules()
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
    }
    assert momenta.pop("_bn1") == 0.1  # the head conv's batch norm, in the last 2 blocks
    assert momenta and all(abs(m - 0.01) < 1e-9 for m in momenta.values())


def _two_class_data(root):
    for split, count in (("train", 6), ("val", 2)):
        for i in range(count):
            write_image(root / split / "x" / f"{i}.png", seed=i, tint=(1, 0.5, 0.5))
            write_image(root / split / "y" / f"{i}.png", seed=50 + i, tint=(0.5, 0.5, 1))
    return root


def test_frozen_batchnorm_keeps_its_statistics(tmp_path):
    _two_class_data(tmp_path / "d")
    untrained = get_backbone("resnet18").load("random").trunk
    frozen_before, start_layer4 = untrained.bn1.running_mean.clone(), untrained.layer4[1].bn2.running_mean.clone()
    folder = run_finetune(
        data=tmp_path / "d",
        backbone="resnet18",
        weights="random",
        out=tmp_path,
        epochs=1,
        unfreeze="last-1-blocks",
        batchnorm="train",
        head_init="random",
        workers=0,
        **QUIET,
    )
    checkpoint = torch.load(folder / "checkpoint.pth", weights_only=True)
    assert torch.equal(checkpoint["state_dict"]["bn1.running_mean"], frozen_before)
    assert not torch.equal(checkpoint["state_dict"]["layer4.1.bn2.running_mean"], start_layer4)
    assert checkpoint["backbone"] == "resnet18" and checkpoint["class_names"] == ["x", "y"]


def test_batchnorm_frozen_keeps_every_layers_statistics(tmp_path):
    """--batchnorm frozen: with every block unfrozen, no batch-norm layer's running statistics move
    (under train they do), while the weights train."""
    _two_class_data(tmp_path / "d")
    start = get_backbone("resnet18").load("random").trunk.state_dict()
    trained = {}
    for mode in ("frozen", "train"):
        folder = run_finetune(
            data=tmp_path / "d",
            backbone="resnet18",
            weights="random",
            out=tmp_path / mode,
            epochs=1,
            unfreeze="all",
            batchnorm=mode,
            head_init="random",
            workers=0,
            **QUIET,
        )
        trained[mode] = torch.load(folder / "checkpoint.pth", weights_only=True)["state_dict"]
    running = [name for name in start if name.endswith(("running_mean", "running_var"))]
    assert running and all(torch.equal(trained["frozen"][name], start[name]) for name in running)
    assert not torch.equal(trained["train"]["layer4.1.bn2.running_mean"], start["layer4.1.bn2.running_mean"])
    assert not torch.equal(trained["frozen"]["layer4.1.conv2.weight"], start["layer4.1.conv2.weight"])


@pytest.mark.parametrize("classes", [2, 3])
def test_probe_start_is_the_logistic_regression_of_the_frozen_features(tmp_path, classes):
    """--head-init probe: before any training step, the network's probabilities on the training
    images are those of a logistic regression (the C the probe chose) fitted here on the same
    network's frozen vectors, standardised as linear_probe.probe_scaling says."""
    from sklearn.linear_model import LogisticRegression

    from experiments.finetune import FinetuneSettings, build_network, start_head
    from experiments.finetune_data import Compute, finetune_rows, forward_rows, predict_rows
    from experiments.linear_probe import probe_scaling
    from featurize import discover

    data = _two_class_data(tmp_path / "d")
    if classes == 3:
        for i in range(6):
            write_image(data / "train" / "z" / f"{i}.png", seed=70 + i, tint=(0.5, 1, 0.5))
    settings = FinetuneSettings(backbone="resnet18", weights="random")
    images = discover(data)
    rows = finetune_rows(images, data, seed=0)
    compute = Compute("cpu", 4, 0)
    network = build_network(get_backbone("resnet18"), settings, classes, "cpu")
    lines = []
    C = start_head(network, images, rows, settings, compute, lines.append)
    assert f"logreg C={C:g}" in lines[0]

    _, labels, vectors = forward_rows(network.module[0], images, rows.train, network.prep, compute)
    mean, spread = probe_scaling(vectors)
    logreg = LogisticRegression(C=C, max_iter=5000, random_state=0).fit((vectors - mean) / spread, labels)
    _, _, proba = predict_rows(network.module, images, rows.train, network.prep, compute, tta=False)
    np.testing.assert_allclose(proba, logreg.predict_proba((vectors - mean) / spread), atol=1e-4)


def test_probe_with_one_training_image_of_a_class_takes_a_fixed_c(tmp_path):
    """A class with 2 images keeps 1 for training once the selection slice has one: no folds to
    choose C with, so the probe takes linear_probe.UNSEARCHED_C, and the fine-tune runs."""
    from experiments.linear_probe import UNSEARCHED_C

    data = _two_class_data(tmp_path / "d")
    for i in range(2):
        write_image(data / "train" / "z" / f"{i}.png", seed=70 + i, tint=(0.5, 1, 0.5))
    lines = []
    folder = run_finetune(
        data=data,
        backbone="resnet18",
        weights="random",
        out=tmp_path,
        epochs=1,
        workers=0,
        log=lines.append,
        progress=False,
    )
    assert any(f"logreg C={UNSEARCHED_C:g}" in line for line in lines)
    assert json.loads((folder / "model.json").read_text())["class_names"] == ["x", "y", "z"]


def test_compare_reuses_an_unchanged_finetune_and_fits_a_changed_one(tmp_path):
    """`compare --finetune` run twice: the second reuses the fine-tune (its files untouched); a
    different --finetune-epochs, or --refit, fine-tunes again. --finetune-epochs alone is refused."""
    data = _two_class_data(tmp_path / "d")
    out = tmp_path / "out"
    extracted = run("extract", "--data", data, "--backbone", "resnet18", "--weights", "random", "--out", out, "--quiet")
    assert extracted.exit_code == 0, extracted.output
    compare_finetune = ("compare", "--clf", "knn", "--cv", "2", "--finetune", "--out", out, "--quiet")
    first = run(*compare_finetune, "--finetune-epochs", "1")
    assert first.exit_code == 0, first.output
    checkpoint = next(out.glob("finetune/*/checkpoint.pth"))
    written = checkpoint.stat().st_mtime_ns
    again = run(*compare_finetune, "--finetune-epochs", "1")
    assert "nothing changed since" in again.output and checkpoint.stat().st_mtime_ns == written
    changed = run(*compare_finetune, "--finetune-epochs", "2")
    assert changed.exit_code == 0 and "replacing the fine-tune in" in changed.output
    assert json.loads((checkpoint.parent / "model.json").read_text())["best_params"]["epochs"] == 2
    refit = run(*compare_finetune, "--finetune-epochs", "2", "--refit")
    assert "nothing changed since" not in refit.output and checkpoint.stat().st_mtime_ns != written
    assert_one_line_error(run("compare", "--finetune-epochs", "3", "--out", out), "need --finetune")


def test_a_backbone_with_two_feature_files_is_fine_tuned_once_and_ranked_once(tmp_path):
    """A plain compare takes every feature file of the dataset: a backbone's plain and --tta flip
    files are two files but one network, so one fine-tune and one fine-tuned row, beside the plain
    file (not the same fine-tune twice, or the second replacing the first), and no fused rows."""
    data = _two_class_data(tmp_path / "d")
    out = tmp_path / "out"
    for tta in ("none", "flip"):
        extracted = run(
            "extract", "--data", data, "--backbone", "resnet18", "--weights", "random", "--tta", tta, "--out", out,
            "--quiet",
        )  # fmt: skip
        assert extracted.exit_code == 0, extracted.output
    compare_finetune = ("compare", "--clf", "knn", "--cv", "2", "--finetune", "--finetune-epochs", "1", "--out", out)
    first = run(*compare_finetune, "--quiet")
    assert first.exit_code == 0, first.output
    report = json.loads(next(out.glob("reports/*+*/report.json")).read_text())
    assert [r["backbone"] for r in report["rows"] if r["head"] == "finetuned"] == ["resnet18-random"]
    assert not [r for r in report["rows"] if "+" in r["backbone"]]  # a backbone is not fused with its own variant
    again = run(*compare_finetune, "--quiet")
    assert again.output.count("nothing changed since") == 1 and "replacing" not in again.output


def test_compare_finetune_of_a_dataset_named_at_extract_ranks_its_fine_tune(tmp_path):
    """`extract --name` names the dataset; `compare --finetune` fine-tunes into the folder of that
    name, where it then looks (it once wrote under the folder's name and left the row out silently)."""
    data = _two_class_data(tmp_path / "d")
    out = tmp_path / "out"
    extracted = run(
        "extract", "--data", data, "--name", "shop", "--backbone", "resnet18", "--weights", "random", "--out", out,
        "--quiet",
    )  # fmt: skip
    assert extracted.exit_code == 0, extracted.output
    compared = run("compare", "--clf", "knn", "--cv", "2", "--finetune", "--finetune-epochs", "1", "--out", out)
    assert compared.exit_code == 0, compared.output
    assert [p.name.split("-")[0] for p in out.glob("finetune/*")] == ["shop"]
    report = json.loads(next(out.glob("reports/shop-*/report.json")).read_text())
    assert "finetuned" in [r["head"] for r in report["rows"]]


def test_epoch_is_chosen_on_train_and_compare_ranks_it_on_its_own_heldout_images(tmp_path):
    data = _two_class_data(tmp_path / "d")
    folder = run_finetune(data=data, backbone="resnet18", weights="random", out=tmp_path, epochs=2, workers=0, **QUIET)
    info = json.loads((folder / "model.json").read_text())
    assert info["selection"].startswith("best epoch on a stratified 20% slice of train (3 images)")
    assert info["history"][0]["epoch"] == 0 and info["history"][0]["train_loss"] is None  # the probe, untrained
    assert [set(h) for h in info["history"][1:]] == [
        {"epoch", "train_loss", "selection_accuracy", "train_seconds", "select_seconds"}
    ] * 2
    store = extract(data=data, backbone="resnet18", weights="random", out=tmp_path, workers=0, progress=False).store
    outcome = compare(features=[store], out=tmp_path, clf="knn", cv=2, log=lambda _: None)
    finetuned = next(r for r in outcome.rows if r.head == "finetuned")
    assert sorted(finetuned.paths) == sorted(r.paths for r in outcome.rows if r.head == "knn")[0]
    assert "slice of train" in (outcome.report_dir / "report.md").read_text()

    heldout = folder / "heldout.csv"
    heldout.write_text("".join(heldout.read_text().splitlines(keepends=True)[:-1]))  # one image fewer
    outcome = compare(features=[store], out=tmp_path, clf="knn", cv=2, log=lambda _: None)
    assert [r.head for r in outcome.rows] == ["knn"]
    assert "scores other images than compare (1 of compare's missing" in outcome.failures[0][2]


def test_finetune_name_lands_where_compare_looks_beside_the_feature_file_of_that_name(tmp_path):
    data = _two_class_data(tmp_path / "d")
    random_weights = ("--backbone", "resnet18", "--weights", "random", "--workers", "0", "--quiet")
    named = ("--data", data, "--name", "my set", "--out", tmp_path, *random_weights)
    assert_one_line_error(run("finetune", *named[:2], "--name", "", "--out", tmp_path), "--name ''")
    tuned = run("finetune", *named, "--epochs", "1")
    assert tuned.exit_code == 0, tuned.output
    folder = next((tmp_path / "finetune").iterdir())
    assert folder.name.startswith("my_set-") and folder.name.endswith("-resnet18")
    extracted = run("extract", *named)
    assert extracted.exit_code == 0, extracted.output
    store = next((tmp_path / "features").glob("my_set-*.h5"))
    assert store.name == folder.name + "-random.h5"
    outcome = compare(features=[store], out=tmp_path, clf="knn", cv=2, jobs=1, log=lambda _: None)
    assert sorted(r.head for r in outcome.rows) == ["finetuned", "knn"]  # found beside the file of that name


def test_compare_finetune_on_folders_without_a_split_scores_the_same_held_out_images(tmp_path):
    """Class folders with no val/: `cli.py compare --finetune` fine-tunes on compare's own seeded
    hold-out, and ranks the row on exactly the held-out images of the heads - also when an image the
    store left out (unreadable) would shift a hold-out drawn from the folder; a `finetune` run alone
    on the same readable images draws the same hold-out."""
    data = tmp_path / "photos"
    for i in range(10):
        write_image(data / "x" / f"{i}.png", seed=i, tint=(1, 0.5, 0.5))
        write_image(data / "y" / f"{i}.png", seed=50 + i, tint=(0.5, 0.5, 1))
    (data / "x" / "0-damaged.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    out = tmp_path / "out"
    extracted = run("extract", "--data", data, "--backbone", "resnet18", "--weights", "random", "--out", out, "--quiet")
    assert extracted.exit_code == 0, extracted.output
    compared = run("compare", "--clf", "knn", "--cv", "2", "--finetune", "--out", out, "--quiet")
    assert compared.exit_code == 0, compared.output
    report = json.loads(next((out / "reports").iterdir()).joinpath("report.json").read_text())
    rows = {row["head"]: row for row in report["rows"]}
    assert {"knn", "finetuned"} <= set(rows) and rows["finetuned"]["n"] == rows["knn"]["n"] == 4
    predictions = {head: (out / "reports").glob(f"*/predictions/*{head}*.csv") for head in ("knn", "finetuned")}
    held = {
        head: sorted(r["path"] for f in files for r in csv.DictReader(open(f))) for head, files in predictions.items()
    }
    assert held["knn"] == held["finetuned"] and len(held["knn"]) == 4

    (data / "x" / "0-damaged.png").unlink()
    alone = run_finetune(data=data, backbone="resnet18", weights="random", out=tmp_path / "alone", epochs=1, **QUIET)
    with open(alone / "heldout.csv") as handle:
        assert sorted(r["path"] for r in csv.DictReader(handle)) == held["knn"]


def test_compare_finetune_on_a_list_file_fine_tunes_on_the_listed_images(tmp_path):
    """A store extracted from a list file (no val list): compare's fine-tune reads that list, not
    the folder around it (which holds a class the list leaves out), and is scored on the heads'
    held-out images."""
    data = _two_class_data(tmp_path / "d")
    for i in range(4):
        write_image(data / "train" / "z" / f"{i}.png", seed=90 + i)
    listed = [f"train/{c}/{i}.png {c}\n" for c in ("x", "y") for i in range(6)]
    (data / "mine.txt").write_text("".join(listed))
    out = tmp_path / "out"
    extracted = run(
        "extract", "--data", data / "mine.txt", "--backbone", "resnet18", "--weights", "random", "--out", out, "--quiet"
    )
    assert extracted.exit_code == 0, extracted.output
    compared = run("compare", "--clf", "knn", "--cv", "2", "--finetune", "--finetune-epochs", "1", "--out", out)
    assert compared.exit_code == 0, compared.output
    assert "finetune resnet18: 7 train / 2 to choose the epoch (from train) / 3 holdout images" in compared.output
    rows = {row["head"]: row for row in json.loads(next(out.glob("reports/*/report.json")).read_text())["rows"]}
    assert rows["finetuned"]["n"] == rows["knn"]["n"] == 3
    assert json.loads(next(out.glob("finetune/*/model.json")).read_text())["class_names"] == ["x", "y"]


def test_compare_finetune_that_cannot_run_fails_before_any_head_is_searched(tmp_path):
    """The images gone since extraction: the fine-tune cannot run, and compare says so in one line
    before it searches anything."""
    data = _two_class_data(tmp_path / "d")
    out = tmp_path / "out"
    extracted = run("extract", "--data", data, "--backbone", "resnet18", "--weights", "random", "--out", out, "--quiet")
    assert extracted.exit_code == 0, extracted.output
    shutil.rmtree(data)
    store = extracted.output.strip().splitlines()[-1].split(": ", 1)[1]
    compared = run("compare", "--features", store, "--clf", "logreg", "--finetune", "--out", out, "--quiet")
    assert_one_line_error(compared, "--finetune (resnet18")
    assert not list(out.glob("reports/*/models/*.joblib"))  # no head was fitted first


def test_lite0_finetune_on_hymenoptera(hymenoptera, hymenoptera_lite0, tmp_path):
    """A few CPU epochs, the epoch chosen on a slice of train, reach >= 0.93 on val; the checkpoint feeds
    `extract --weights`; the saved model predicts from images what the run reported; compare picks the
    network up."""
    folder = run_finetune(data=hymenoptera, out=tmp_path, **QUIET)
    info = json.loads((folder / "model.json").read_text())
    print(f"finetune val accuracy {info['heldout']['accuracy']:.4f}, best epoch {info['best_params']['best_epoch']}")
    assert info["heldout"]["accuracy"] >= 0.93 and info["heldout"]["n"] == 153

    with open(folder / "heldout.csv") as handle:
        heldout = list(csv.DictReader(handle))[:5]
    model = load_model(folder / "model.joblib")
    images = [str(hymenoptera / row["path"]) for row in heldout]
    assert list(model.predict(images)) == [row["predicted"] for row in heldout]
    np.testing.assert_allclose(
        model.predict_proba(images), [[float(row["p_ants"]), float(row["p_bees"])] for row in heldout], atol=1e-4
    )

    for path in images:
        (tmp_path / Path(path).name).symlink_to(path)
    (tmp_path / "few.txt").write_text("".join(f"{Path(path).name} x\n" for path in images))
    store = extract(
        data=tmp_path / "few.txt", weights=str(folder / "checkpoint.pth"), out=tmp_path, progress=False
    ).store
    features = load_features(store)
    assert "-ft" in store.name and features.fingerprint == info["feature_fingerprint"]
    np.testing.assert_array_equal(model.predict(features), model.predict(images))

    outcome = compare(features=[hymenoptera_lite0], out=tmp_path, clf="logreg", log=lambda _: None)
    finetuned = next(r for r in outcome.rows if r.head == "finetuned")
    assert finetuned.metrics["accuracy"] == info["heldout"]["accuracy"] and finetuned.metrics["n"] == 153


def test_probe_scaling_floors_each_spread_at_the_median_one():
    """A feature that hardly varies is scaled by the median spread, not by its own (folded into the
    layer, its own gave weights that blew the fine-tune's loss up); most features constant: no
    division by 0."""
    from experiments.linear_probe import SMALLEST_SPREAD, probe_scaling

    rng = np.random.default_rng(0)
    vectors = np.column_stack([rng.normal(0, 1, 50), rng.normal(0, 2, 50), 5 + rng.normal(0, 1e-5, 50)])
    mean, spread = probe_scaling(vectors.astype(np.float32))
    np.testing.assert_allclose(mean, vectors.mean(0), atol=1e-4)
    assert spread[2] == pytest.approx(np.median(vectors.std(0)), rel=1e-4) and spread[1] > spread[0] > 0.5
    constant = np.column_stack([rng.normal(0, 1, 20), np.ones(20), np.ones(20)])
    _, spread = probe_scaling(constant)
    assert spread[1] == spread[2] == SMALLEST_SPREAD and np.isfinite((constant - constant.mean(0)) / spread).all()
