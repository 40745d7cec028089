"""`cnnfeat serve`: a real uvicorn process on 127.0.0.1, real HTTP requests, bounded in number."""
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import numpy as np
import pytest

from classifiers import FeatureClassifier, save_model
from classifiers.export import export_onnx
from classifiers.heads import HEADS
from featurize import load_features
from tests.conftest import REPO
from tests.test_cli import assert_one_line_error, run


@contextmanager
def running_server(model_path, *options):
    """`cli.py serve` on a free loopback port; stopped (SIGTERM, then SIGKILL) whatever happens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "serve", "--model", str(model_path),
                                "--port", str(port), *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
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
        yield url
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
    model = FeatureClassifier(HEADS["logreg"].build(0), class_names=features.class_names,
                              feature_config=features.config, feature_fingerprint=features.fingerprint,
                              weights_source=features.weights_source)
    train = features.splits == "train"
    model.fit(features.X[train], features.y[train])
    folder = tmp_path_factory.mktemp("served")
    path, _ = save_model(model, folder / "model.joblib", {"head": "logreg", "heldout": {"accuracy": 1.0}})
    images = [f"{features.data_root}/{p}" for p in features.paths[features.splits == "val"]]
    with running_server(path, "--max-request-mb", "1", "--max-wait-ms", "50") as url:
        yield model, path, images, url


def _files(paths):
    return [("images", (p.rsplit("/", 1)[-1], open(p, "rb").read(), "image/png")) for p in paths]


def _post(url, files, **kwargs):
    return httpx.post(f"{url}/predict", files=files, timeout=60, **kwargs)


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


def test_model_and_health(served):
    model, _, _, url = served
    about = httpx.get(f"{url}/model").json()
    assert about["classes"] == list(model.classes_) and about["backbone"] == "resnet18"
    assert about["feature_fingerprint"] == model.feature_fingerprint and about["model"]["heldout"] == {"accuracy": 1.0}
    assert about["serving"]["max_request_mb"] == 1.0
    assert httpx.get(f"{url}/health").json()["status"] == "ok"


def test_bad_input_gets_a_4xx_with_a_message_and_the_server_stays_up(served):
    _, _, images, url = served
    good = _files(images[:1])
    mixed = _post(url, good + [("images", ("notes.txt", b"not an image", "text/plain"))])
    assert mixed.status_code == 200
    assert [("error" in e) for e in mixed.json()["predictions"]] == [False, True]
    assert "not an image" in mixed.json()["predictions"][1]["error"]

    only_bad = _post(url, [("images", ("empty.png", b"", "image/png"))])
    assert only_bad.status_code == 422 and only_bad.json()["predictions"][0]["error"] == "empty file"
    wrong_field = _post(url, [("image", ("a.png", open(images[0], "rb").read(), "image/png"))])
    assert wrong_field.status_code == 400 and "no field 'images' (got: image)" in wrong_field.json()["error"]
    not_multipart = httpx.post(f"{url}/predict", content=b"{}", headers={"content-type": "application/json"})
    assert not_multipart.status_code == 415
    broken = httpx.post(f"{url}/predict", content=b"--x\r\nnonsense",
                        headers={"content-type": "multipart/form-data; boundary=x"})
    assert broken.status_code in (400, 422) and "error" in broken.json()

    too_large = _post(url, [("images", ("big.png", b"\0" * (2 << 20), "image/png"))])
    assert too_large.status_code == 413 and "larger than 1 MB" in too_large.json()["error"]
    assert httpx.get(f"{url}/health").status_code == 200
    assert _post(url, good).status_code == 200


def test_a_streamed_body_is_refused_before_it_is_read_whole(served):
    _, _, _, url = served
    sent = []

    def body():  # no Content-Length: a chunked upload of 64 MB against a 1 MB limit
        head = b"--x\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n\r\n"
        yield head
        for _ in range(64):
            sent.append(1)
            yield b"\0" * (1 << 20)

    try:
        answer = httpx.post(f"{url}/predict", content=body(), timeout=60,
                            headers={"content-type": "multipart/form-data; boundary=x"})
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
    assert images_run == 32 and batches_run < 32


def test_an_exported_graph_serves_the_same_answers(served, tmp_path):
    model, path, images, _ = served
    graph = export_onnx(path, tmp_path)
    with running_server(graph) as url:
        predictions = _post(url, _files(images[:4])).json()["predictions"]
        about = httpx.get(f"{url}/model").json()
    assert about["format"] == "onnx" and about["classes"] == list(model.classes_)
    got = np.asarray([[e["probabilities"][c] for c in model.classes_] for e in predictions])
    np.testing.assert_allclose(got, model.predict_proba(images[:4]), atol=1e-4)


def test_serve_errors_are_one_line(tmp_path):
    assert_one_line_error(run("serve", "--model", tmp_path / "nope.joblib"), "no such file")
    (tmp_path / "model.onnx").write_bytes(b"not a graph")
    assert_one_line_error(run("serve", "--model", tmp_path / "model.onnx"), "not a model.onnx written by")


