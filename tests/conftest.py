"""Shared fixtures: generated images, the hymenoptera data beside the repository, one real extraction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
HYMENOPTERA = REPO.parent / "shared" / "datasets" / "hymenoptera"


def write_image(path: Path, seed: int, size=(96, 72), mode="RGB", fmt=None, tint=(1.0, 1.0, 1.0)) -> Path:
    """A small image with a seeded pattern (smooth, so resizing is meaningful), optionally tinted."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    yy, xx = np.mgrid[0:h, 0:w]
    channels = [
        np.sin(xx / (3 + rng.random() * 9) + rng.random() * 6) * np.cos(yy / (3 + rng.random() * 9)) for _ in range(3)
    ]
    pixels = ((np.stack(channels, -1) + 1) * 127.5 * np.asarray(tint)).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").convert(mode).save(path, format=fmt)
    return path


def write_tinted(root: Path, count: int) -> Path:
    """`count` reddish and `count` bluish images, every 4th in val/, the rest in train/."""
    for i in range(count):
        split = "val" if i % 4 == 0 else "train"
        write_image(root / split / "red" / f"r{i}.png", seed=i, tint=(1.0, 0.4, 0.4))
        write_image(root / split / "blue" / f"b{i}.png", seed=100 + i, tint=(0.4, 0.4, 1.0))
    return root


def write_tinted_with_mistakes(root: Path, count: int, wrong: int = 3) -> Path:
    """write_tinted, plus `wrong` reddish images filed under val/blue and as many bluish under
    val/red: held-out images any head gets wrong (a report with mistakes to show)."""
    write_tinted(root, count)
    for i in range(wrong):
        write_image(root / "val" / "blue" / f"odd-r{i}.png", seed=500 + i, tint=(1.0, 0.4, 0.4))
        write_image(root / "val" / "red" / f"odd-b{i}.png", seed=600 + i, tint=(0.4, 0.4, 1.0))
    return root


@pytest.fixture(scope="session", autouse=True)
def session_graph_cache(tmp_path_factory):
    """The exported-graph cache of session and module fixtures (set before any of them runs): the
    user's ~/.cache is never written."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNFEAT_CACHE_DIR", str(tmp_path_factory.mktemp("graph-cache")))
        yield


@pytest.fixture(autouse=True)
def graph_cache(tmp_path, monkeypatch) -> Path:
    """Each test's own cache of saved models' exported backbones (featurize.graph_cache_dir): no test
    writes to the user's ~/.cache, or finds a graph another test exported."""
    folder = tmp_path / "graph-cache"
    monkeypatch.setenv("CNNFEAT_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def class_folders(tmp_path) -> Path:
    """data/{cats,dogs}/*.png: 4 + 3 images, no split."""
    root = tmp_path / "pets"
    for i in range(4):
        write_image(root / "cats" / f"c{i}.png", seed=i)
    for i in range(3):
        write_image(root / "dogs" / f"d{i}.jpg", seed=10 + i)
    return root


@pytest.fixture(scope="session")
def hymenoptera() -> Path:
    if not HYMENOPTERA.is_dir():
        pytest.skip(f"{HYMENOPTERA} is not there (CI has it: ../shared beside the repository)")
    return HYMENOPTERA


@pytest.fixture(scope="session")
def hymenoptera_lite0(hymenoptera, tmp_path_factory) -> Path:
    """The real feature file: bundled lite0 weights on hymenoptera, extracted once per session."""
    from featurize import extract

    out = tmp_path_factory.mktemp("artifacts")
    return extract(data=hymenoptera, out=out, progress=False).store


@pytest.fixture
def offline_torch_hub(monkeypatch, tmp_path):
    """An empty torch cache and no network, whatever the machine running the tests has."""
    import urllib.error

    import torchvision.models._api

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network (simulated by the test)")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    return tmp_path / "torch-home"


@pytest.fixture(scope="session")
def tinted_store(tmp_path_factory) -> Path:
    """A small real feature file: reddish vs bluish images (train/ and val/), random-weight resnet18."""
    from featurize import extract

    root = write_tinted(tmp_path_factory.mktemp("tinted") / "tinted", 24)
    out = tmp_path_factory.mktemp("tinted-artifacts")
    return extract(data=root, backbone="resnet18", weights="random", out=out, workers=0, progress=False).store


def generated_store(folder: Path, rows: int, dim: int = 8, classes: int = 7):
    """A store of `rows` random vectors written through the store's API (every fifth row val), and
    what it was made from: (store, images, identities, attrs, X)."""
    import json

    from featurize.discovery import ImageList
    from featurize.fingerprints import fingerprint
    from featurize.placement import IN_MEMORY, Placement
    from featurize.store import VectorReader, write_store

    images = ImageList(
        root=folder, name="scale-00000000", layout="class-folders", class_names=[f"class{c}" for c in range(classes)]
    )
    for i in range(rows):
        images.add(f"class{i % classes}/{i:06d}.jpg", i % classes, "val" if i % 5 == 0 else "train")
    config = {"backbone": "generated", "feature_dim": dim}
    attrs = {
        "fingerprint": fingerprint(config),
        "config": json.dumps(config),
        "versions": "{}",
        "class_names": json.dumps(images.class_names),
        "data_root": str(folder),
        "dataset": images.name,
    }
    identities = np.stack([np.arange(rows), np.arange(rows)], axis=1)
    X = np.random.default_rng(0).random((rows, dim), dtype=np.float32)
    X[np.arange(rows), np.arange(rows) % classes % dim] += 1  # something to learn
    placement = Placement(images.paths)
    placement.put(np.arange(rows), identities, np.arange(rows), [""] * rows, IN_MEMORY)
    store = folder / "scale.h5"
    write_store(store, images, identities, placement, dim, attrs, VectorReader(dim, memory=X))
    return store, images, identities, attrs, X


@pytest.fixture(scope="session")
def server():
    """A real S3 server on loopback (moto's, behind the counting, fault-injecting proxy of tests/s3_server.py)."""
    from tests.s3_server import S3Server

    s3 = S3Server()
    yield s3
    s3.stop()


@pytest.fixture
def s3(server, tmp_path, monkeypatch, request):
    """The server, a fresh bucket named after the test, the client's environment set (subprocesses
    inherit it); the proxy's counts and faults cleared."""
    for name, value in server.env(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to look for
    server.bucket = "b" + str(abs(hash(request.node.name)))[:12]
    server.client().create_bucket(Bucket=server.bucket)
    from featurize import remote

    remote._filesystems.clear()  # a client of another test's credentials is not this test's
    server.proxy.requests.clear()
    server.proxy.failing.clear()
    server.proxy.denied.clear()
    return server
