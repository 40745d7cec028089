"""`extract --tta flip`: each stored vector is the mean of the image's and its mirror image's."""

import json

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from classifiers.export import export_onnx
from experiments.fit import fit_model
from featurize import Recipe, extract, load_features
from tests.conftest import write_image
from tests.test_cli import run

# 96 x 64 images: resnet18's resize (shorter side 256) and centre crop (224) then cut the same number of
# columns from each side, so mirroring before the crop is mirroring after it.
SIZE = (96, 64)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """The same images twice: as they are, and mirrored left-right (in a folder of their own)."""
    root, mirrored = (tmp_path_factory.mktemp("tta") / name for name in ("plain", "mirrored"))
    for i in range(12):
        split, name = ("val" if i % 4 == 0 else "train"), ("a" if i % 2 else "b")
        path = write_image(
            root / split / name / f"{i}.png", seed=i, size=SIZE, tint=(1, 0.5, 0.5) if i % 2 else (0.5, 0.5, 1)
        )
        (mirrored / split / name).mkdir(parents=True, exist_ok=True)
        Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored / split / name / f"{i}.png")
    return root, mirrored


def _vectors(store):
    features = load_features(store)
    order = np.argsort(features.paths)
    return features, features.X[order]


@pytest.mark.parametrize("engine", ["onnxruntime", "torch"])
def test_flip_vectors_are_the_mean_of_the_image_and_its_mirror(pictures, tmp_path, engine):
    root, mirrored = pictures
    options = ("--backbone", "resnet18", "--weights", "random", "--engine", engine, "--workers", "0", "--quiet")
    result = run("extract", "--data", root, "--out", tmp_path, "--tta", "flip", *options)
    assert result.exit_code == 0, result.output
    flipped = next((tmp_path / "features").glob("*-flip.h5"))
    assert run("extract", "--data", root, "--out", tmp_path, *options).exit_code == 0
    assert run("extract", "--data", mirrored, "--out", tmp_path / "m", *options).exit_code == 0
    flip, averaged = _vectors(flipped)
    plain, as_is = _vectors(flipped.with_name(flipped.name.replace("-flip", "")))
    _, mirror = _vectors(next((tmp_path / "m" / "features").glob("*.h5")))
    assert flip.config["tta"] == "flip" and "tta" not in plain.config and flip.fingerprint != plain.fingerprint
    scale = np.abs(as_is).max()
    np.testing.assert_allclose(averaged, (as_is + mirror) / 2, atol=1e-4 * scale)
    assert np.abs(averaged - as_is).max() > 1e-2 * scale  # the mirror did change the vectors

    again = run("extract", "--data", root, "--out", tmp_path, "--tta", "flip", *options)
    assert "up to date" in again.output  # the plain run beside it left the flip file alone


def test_a_model_on_flip_features_flips_too_when_predicting_and_exported(pictures, tmp_path):
    root, _ = pictures
    store = extract(
        data=root,
        backbone="resnet18",
        weights="random",
        out=tmp_path,
        workers=0,
        progress=False,
        recipe=Recipe(tta="flip"),
    ).store
    features = load_features(store)
    outcome = fit_model(features=store, out=tmp_path, clf="logreg", log=lambda _: None)
    model = __import__("joblib").load(outcome.model_path)
    paths = [f"{features.data_root}/{p}" for p in features.paths]
    vectors, failures = model.embed_images(paths)
    assert not failures
    np.testing.assert_allclose(vectors, features.X, atol=1e-4 * np.abs(features.X).max())

    graph = export_onnx(outcome.model_path, tmp_path / "onnx")
    meta = {p.key: p.value for p in __import__("onnx").load(graph).metadata_props}
    assert json.loads(meta["preprocessing"])["tta"] == "flip"
    transform = model.backbone_record()[0].preprocessing().transform()
    crops = np.stack([transform.from_file(p) for p in paths])
    _, probabilities = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"]).run(None, {"images": crops})
    np.testing.assert_allclose(probabilities, model.predict_proba(features.X), atol=1e-3)


def test_an_unknown_tta_is_refused(pictures, tmp_path):
    from common.errors import CnnfeatError

    with pytest.raises(CnnfeatError, match="--tta 'rotate'"):
        Recipe(tta="rotate")
    result = run("extract", "--data", pictures[0], "--backbone", "resnet18", "--out", tmp_path, "--tta", "rotate")
    assert result.exit_code == 2 and "rotate" in result.output
    assert not (tmp_path / "features").exists()
