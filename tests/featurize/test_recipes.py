"""Feature recipes (`extract --layers/--pool/--image-size/--tta crops/--preset`): each against a
forward pass written here by hand on the real EfficientNet-Lite0, on both engines; every backbone's
stages as the registry says; a store of one recipe never reused for another; an exported graph
agreeing with `predict`; variants side by side in `compare`."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch.nn import functional as F

from classifiers.export import export_onnx
from common.errors import BackboneError
from experiments.compare import compare
from experiments.fit import fit_model
from featurize import BACKBONES, Backbone, Recipe, extract, get_backbone, load_features, preset_recipe
from featurize.backbones import LiteBackbone
from featurize.engines import cpu_session, export_backbone
from tests.test_cli import run

HAND_POOLS = {
    "avg": lambda m: m.mean(dim=(2, 3)),
    "max": lambda m: m.amax(dim=(2, 3)),
    "avgmax": lambda m: (m.mean(dim=(2, 3)) + m.amax(dim=(2, 3))) / 2,
    "gem": lambda m: m.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3),
}


def hand_written_lite(trunk, images: torch.Tensor, recipe: Recipe, crop: int) -> torch.Tensor:
    """EfficientNet-Lite's forward pass written out: stem, blocks, head; the maps after the last block
    of each width and the head's, pooled, the last `layers` of them L2-normalised and joined; the views
    of `tta` cut by hand and averaged."""
    x = (images.float() - 127) / 128  # the lite weights' scaling
    side = x.shape[-1]
    if recipe.tta == "crops":
        at, far = int(round((side - crop) / 2.0)), side - crop  # torchvision's CenterCrop offset
        views = [x[:, :, t : t + crop, s : s + crop] for t, s in ((0, 0), (0, far), (far, 0), (far, far), (at, at))]
    else:
        views = [x]
    if recipe.tta != "none":
        views += [v.flip(3) for v in views]
    vectors = []
    for view in views:
        h = trunk._swish(trunk._bn0(trunk._conv_stem(view)))
        ends = {}
        for block in trunk._blocks:
            h = block(h)
            ends[h.shape[1]] = h  # the last block of each width
        maps = [*ends.values(), trunk._swish(trunk._bn1(trunk._conv_head(h)))][-recipe.layers :]
        parts = [HAND_POOLS[recipe.pool](m) for m in maps]
        vectors.append(parts[0] if len(parts) == 1 else torch.cat([F.normalize(p, dim=1) for p in parts], 1))
    return torch.stack(vectors).mean(0)


@pytest.fixture(scope="module")
def photos(hymenoptera):
    return sorted((hymenoptera / "val" / "bees").glob("*.jpg"))[:3]


@pytest.mark.parametrize(
    "recipe",
    [
        Recipe(layers=3, pool="gem"),
        Recipe(layers=8, pool="avg"),
        Recipe(pool="max"),
        Recipe(layers=2, pool="avgmax"),
        Recipe(image_size=288),
        Recipe(tta="crops"),
        Recipe(
            tta="crops", image_size=288
        ),  # crops cut 41 pixels apart: the centre's offset rounded as torchvision does
        Recipe(layers=5, tta="flip", image_size=256),
    ],
    ids=lambda r: r.tag()[1:],
)
def test_a_recipe_equals_the_hand_written_forward_pass_on_both_engines(photos, recipe):
    backbone = get_backbone("efficientnet_lite0")
    module = backbone.load(recipe=recipe)
    crop = recipe.preprocessing(backbone).crop_size
    resized = recipe.preprocessing(backbone).resize_size
    assert module.preprocessing.crop_size == (max(resized, round(crop * 8 / 7)) if recipe.tta == "crops" else crop)
    images = torch.from_numpy(np.stack([module.preprocessing.transform().from_file(p) for p in photos]))
    with torch.inference_mode():
        expected = hand_written_lite(
            module.trunk.trunk if hasattr(module.trunk, "pool") else module.trunk, images, recipe, crop
        )
        by_torch = module(images)
    assert by_torch.shape == (3, recipe.feature_dim(backbone)) == expected.shape
    torch.testing.assert_close(by_torch, expected, rtol=1e-5, atol=1e-5)
    by_onnx = cpu_session(export_backbone(module)).run(None, {"images": images.numpy()})[0]
    np.testing.assert_allclose(by_onnx, expected.numpy(), rtol=1e-3, atol=1e-4)


def test_the_plain_recipe_is_the_backbone_s_own_vector(photos):
    backbone = get_backbone("efficientnet_lite0")
    plain, pooled_once = backbone.load(), backbone.load(recipe=Recipe(layers=1, pool="avg", image_size=224))
    images = torch.from_numpy(np.stack([plain.preprocessing.transform().from_file(p) for p in photos]))
    with torch.inference_mode():
        assert torch.equal(plain(images), pooled_once(images))
        assert torch.equal(plain(images), plain.trunk(plain.normalise(images)))


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_s_stages_are_as_wide_as_the_registry_says(name):
    """The registry's widths name a file's width before any network is built (an up-to-date run
    never builds one): here each network, built with random weights, is measured."""
    from featurize.network import stage_ends

    backbone = get_backbone(name)
    try:
        with torch.device("meta"):  # no memory, no arithmetic: shapes only
            trunk = backbone.build_trunk(pretrained=False)
    except NotImplementedError:  # RegNet computes its widths from tensors as it is built
        trunk = backbone.build_trunk(pretrained=False)
    widths = [width for _, width in stage_ends(trunk, backbone.stage_candidates(trunk), size=224)]
    assert tuple(widths) == backbone.stage_dims and widths[-1] == backbone.feature_dim


def test_threads_sharing_a_stage_pooling_module_get_their_own_maps():
    """A saved model's torch module may be called from several threads at once (predict_proba in
    a thread pool): each call pools its own stage maps, never another call's."""
    from concurrent.futures import ThreadPoolExecutor

    module = get_backbone("resnet18").load("random", recipe=Recipe(layers=2, pool="gem"))
    batches = [torch.randint(0, 255, (n, 3, 64, 64), dtype=torch.uint8) for n in (1, 2, 3, 4) * 4]
    with torch.inference_mode():
        alone = [module(batch) for batch in batches]
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(module, batches))
    for one, other in zip(alone, together):
        torch.testing.assert_close(one, other)
    assert not module.trunk._maps  # nothing kept after the calls


class Unstaged(LiteBackbone):
    """A backbone registered the way a user's own might be: no stage widths, no stage candidates."""

    def build_trunk(self, pretrained: bool):
        return get_backbone("efficientnet_lite0").build_trunk(pretrained)

    def stage_candidates(self, trunk):
        return Backbone.stage_candidates(self, trunk)


def test_a_backbone_registered_without_its_stages_makes_plain_vectors_and_says_why_not_more():
    bare = Unstaged("my_lite", 1280, image_size=224, weights_module="x", weights_class="y")
    assert Recipe(tta="flip").feature_dim(bare) == 1280 and bare.load("random", recipe=Recipe(tta="flip")).views == 2
    with pytest.raises(BackboneError, match="my_lite has 0 stages"):
        bare.load("random", recipe=Recipe(layers=2))
    with pytest.raises(BackboneError, match="my_lite does not say where its stages are"):
        bare.load("random", recipe=Recipe(pool="gem"))


def test_a_recipe_out_of_range_is_one_clear_line(class_folders, tmp_path):
    for bad, message in [
        (dict(layers=0), "--layers 0"),
        (dict(pool="median"), "--pool 'median'"),
        (dict(image_size=8), "--image-size 8"),
        (dict(image_size=320.5), "--image-size 320.5"),
    ]:
        with pytest.raises(BackboneError, match=message):
            Recipe(**bad)
    result = run("extract", "--data", class_folders, "--out", tmp_path, "--backbone", "resnet18", "--layers", "5")
    assert result.exit_code == 1 and "--layers 5: resnet18 has 4 stages (widths 64, 128, 256, 512)" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "features").exists()


def test_presets_and_the_options_that_override_them():
    lite0, resnet18 = get_backbone("efficientnet_lite0"), get_backbone("resnet18")
    assert preset_recipe("fast", lite0) == Recipe()
    accurate = preset_recipe("accurate", lite0)
    assert accurate != Recipe() and preset_recipe("accurate", lite0, tta="none") == Recipe(
        **{**accurate.config(), "tta": "none"}
    )
    assert preset_recipe("accurate", resnet18).layers <= len(resnet18.stage_dims)  # no more stages than it has
    assert preset_recipe("fast", lite0, layers=3, pool="gem") == Recipe(layers=3, pool="gem")
    assert preset_recipe("fast", lite0, image_size=224) == Recipe()  # its own size: the plain file, not a copy


def test_a_store_of_one_recipe_is_never_reused_for_another(class_folders, tmp_path):
    options = dict(data=class_folders, backbone="resnet18", weights="random", out=tmp_path, workers=0, progress=False)
    recipes = [Recipe(), Recipe(layers=2), Recipe(pool="gem"), Recipe(layers=2, pool="gem"), Recipe(image_size=160)]
    results = [extract(**options, recipe=recipe) for recipe in recipes]
    stores = [load_features(result.store) for result in results]
    assert all(result.extracted == result.total for result in results)  # none reused another's vectors
    assert len({s.fingerprint for s in stores}) == len({r.store for r in results}) == len(recipes)
    assert [s.X.shape[1] for s in stores] == [512, 768, 512, 768, 512]
    assert [r.store.name.split("resnet18-random")[1] for r in results] == [
        ".h5",
        "-l2.h5",
        "-gem.h5",
        "-l2-gem.h5",
        "-s160.h5",
    ]
    assert (
        stores[4].config["preprocessing"]["crop_size"] == 160
        and stores[4].config["preprocessing"]["resize_size"] == 183
    )
    again = [extract(**options, recipe=recipe) for recipe in recipes]
    assert all(result.extracted == 0 for result in again)  # each finds its own file up to date


@pytest.mark.parametrize(
    "options,tag,width,recipe",
    [
        (("--layers", "3", "--pool", "gem"), "-l3-gem", 192 + 320 + 1280, {"layers": 3, "pool": "gem"}),
        (("--image-size", "160", "--tta", "crops"), "-s160-crops", 1280, {"image_size": 160, "tta": "crops"}),
    ],
)
def test_an_exported_graph_of_a_recipe_agrees_with_predict(class_folders, tmp_path, options, tag, width, recipe):
    result = run("extract", "--data", class_folders, "--out", tmp_path, *options, "--workers", "0", "--quiet")
    assert result.exit_code == 0, result.output
    store = next((tmp_path / "features").glob(f"*{tag}.h5"))
    features = load_features(store)
    assert features.X.shape[1] == width
    outcome = fit_model(features=store, out=tmp_path, clf="logreg", log=lambda _: None)
    model = __import__("joblib").load(outcome.model_path)
    paths = [f"{features.data_root}/{p}" for p in features.paths]
    predicted = run("predict", "--model", outcome.model_path, *paths, "--out", tmp_path / "p")
    assert predicted.exit_code == 0, predicted.output

    graph = export_onnx(outcome.model_path, tmp_path / "onnx")
    meta = json.loads({p.key: p.value for p in __import__("onnx").load(graph).metadata_props}["preprocessing"])
    assert meta["recipe"] == recipe
    transform = model.sources()[0].embedder()[0].preprocessing.transform()
    crops = np.stack([transform.from_file(p) for p in paths])
    labels, probabilities = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"]).run(
        None, {"images": crops}
    )
    np.testing.assert_allclose(probabilities, model.predict_proba(paths), atol=1e-3)
    assert model.classes_[labels].tolist() == model.predict(paths).tolist()


def test_compare_ranks_recipes_of_one_backbone_side_by_side_and_fuses_them(class_folders, tmp_path):
    options = dict(data=class_folders, backbone="resnet18", weights="random", out=tmp_path, workers=0, progress=False)
    plain = extract(**options).store
    staged = extract(**options, recipe=Recipe(layers=2, pool="gem")).store
    outcome = compare(features=[plain, staged], out=tmp_path, clf="logreg", log=lambda _: None)
    labels = {row.backbone for row in outcome.rows}
    assert {"resnet18-random", "resnet18-random-l2-gem", "resnet18-random+resnet18-random-l2-gem"} <= labels


def test_the_config_says_what_a_recipe_pools_and_where_its_crops_come_from():
    from featurize import FeatureSpec

    resnet50 = get_backbone("resnet50")  # torchvision's V2 weights: resize 232 around a 224 crop
    crops = FeatureSpec(resnet50, recipe=Recipe(tta="crops")).config
    assert crops["crops_from"] == 256 and crops["preprocessing"]["resize_size"] == 232 and crops["tta"] == "crops"
    staged = FeatureSpec(resnet50, recipe=Recipe(layers=2, pool="gem")).config
    assert staged["pooling"] == "gem of the last 2 stages" and staged["feature_dim"] == 1024 + 2048
    plain = FeatureSpec(resnet50).config
    assert plain["pooling"] == "global-average" and not {"crops_from", "layers", "pool", "tta"} & set(plain)
