"""`explain`: heatmaps checked against a direct computation, shown to follow the object, and the CLI."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classifiers import load_model
from classifiers.linear_form import linear_form
from experiments.fit import fit_model
from experiments.heatmaps import class_activation_map, occlusion_map
from featurize import Recipe, extract, load_features, load_image
from tests.test_cli import assert_one_line_error, run

QUIET = {"log": lambda _: None}


def _model(store, tmp_path, clf="logreg", grid=None):
    return load_model(fit_model(features=store, out=tmp_path, clf=clf, grid=grid, **QUIET).model_path)


LINEAR_SVM = '{"kernel": ["linear"], "C": [1.0]}'


@pytest.mark.parametrize(
    "clf,grid,tta",
    [("logreg", None, "none"), ("linear", None, "none"), ("logreg", None, "flip"), ("svm", LINEAR_SVM, "none")],
)
def test_the_cam_averages_to_the_head_s_own_score(tinted_store, tmp_path, clf, grid, tta):
    """The spatial mean of each class's map plus its bias is the head's own score on the image's
    vector, computed the ordinary way: embed, then predict_proba (softmax of the scores, for logreg
    and linear) or the SVM's decision function (the score difference, for the linear SVM)."""
    store = tinted_store
    if tta == "flip":
        store = extract(
            data=load_features(tinted_store).data_root,
            backbone="resnet18",
            weights="random",
            out=tmp_path,
            workers=0,
            progress=False,
            recipe=Recipe(tta="flip"),
        ).store
    model, data = _model(store, tmp_path, clf, grid), load_features(store)
    path = f"{data.data_root}/{data.paths[0]}"
    W, b = linear_form(model.pipeline_)
    vector = model.embed_images([path])[0]
    heats = [class_activation_map(model, load_image(path), str(c)) for c in model.classes_]
    assert [h.class_name for h in heats] == list(model.classes_) and heats[0].heat.shape == (7, 7)
    scores = np.asarray([h.heat.mean() for h in heats]) + b
    np.testing.assert_allclose(scores, W @ vector[0] + b, rtol=1e-3, atol=1e-3)  # the map pools to the vector
    proba = model.predict_proba(vector)[0]
    np.testing.assert_allclose([h.probability for h in heats], proba, atol=1e-3)
    if clf == "svm":
        svm = model.pipeline_.named_steps["clf"].calibrated_classifiers_[0].estimator
        margin = svm.decision_function(model.pipeline_.named_steps["scale"].transform(vector))[0]
        assert scores[1] - scores[0] == pytest.approx(margin, rel=1e-3, abs=1e-3)
    else:
        np.testing.assert_allclose(np.exp(scores) / np.exp(scores).sum(), proba, atol=1e-3)


def test_the_heat_follows_the_object_when_the_image_is_mirrored(hymenoptera_lite0, tmp_path):
    model, data = _model(hymenoptera_lite0, tmp_path), load_features(hymenoptera_lite0)
    images = [load_image(f"{data.data_root}/{p}") for p in data.paths[data.splits == "val"][:12]]

    def off_centre(heat):  # how far the heat's centre of mass lies from the middle, left-right
        weights = np.clip(heat, 0, None).sum(axis=0)
        return abs((weights * np.linspace(-1, 1, len(weights))).sum() / max(weights.sum(), 1e-12))

    for explain in (class_activation_map, occlusion_map):
        image = max(images, key=lambda im: off_centre(explain(model, im, None).heat))  # an object off the middle
        heat, mirrored = explain(model, image, None).heat, explain(model, image.flip(2), None).heat
        follows = np.corrcoef(mirrored.ravel(), heat[:, ::-1].ravel())[0, 1]
        stays = np.corrcoef(mirrored.ravel(), heat.ravel())[0, 1]
        print(f"{explain.__name__}: corr with the mirrored heat {follows:.2f}, with the unmoved heat {stays:.2f}")
        assert follows > 0.5 and follows > stays + 0.3


def test_explain_cli_writes_a_png_per_good_image_and_says_why_for_the_others(tinted_store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever a run writes by default lands in the test's own folder
    data = load_features(tinted_store)
    model = fit_model(features=tinted_store, out=tmp_path, clf="logreg", **QUIET).model_path
    knn = fit_model(features=tinted_store, out=tmp_path, clf="knn", **QUIET).model_path
    good = [f"{data.data_root}/{p}" for p in data.paths[:2]]
    (tmp_path / "broken.png").write_bytes(b"not a png")
    result = run("explain", "--model", model, *good, tmp_path / "broken.png", "--out", tmp_path / "heat")
    assert result.exit_code == 0, result.output
    assert "class activation map" in result.output and "skipped" in result.output and "broken.png" in result.output
    pngs = sorted((tmp_path / "heat").glob("*.png"))
    assert len(pngs) == 2 and all(p.stat().st_size > 5000 for p in pngs)
    grids = run(
        "explain", "--model", model, good[0], "--out", tmp_path / "grids", "--feature-maps", "layer2", "--filters"
    )
    assert grids.exit_code == 0, grids.output
    assert sorted(p.name for p in (tmp_path / "grids").iterdir()) == sorted(
        ["filters.png", f"{Path(good[0]).stem}.png", f"{Path(good[0]).stem}-maps.png"]
    )
    refused = tmp_path / "refused"
    assert_one_line_error(
        run("explain", "--model", model, good[0], "--feature-maps", "layer9", "--out", refused), "no such layer"
    )

    other = run("explain", "--model", knn, good[0], "--out", tmp_path / "knn", "--class", "red")
    assert other.exit_code == 0 and "occlusion" in other.output, other.output
    assert_one_line_error(
        run("explain", "--model", knn, good[0], "--method", "cam", "--out", refused), "needs a linear head"
    )
    assert_one_line_error(
        run("explain", "--model", model, good[0], "--class", "green", "--out", refused), "--class green"
    )
    assert list(refused.iterdir()) == []  # refused before any picture
    nothing = run("explain", "--model", model, tmp_path / "broken.png", "--out", tmp_path / "x")
    assert nothing.exit_code == 1 and "Traceback" not in nothing.output
    assert nothing.output.strip().splitlines()[-1] == "Error: none of the 1 images could be read"

    assert not (tmp_path / "artifacts").exists()
    default = run("explain", "--model", model, good[0])  # no --out: under the default output root
    assert default.exit_code == 0, default.output
    assert default.output.strip().splitlines()[-1] == "1 pictures, 0 unreadable: artifacts/explain"
    assert [p.name for p in (tmp_path / "artifacts" / "explain").iterdir()] == [f"{Path(good[0]).stem}.png"]


def test_occlusion_explains_a_head_without_a_linear_form(tmp_path):
    """Grey images with a red or a blue square on the left: an SVM (calibrated; lite0 features) that
    tells the colours apart loses confidence when the square is hidden, so the heat sits on it."""
    for i in range(12):
        for colour, rgb in (("red", (220, 40, 40)), ("blue", (40, 40, 220))):
            image = np.full((64, 96, 3), 128, np.uint8)
            image[20:44, 8 + i % 3 : 36 + i % 3] = rgb
            path = tmp_path / "squares" / ("val" if i % 4 == 0 else "train") / colour / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
    store = extract(data=tmp_path / "squares", out=tmp_path, progress=False, workers=0).store
    model = _model(store, tmp_path, "svm")
    heat = occlusion_map(model, load_image(tmp_path / "squares" / "val" / "red" / "0.png"), None)
    assert heat.class_name == "red" and heat.heat.shape == (64, 96)
    assert heat.heat[20:44, 8:36].mean() > max(0.0, 2 * abs(heat.heat[:, 56:].mean()))


def test_feature_maps_are_the_strongest_channels_and_filters_the_first_kernels(tinted_store, tmp_path):
    import torch

    from experiments.heatmaps import feature_map_grid, first_layer_filters
    from featurize import get_backbone

    model, data = _model(tinted_store, tmp_path), load_features(tinted_store)
    image = load_image(f"{data.data_root}/{data.paths[0]}")
    maps, layer = feature_map_grid(model, image, "layer3")
    network = get_backbone("resnet18").load("random")
    with torch.inference_mode():
        x = network.normalise(torch.from_numpy(network.preprocessing.transform()(image)).unsqueeze(0))
        t = network.trunk
        direct = t.layer3(t.layer2(t.layer1(t.maxpool(t.relu(t.bn1(t.conv1(x)))))))[0].numpy()
    strongest = np.sort(direct.mean(axis=(1, 2)))[::-1][:16]
    assert layer == "layer3" and maps.shape == (16, 14, 14)
    np.testing.assert_allclose(maps.mean(axis=(1, 2)), strongest, rtol=1e-5)
    kernels, name = first_layer_filters(model)
    assert kernels.shape == (64, 7, 7, 3) and name == "resnet18 conv1" and kernels.min() == 0 and kernels.max() == 1


@pytest.mark.parametrize(
    "method,unit", [("occlusion", "drop of the class's probability"), ("class activation map", "the class's score")]
)
def test_a_heatmap_has_a_colour_bar_in_the_heat_s_own_units(method, unit):
    from experiments.heatmaps import Heatmap
    from experiments.plots import heatmap_figure, heatmap_png, pyplot

    heat = np.linspace(-0.2, 0.7, 49).reshape(7, 7)
    heatmap = Heatmap(np.zeros((60, 90, 3), np.uint8), heat, "red", 0.9, method)
    figure = heatmap_figure(heatmap, "some/red.png")
    image_axis, bar_axis = figure.axes  # the picture, and its colour bar beside it
    assert bar_axis.get_ylabel().replace("\n", " ").startswith(unit)
    assert np.allclose(bar_axis.get_ylim(), (-0.2, 0.7))  # from the lowest heat to the highest, as drawn
    assert bar_axis.get_position().x0 > image_axis.get_position().x1
    pyplot().close(figure)
    assert heatmap_png(heatmap, "some/red.png").startswith(b"\x89PNG")  # what explain writes is that figure


def test_stage_pooled_features_get_occlusion_and_cam_says_why_not(tinted_store, tmp_path):
    data = load_features(tinted_store)
    store = extract(
        data=data.data_root, backbone="resnet18", weights="random", out=tmp_path, workers=0, progress=False,
        recipe=Recipe(layers=2, pool="gem"),
    ).store  # fmt: skip
    model_path = fit_model(features=store, out=tmp_path, clf="logreg", **QUIET).model_path
    image = f"{data.data_root}/{data.paths[0]}"
    refused = run("explain", "--model", model_path, image, "--method", "cam", "--out", tmp_path / "cam")
    assert_one_line_error(refused, "--method cam needs features that are the plain mean of one feature map")
    auto = run("explain", "--model", model_path, image, "--out", tmp_path / "auto")
    assert auto.exit_code == 0, auto.output
    assert len(list((tmp_path / "auto").rglob("*.png"))) == 1
