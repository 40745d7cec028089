"""`finetune --teacher`: the Hinton loss, the teacher's cached probabilities, and their wiring."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from classifiers import load_model
from experiments.distill import Distillation
from experiments.fit import fit_model
from featurize import extract, load_features
from tests.conftest import write_image
from tests.test_cli import assert_one_line_error, run


def test_the_loss_against_a_direct_computation():
    torch.manual_seed(0)
    logits, labels = torch.randn(5, 3), torch.tensor([0, 2, 1, 1, 0])
    teacher = torch.softmax(torch.randn(5, 3), dim=1)
    ce = torch.nn.CrossEntropyLoss()
    T, alpha = 3.0, 0.7
    soft_teacher = teacher.numpy() ** (1 / T)
    soft_teacher /= soft_teacher.sum(axis=1, keepdims=True)
    soft_student = torch.softmax(logits / T, dim=1).numpy()
    kl = (soft_teacher * (np.log(soft_teacher) - np.log(soft_student))).sum(axis=1).mean()
    expected = (1 - alpha) * ce(logits, labels).item() + alpha * T * T * kl
    loss = Distillation("t.joblib", T, alpha).loss(logits, labels, teacher, ce)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert Distillation("t.joblib", T, 0.0).loss(logits, labels, teacher, ce).item() == pytest.approx(
        ce(logits, labels).item()
    )


@pytest.fixture
def tinted(tmp_path):
    for split, count in (("train", 8), ("val", 2)):
        for i in range(count):
            write_image(tmp_path / "d" / split / "x" / f"{i}.png", seed=i, tint=(1, 0.3, 0.3))
            write_image(tmp_path / "d" / split / "y" / f"{i}.png", seed=50 + i, tint=(0.3, 0.3, 1))
    store = extract(
        data=tmp_path / "d", backbone="resnet18", weights="random", out=tmp_path, workers=0, progress=False
    ).store
    teacher = fit_model(features=store, out=tmp_path, clf="logreg", cv=2, log=lambda _: None).model_path
    return tmp_path / "d", teacher


def test_the_student_learns_the_teacher_s_cached_probabilities(tinted, tmp_path, monkeypatch):
    data, teacher = tinted
    seen = []
    real = Distillation.loss

    def recording(self, logits, labels, targets, label_loss):
        seen.append((labels.clone(), targets.clone()))
        return real(self, logits, labels, targets, label_loss)

    monkeypatch.setattr(Distillation, "loss", recording)
    options = (
        "finetune",
        "--data",
        data,
        "--backbone",
        "resnet18",
        "--weights",
        "random",
        "--out",
        tmp_path,
        "--epochs",
        "1",
        "--workers",
        "0",
        "--quiet",
        "--teacher",
        teacher,
        "--temperature",
        "2",
        "--alpha",
        "0.8",
    )
    first = run(*options)
    assert first.exit_code == 0, first.output
    assert "once; cached" in first.output
    # every batch's targets are the teacher's probabilities of those very images (the teacher is right
    # on every training image here, so a row paired with another image's targets would show)
    assert seen and all(torch.equal(t.argmax(1), labels) for labels, t in seen)
    cache = next((tmp_path / "finetune").glob("*/teacher-*.npz"))
    stored = np.load(cache)
    model = load_model(teacher)
    paths = json.loads(str(stored["key"]))["paths"]
    direct = model.predict_proba([str(data / p) for p in paths])
    np.testing.assert_allclose(stored["probabilities"], direct, atol=1e-5)
    record = json.loads(next((tmp_path / "finetune").glob("*/model.json")).read_text())
    assert record["best_params"]["distillation"]["alpha"] == 0.8

    again = run(*options)
    assert again.exit_code == 0 and "teacher probabilities: from teacher-" in again.output


def test_teacher_errors_are_one_line(tinted, tmp_path):
    data, teacher = tinted
    base = (
        "finetune",
        "--data",
        data,
        "--backbone",
        "resnet18",
        "--weights",
        "random",
        "--out",
        tmp_path,
        "--epochs",
        "1",
        "--workers",
        "0",
    )
    assert_one_line_error(run(*base, "--teacher", tmp_path / "nope.joblib"), "--teacher", "no such file")
    other = tmp_path / "other"
    for name in ("x", "z"):
        for split in ("train", "val"):
            for i in range(3):
                write_image(other / split / name / f"{i}.png", seed=i)
    assert_one_line_error(
        run(
            "finetune",
            "--data",
            other,
            "--backbone",
            "resnet18",
            "--weights",
            "random",
            "--out",
            tmp_path / "o",
            "--epochs",
            "1",
            "--workers",
            "0",
            "--teacher",
            teacher,
        ),
        "classes this data does not have",
    )


def test_a_teacher_without_its_record_is_refused_before_anything_is_made(tinted_store, tmp_path):
    fitted = run("fit", "--clf", "logreg", "--features", tinted_store, "--out", tmp_path / "a", "--cv", "2")
    model = Path(fitted.output.strip().splitlines()[-1].split()[1])
    model.with_suffix(".json").unlink()
    data = load_features(tinted_store).data_root
    result = run(
        "finetune",
        "--data",
        data,
        "--teacher",
        model,
        "--out",
        tmp_path / "out",
        "--backbone",
        "resnet18",
        "--weights",
        "random",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--quiet",
    )
    assert_one_line_error(result, f"--teacher {model}: no {model.with_suffix('.json').name} beside it")
    assert not (tmp_path / "out").exists()
