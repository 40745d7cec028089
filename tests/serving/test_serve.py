"""`cnnfeat serve`: a real uvicorn process on 127.0.0.1, real HTTP requests, bounded in number."""

import asyncio
import io
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from sklearn.base import BaseEstimator

from classifiers import FeatureClassifier, save_model
from classifiers.export import export_onnx
from classifiers.heads import HEADS
from featurize import extract, load_features
from featurize.backbones import crop_transform
from featurize.decoding import UnreadableImage, decode_pil
from serving.app import create_app
from serving.batcher import Batcher, ModelLoopDown
from serving.settings import ServeSettings
from tests.conftest import REPO, write_image, write_tinted
from tests.test_cli import assert_one_line_error, run


@contextmanager
def running_server(model_path, *options):
    """`cli.py serve` on a free loopback port: its URL; stopped (SIGTERM, then SIGKILL) whatever happens."""
    with server_process(model_path, *options) as (url, _):
        yield url


@contextmanager
def server_process(model_path, *options):
    """running_server's (url, subprocess.Popen): for a caller that watches the process itself."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, str(REPO / "cli.py"), "serve", "--model", str(model_path), "--port", str(port), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise AssertionError(f"serve exited: {process.stdout.read()}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("serve did not answer /health within 120 s")
            time.sleep(0.2)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def served(tinted_store, tmp_path_factory):
    """A saved logreg model on the tinted features, its val images, and a server for it."""
    features = load_features(tinted_store)
    model = FeatureClassifier(
        HEADS["logreg"].build(0),
        class_names=features.class_names,
        feature_config=features.config,
        feature_fingerprint=features.fingerprint,
        weights_source=features.weights_source,
    )
    train = features.splits == "train"
    model.fit(features.X[train], features.y[train])
    folder = tmp_path_factory.mktemp("served")
    record = {"head": "logreg", "heldout": {"accuracy": 1.0}, "feature_file": str(Path(tinted_store).resolve())}
    path, _ = save_model(model, folder / "model.joblib", record)
    images = [f"{features.data_root}/{p}" for p in features.paths[features.splits == "val"]]
    with running_server(path, "--max-request-mb", "1", "--max-wait-ms", "50") as url:
        yield model, path, images, url


def _files(paths):
    return [("images", (p.rsplit("/", 1)[-1], open(p, "rb").read(), "image/png")) for p in paths]


def _post(url, files, timeout=60, **kwargs):
    return httpx.post(f"{url}/predict", files=files, timeout=timeout, **kwargs)


def test_predictions_are_the_models(served):
    model, _, images, url = served
    answer = _post(url, _files(images[:4]))
    assert answer.status_code == 200
    predictions = answer.json()["predictions"]
    expected = model.predict_proba(images[:4])
    for entry, row, path in zip(predictions, expected, images):
        assert entry["filename"] == path.rsplit("/", 1)[-1]
        np.testing.assert_allclose([entry["probabilities"][c] for c in model.classes_], row, atol=1e-5)
        assert entry["class"] == model.classes_[row.argmax()] and entry["probability"] == pytest.approx(row.max())


def test_model_and_health(served, tinted_store):
    model, _, _, url = served
    answer = httpx.get(f"{url}/model")
    about = answer.json()
    assert about["classes"] == list(model.classes_) and about["backbone"] == "resnet18"
    assert about["feature_fingerprint"] == model.feature_fingerprint and about["model"]["heldout"] == {"accuracy": 1.0}
    assert about["serving"]["max_request_mb"] == 1.0 and about["serving"]["max_pixels"] == 40_000_000
    # the server's own folders are nobody's business: the feature file by its name only
    assert about["model"]["feature_file"] == Path(tinted_store).name
    assert str(Path(tinted_store).resolve().parent) not in answer.text
    health = httpx.get(f"{url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["model_loop"] == "running"
    # no --docs: no Swagger pages and no schema
    assert [httpx.get(f"{url}/{page}").status_code for page in ("docs", "redoc", "openapi.json")] == [404] * 3


def test_bad_input_gets_a_4xx_with_a_message_and_the_server_stays_up(served):
    _, _, images, url = served
    good = _files(images[:1])
    mixed = _post(url, good + [("images", ("notes.txt", b"not an image", "text/plain"))])
    assert mixed.status_code == 200
    assert [("error" in e) for e in mixed.json()["predictions"]] == [False, True]
    assert "not an image" in mixed.json()["predictions"][1]["error"]

    only_bad = _post(url, [("images", ("empty.png", b"", "image/png"))])
    assert only_bad.status_code == 422 and only_bad.json()["predictions"][0]["error"] == "empty file"
    wrong_field = _post(url, [("image", ("a.png", Path(images[0]).read_bytes(), "image/png"))])
    assert wrong_field.status_code == 400 and "no field 'images' (got: image)" in wrong_field.json()["error"]
    not_multipart = httpx.post(f"{url}/predict", content=b"{}", headers={"content-type": "application/json"})
    assert not_multipart.status_code == 415
    broken = httpx.post(
        f"{url}/predict", content=b"--x\r\nnonsense", headers={"content-type": "multipart/form-data; boundary=x"}
    )
    assert broken.status_code in (400, 422) and "error" in broken.json()

    too_large = _post(url, [("images", ("big.png", b"\0" * (2 << 20), "image/png"))])
    assert too_large.status_code == 413 and "larger than 1 MB" in too_large.json()["error"]
    assert httpx.get(f"{url}/health").status_code == 200
    assert _post(url, good).status_code == 200


def test_a_streamed_body_is_refused_before_it_is_read_whole(served):
    _, _, _, url = served
    sent = []

    def body():  # no Content-Length: a chunked upload of 64 MB against a 1 MB limit
        head = b'--x\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n\r\n'
        yield head
        for _ in range(64):
            sent.append(1)
            yield b"\0" * (1 << 20)

    try:
        answer = httpx.post(
            f"{url}/predict", content=body(), timeout=60, headers={"content-type": "multipart/form-data; boundary=x"}
        )
        assert answer.status_code == 413
    except httpx.TransportError:
        pass  # the server may close the connection while we are still sending: also a refusal
    print(f"sent {len(sent)} of 64 MB before the refusal")
    assert len(sent) < 64
    assert httpx.get(f"{url}/health").status_code == 200


def test_concurrent_requests_share_batches(served):
    model, _, images, url = served
    before = httpx.get(f"{url}/health").json()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda i: _post(url, _files([images[i % len(images)]])), range(32)))
    assert all(a.status_code == 200 for a in answers)
    expected = model.predict([images[i % len(images)] for i in range(32)])
    assert [a.json()["predictions"][0]["class"] for a in answers] == list(expected)
    after = httpx.get(f"{url}/health").json()
    images_run, batches_run = after["images"] - before["images"], after["batches"] - before["batches"]
    print(f"32 concurrent requests ran as {batches_run} batches")
    # --max-batch 16: 32 images need 2 batches at least; how many more depends on when each request
    # came (test_requests_queued_while_the_model_runs_share_the_next_batches pins the exact sizes)
    assert images_run == 32 and 2 <= batches_run < 32


def test_an_exported_graph_serves_the_same_answers(served, tmp_path):
    model, path, images, _ = served
    graph = export_onnx(path, tmp_path)
    with running_server(graph) as url:
        predictions = _post(url, _files(images[:4])).json()["predictions"]
        about = httpx.get(f"{url}/model").json()
    assert about["format"] == "onnx" and about["classes"] == list(model.classes_)
    assert "/" not in about["model"]["feature_file"]
    got = np.asarray([[e["probabilities"][c] for c in model.classes_] for e in predictions])
    np.testing.assert_allclose(got, model.predict_proba(images[:4]), atol=1e-4)


def test_serve_errors_are_one_line(tmp_path):
    assert_one_line_error(run("serve", "--model", tmp_path / "nope.joblib", "--port", 0), "no such file")
    (tmp_path / "model.onnx").write_bytes(b"not a graph")
    assert_one_line_error(run("serve", "--model", tmp_path / "model.onnx", "--port", 0), "not a model.onnx written by")


def test_a_port_in_use_is_one_error_line_before_anything_is_printed(served):
    _, path, _, _ = served
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, str(REPO / "cli.py"), "serve", "--model", str(path), "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stdout + done.stderr
    assert lines[0] == (
        f"Error: cannot listen on 127.0.0.1:{port}: the address is already in use (another server?): "
        f"stop it, or choose another --port (0: any free one)"
    )


# -- memory: pixels per upload, decodes at once, requests at once -------------------------------


def test_an_image_over_max_pixels_is_refused_from_its_header(served):
    _, _, images, url = served
    huge = io.BytesIO()
    Image.new("L", (9000, 9000)).save(huge, "PNG")  # 81 MP: under Pillow's own limit (89 MP), ~80 KB
    upload = ("images", ("huge.png", huge.getvalue(), "image/png"))
    mixed = _post(url, [upload] + _files(images[:1]))
    assert mixed.status_code == 200
    refused, predicted = mixed.json()["predictions"]
    assert refused["error"] == (
        "9000x9000 image: 81.0 megapixels to decode, over this server's limit of 40 megapixels (--max-pixels)"
    )
    assert "class" in predicted
    alone = _post(url, [upload])
    assert alone.status_code == 422 and "--max-pixels" in alone.json()["predictions"][0]["error"]


def test_a_16_bit_image_counts_twice():
    wide = io.BytesIO()
    Image.new("I;16", (2000, 1500)).save(wide, "PNG")  # converting it to 8 bits takes twice the memory
    assert decode_pil(wide.getvalue(), 256, 6_000_000).size == (2000, 1500)
    with pytest.raises(UnreadableImage, match=r"6.0 megapixels to decode \(16-bit or float: 2 per pixel\)"):
        decode_pil(wide.getvalue(), 256, 5_000_000)


def test_a_large_jpeg_decodes_reduced_and_close_to_the_full_decode(served, tmp_path):
    model, _, _, url = served
    small = write_image(tmp_path / "small.png", seed=7, size=(512, 384))
    path = tmp_path / "large.jpg"
    Image.open(small).resize((2048, 1536), Image.BICUBIC).save(path, quality=90)
    data = path.read_bytes()
    reduced, full = decode_pil(data, 256, 40_000_000), decode_pil(data)
    assert reduced.size == (1024, 768) and full.size == (2048, 1536)  # DCT scale 1/2
    crop = crop_transform(256, 224, "bilinear")  # resnet18's
    difference = np.abs(crop(reduced).astype(int) - crop(full).astype(int))
    print(f"reduced vs full decode, after the crop: mean {difference.mean():.2f}, max {difference.max()} grey levels")
    assert difference.mean() < 2
    answer = _post(url, [("images", ("large.jpg", data, "image/jpeg"))])
    assert answer.status_code == 200
    got = [answer.json()["predictions"][0]["probabilities"][c] for c in model.classes_]
    np.testing.assert_allclose(got, model.predict_proba([str(path)])[0], atol=0.02)


# -- the model loop: a failing batch, a client gone, a loop that crashes, a full queue ------------


class ModelCrash(BaseException):
    """What no batch should raise: it ends the model loop rather than the batch."""


class FaultsOnDemand(BaseEstimator):
    """A fitted head that misbehaves when told to, by files in `folder` (the server process
    unpickles it from this module). A batch touches `started`, waits while `hold` exists (a minute
    at most), then raises if `fail` (RuntimeError) or `crash` (ModelCrash) exists."""

    def __init__(self, head=None, folder=""):
        self.head, self.folder = head, folder

    def predict_proba(self, X):
        folder = Path(self.folder)
        (folder / "started").touch()
        deadline = time.monotonic() + 60
        while (folder / "hold").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        if (folder / "fail").exists():
            raise RuntimeError("the head failed on purpose")
        if (folder / "crash").exists():
            raise ModelCrash("the head crashed on purpose")
        return self.head.predict_proba(X)


def _faulty_model(model, folder: Path) -> Path:
    faulty = FeatureClassifier(**model.get_params(deep=False))
    faulty.pipeline_, faulty.classes_, faulty.n_features_in_ = (
        FaultsOnDemand(model.pipeline_, str(folder)),
        model.classes_,
        model.n_features_in_,
    )
    return save_model(faulty, folder / "model.joblib", {"head": "faulty"})[0]


def _switches(folder: Path, *names):
    for name in ("started", "hold", "fail", "crash"):
        (folder / name).unlink(missing_ok=True)
    for name in names:
        (folder / name).touch()


def _wait_for(condition, what: str):
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"waited a minute for {what}"
        time.sleep(0.05)


@contextmanager
def _client_that_hangs_up(url, files):
    """Sends a whole /predict request, then (leaving the block) hangs up without reading the answer."""
    request = httpx.Request("POST", f"{url}/predict", files=files)
    body = request.read()
    host, port = request.url.host, request.url.port
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {request.headers['content-type']}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((host, port), timeout=60) as client:
        client.sendall(head + body)
        yield


@pytest.fixture(scope="module")
def faulty(served, tmp_path_factory):
    """A server (--max-queue 1, --docs) of the served model with a head that fails on demand."""
    model, _, images, _ = served
    folder = tmp_path_factory.mktemp("faulty")
    with running_server(_faulty_model(model, folder), "--max-queue", "1", "--docs") as url:
        yield url, folder, images


def test_a_failing_batch_whose_client_left_fails_alone_and_the_loop_goes_on(faulty):
    url, folder, images = faulty
    _switches(folder, "hold", "fail")
    with _client_that_hangs_up(url, _files(images[:1])):
        _wait_for(lambda: (folder / "started").exists(), "its batch to start")
    _wait_for(lambda: httpx.get(f"{url}/health").json()["in_progress"] == 0, "the server to see the client go")
    (folder / "hold").unlink()  # the batch raises now, its one request cancelled
    failed = _post(url, _files(images[:1]), timeout=30)  # a loop that died on it would never answer
    assert failed.status_code == 500
    assert failed.json()["error"] == "the model failed on this batch (RuntimeError: the head failed on purpose)"
    _switches(folder)
    assert _post(url, _files(images[:1]), timeout=30).status_code == 200
    health = httpx.get(f"{url}/health")
    assert health.status_code == 200 and health.json()["model_loop"] == "running"
    assert health.json()["failed_batches"] == 2 and health.json()["restarts"] == 0


def test_a_full_queue_answers_503_with_retry_after(faulty):
    url, folder, images = faulty
    _switches(folder, "hold")
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(_post, url, _files(images[:1]))
        _wait_for(lambda: (folder / "started").exists(), "the first request to reach the model")
        busy = [_post(url, _files(images[:1])) for _ in range(3)]  # --max-queue 1: no place left
        (folder / "hold").unlink()
        answers = [first.result()] + busy
    assert [a.status_code for a in answers] == [200, 503, 503, 503]
    for answer in busy:
        assert answer.headers["retry-after"] == "1"
        assert answer.json()["error"] == "server busy: 1 requests in progress (--max-queue); retry in 1 s"
    assert _post(url, _files(images[:1])).status_code == 200  # the place is free again


def test_docs_only_with_the_flag(faulty):
    (
        url,
        _,
        _,
    ) = faulty
    assert [httpx.get(f"{url}/{page}").status_code for page in ("docs", "redoc", "openapi.json")] == [200] * 3


def test_a_model_loop_that_keeps_crashing_gives_up_and_health_fails(served, tmp_path):
    model, _, images, _ = served
    _switches(tmp_path, "crash")  # what escapes a batch: the loop restarts, RESTARTS times in a row
    with running_server(_faulty_model(model, tmp_path)) as url:
        crashed = [_post(url, _files(images[:1]), timeout=30)]
        restarted = httpx.get(f"{url}/health")
        crashed += [_post(url, _files(images[:1]), timeout=30) for _ in range(Batcher.RESTARTS)]
        health = httpx.get(f"{url}/health")
        after = _post(url, _files(images[:1]), timeout=30)
    assert [a.status_code for a in crashed] == [500] * (Batcher.RESTARTS + 1)
    assert crashed[0].json()["error"] == (
        "the model failed on this batch (RuntimeError: the model loop crashed on "
        "this batch (ModelCrash: the head crashed on purpose))"
    )
    assert restarted.status_code == 200 and restarted.json()["restarts"] == 1
    assert health.status_code == 503 and health.json()["status"] == "down" and health.json()["model_loop"] == "stopped"
    assert health.json()["error"].startswith("the model loop gave up after 4 crashes in a row")
    assert after.status_code == 503 and after.json()["error"] == health.json()["error"]


def test_the_supervisor_counts_crashes_in_a_row_and_fails_what_waits_when_it_gives_up():
    """The loop's bookkeeping, at the asyncio level: a good batch resets the count of crashes;
    giving up fails the requests still queued (503) rather than leaving them waiting."""
    import threading

    plan, release = ["crash", "ok", "crash", "crash", "crash", "crash"], threading.Event()

    def predict(batch):
        if plan.pop(0) == "ok":
            return np.full((len(batch), 2), 0.5)
        if not plan:  # the last crash waits until a second request is queued behind it
            release.wait(10)
        raise ModelCrash("boom")

    async def scenario():
        batcher = Batcher(predict, ServeSettings(max_wait_ms=0))
        batcher.start()
        crop = [np.zeros((3, 2, 2), np.uint8)]
        outcomes = [await asyncio.gather(batcher.submit(crop), return_exceptions=True) for _ in range(5)]
        last, queued = batcher.submit(crop), None
        await asyncio.sleep(0.05)  # `last` is in the model now
        queued = batcher.submit(crop)
        release.set()
        outcomes += [await asyncio.gather(last, queued, return_exceptions=True)]
        with pytest.raises(ModelLoopDown):
            batcher.submit(crop)
        alive, restarts = batcher.alive, batcher.restarts
        batcher.stop()
        return outcomes, alive, restarts

    outcomes, alive, restarts = asyncio.run(scenario())
    kinds = [[type(o).__name__ for o in outcome] for outcome in outcomes]
    assert kinds == [
        ["RuntimeError"],
        ["ndarray"],
        ["RuntimeError"],
        ["RuntimeError"],
        ["RuntimeError"],
        ["RuntimeError", "ModelLoopDown"],
    ]
    assert not alive and restarts == 4


def test_a_batch_that_cannot_be_stacked_fails_alone():
    async def scenario():
        batcher = Batcher(lambda batch: np.full((len(batch), 2), 0.5), ServeSettings(max_wait_ms=0))
        batcher.start()
        mismatched = [np.zeros((3, 2, 2), np.uint8), np.zeros((3, 4, 4), np.uint8)]
        failed = (await asyncio.gather(batcher.submit(mismatched), return_exceptions=True))[0]
        answered = await batcher.submit(mismatched[:1])
        counts = batcher.failed_batches, batcher.restarts
        batcher.stop()
        return failed, answered, counts

    failed, answered, counts = asyncio.run(scenario())
    assert isinstance(failed, ValueError) and answered.shape == (1, 2) and counts == (1, 0)


def test_model_shows_nested_paths_by_name_and_every_string_as_utf8():
    from serving.predictors import without_paths

    record = {
        "feature_file": "/srv/a/x.h5 + /srv/b/y.h5",
        "class_names": ["ok", "blu\udcff"],
        "best_params": {"distillation": {"teacher": "/home/me/models/t.joblib", "alpha": 0.5}},
        "history": [{"checkpoint": "/tmp/run/checkpoint.pth"}],
        "head": "logreg",
    }
    assert without_paths(record) == {
        "feature_file": "x.h5 + y.h5",
        "class_names": ["ok", "blu\\xff"],
        "best_params": {"distillation": {"teacher": "t.joblib", "alpha": 0.5}},
        "history": [{"checkpoint": "checkpoint.pth"}],
        "head": "logreg",
    }


def test_a_class_named_with_bytes_that_are_not_utf8_is_served(tmp_path):
    """A class folder from another system: its model predicted, but every JSON answer was a 500."""
    data = write_tinted(tmp_path / "tinted", 6)
    os.rename(data / "train" / "blue", os.fsencode(data / "train") + b"/blu\xff")
    os.rename(data / "val" / "blue", os.fsencode(data / "val") + b"/blu\xff")
    store = load_features(
        extract(data=data, backbone="resnet18", weights="random", out=tmp_path / "out", workers=0, progress=False).store
    )
    model = FeatureClassifier(
        HEADS["logreg"].build(0),
        class_names=store.class_names,
        feature_config=store.config,
        feature_fingerprint=store.fingerprint,
        weights_source=store.weights_source,
    )
    model.fit(store.X, store.y)
    path, _ = save_model(model, tmp_path / "model.joblib", {"head": "logreg"})
    image = data / "val" / "red" / "r0.png"
    with running_server(path) as url:
        about = httpx.get(f"{url}/model")
        answer = _post(url, _files([str(image)]))
    assert about.status_code == 200 and sorted(about.json()["classes"]) == ["blu\\xff", "red"]
    assert answer.status_code == 200 and set(answer.json()["predictions"][0]["probabilities"]) == {"blu\\xff", "red"}


class _SlowDecodes:
    """A predictor whose decoding takes a while and counts how many decodes run at once."""

    classes, info = ["a", "b"], {}

    def __init__(self):
        import threading

        self.lock, self.running, self.peak = threading.Lock(), 0, 0

    def prepare(self, data, max_pixels):
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(0.3)
        with self.lock:
            self.running -= 1
        return np.zeros((3, 8, 8), np.uint8)

    def predict(self, crops):
        return np.full((len(crops), 2), 0.5)


@contextmanager
def in_process_server(app):
    """`app` (an ASGI app from create_app) served by uvicorn in a thread of this process, on a free
    loopback port: its URL; stopped on leaving."""
    import threading

    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.mark.parametrize("decode_threads", [2, 4])
def test_no_more_decodes_at_once_than_decode_threads(decode_threads):
    """Fault 4: what bounds decoding's memory is how many decodes run at once, whatever the concurrency."""
    predictor = _SlowDecodes()
    with in_process_server(create_app(predictor, ServeSettings(decode_threads=decode_threads))) as url:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: _post(url, [("images", ("a.png", b"x"))]), range(8)))
    assert [a.status_code for a in answers] == [200] * 8
    assert predictor.peak == decode_threads


# -- batching: what waits shares a batch ---------------------------------------------------------


def _held_batcher_sizes(requests: list[int], max_batch: int) -> tuple[list[int], list]:
    """Submit one image and hold it in the model while requests of `requests[k]` images each queue,
    then let it go: (the batch sizes the model saw, each request's answer). Image k of request r is
    filled with r, and the model answers each image with its own fill."""
    import threading

    sizes, started, release = [], threading.Event(), threading.Event()

    def predict(batch):
        sizes.append(len(batch))
        if len(sizes) == 1:
            started.set()
            release.wait(30)
        return batch.reshape(len(batch), -1)[:, :1].astype(float)

    async def scenario():
        batcher = Batcher(predict, ServeSettings(max_batch=max_batch, max_wait_ms=0))
        batcher.start()
        held = batcher.submit([np.zeros((3, 2, 2), np.uint8)])
        assert await asyncio.get_running_loop().run_in_executor(None, started.wait, 30)
        queued = [batcher.submit([np.full((3, 2, 2), r, np.uint8)] * n) for r, n in enumerate(requests, 1)]
        release.set()
        answers = await asyncio.gather(held, *queued)
        batcher.stop()
        return answers

    answers = asyncio.run(scenario())
    return sizes, answers


@pytest.mark.parametrize(
    "requests,max_batch,expected",
    [
        ([1] * 31, 16, [1, 16, 15]),  # 31 one-image requests queued: a full batch, then the rest
        ([3] * 6, 8, [1, 9, 9]),  # three-image requests: a batch closes at 8 or more, never splitting one
        ([1, 5, 1, 1], 4, [1, 6, 2]),  # 1 + 5 passes 4 (the 5 is not split); the two left make the last batch
    ],
)
def test_requests_that_wait_share_the_next_batches_up_to_max_batch(requests, max_batch, expected):
    sizes, answers = _held_batcher_sizes(requests, max_batch)
    assert sizes == expected
    assert [answer.ravel().tolist() for answer in answers[1:]] == [[r] * n for r, n in enumerate(requests, 1)]


def test_a_request_waits_max_wait_ms_for_others_to_join_it():
    sizes = []

    def predict(batch):
        sizes.append(len(batch))
        return np.full((len(batch), 2), 0.5)

    async def scenario(max_wait_ms: float, gap_s: float):
        batcher = Batcher(predict, ServeSettings(max_wait_ms=max_wait_ms))
        batcher.start()
        first = batcher.submit([np.zeros((3, 2, 2), np.uint8)])
        await asyncio.sleep(gap_s)
        await asyncio.gather(first, batcher.submit([np.zeros((3, 2, 2), np.uint8)]))
        batcher.stop()

    asyncio.run(scenario(max_wait_ms=500, gap_s=0.05))  # the second comes within the wait: one batch
    assert sizes == [2]
    sizes.clear()
    asyncio.run(scenario(max_wait_ms=0, gap_s=0.2))  # no waiting: each alone
    assert sizes == [1, 1]


class _HeldFirstBatch:
    """A predictor that holds its first batch until released; an upload's bytes are a number k, its
    crop is filled with k and its probabilities are (k / 100, 1 - k / 100)."""

    classes, info = ["a", "b"], {}

    def __init__(self):
        import threading

        self.sizes, self.started, self.release = [], threading.Event(), threading.Event()

    def prepare(self, data, max_pixels):
        return np.full((3, 2, 2), int(data), np.uint8)

    def predict(self, crops):
        self.sizes.append(len(crops))
        if len(self.sizes) == 1:
            self.started.set()
            self.release.wait(60)
        k = crops.reshape(len(crops), -1)[:, 0].astype(float) / 100
        return np.stack([k, 1 - k], axis=1)


def test_requests_queued_while_the_model_runs_share_the_next_batches():
    """Over HTTP: one request held in the model, 31 more queue behind it; released, they run as a
    batch of --max-batch 16 and one of the 15 left, and each gets its own answer."""
    predictor, settings = _HeldFirstBatch(), ServeSettings(max_batch=16)
    batcher = Batcher(predictor.predict, settings)
    with in_process_server(create_app(predictor, settings, batcher)) as url:
        with ThreadPoolExecutor(32) as pool:
            held = pool.submit(_post, url, [("images", ("0.png", b"0"))])
            assert predictor.started.wait(60)
            queued = [pool.submit(_post, url, [("images", (f"{k}.png", str(k).encode()))]) for k in range(1, 32)]
            _wait_for(lambda: batcher.queue.qsize() == 31, "31 requests to queue behind the held batch")
            predictor.release.set()
            answers = [held.result()] + [future.result() for future in queued]
    assert [answer.status_code for answer in answers] == [200] * 32
    assert predictor.sizes == [1, 16, 15]
    assert [answer.json()["predictions"][0]["probabilities"]["a"] for answer in answers] == pytest.approx(
        [k / 100 for k in range(32)]
    )
