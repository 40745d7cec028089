"""`--data s3://...` through cli.py, against a real S3 server on loopback (moto's, behind a proxy that
counts the requests and injects faults: tests/s3_server.py)."""

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from featurize import extract, load_features
from featurize.remote import public_url
from tests.conftest import REPO, write_image
from tests.s3_server import ACCESS_KEY, SECRET_KEY
from tests.test_cli import assert_ends_in_one_error_line, assert_one_line_error, cli_process, run

RANDOM = ("--backbone", "resnet18", "--weights", "random", "--engine", "torch", "--quiet")


def _pets(root, count=4):
    for i in range(count):
        write_image(root / "train" / "cats" / f"c{i}.png", seed=i)
        write_image(root / "train" / "dogs" / f"d{i}.jpg", seed=10 + i)
    write_image(root / "val" / "cats" / "v0.png", seed=20)
    write_image(root / "val" / "dogs" / "v1.jpg", seed=21)
    return root


def test_public_url_keeps_where_and_drops_what_may_be_secret():
    assert public_url("s3://user:pass@bucket/a/b/?X-Amz-Signature=1") == "s3://bucket/a/b"
    assert public_url("http://host:9000/bucket/data/") == "http://host:9000/bucket/data"
    assert (
        public_url("abfs://container@account.dfs.core.windows.net/x")
        == "abfs://container@account.dfs.core.windows.net/x"
    )
    assert public_url("s3://MyBucket/Data") == "s3://MyBucket/Data"


def _extract(data, out, *extra):
    code, said = cli_process("extract", "--data", data, "--out", out, *RANDOM, *extra)
    assert code == 0, said
    store = [line for line in said.splitlines() if line.startswith("features: ")]
    assert store, said
    return said, load_features(store[-1].split("features: ")[1])


def _local(folder, out):
    """The reference: the local copy extracted in this process (the same settings as RANDOM)."""
    settings = {"backbone": "resnet18", "weights": "random", "engine": "torch", "progress": False}
    return None, load_features(extract(data=folder, out=out, workers=0, **settings).store)


def _same_vectors(a, b):
    order = np.argsort(b.paths)
    assert list(a.paths) == list(b.paths[order])
    assert list(a.y) == list(b.y[order]) and list(a.splits) == list(b.splits[order])
    np.testing.assert_allclose(a.X, b.X[order], atol=1e-5)


def test_a_bucket_gives_the_local_vectors_then_a_rerun_reads_no_object(s3, tmp_path):
    local = _pets(tmp_path / "pets")
    s3.upload_folder(local, s3.bucket, "data")
    url = f"s3://{s3.bucket}/data/"
    said, remote = _extract(url, tmp_path / "out", "--workers", "2")  # DataLoader worker processes
    assert s3.proxy.gets() == 10 and "10 extracted" in said
    _, reference = _local(local, tmp_path / "local")
    _same_vectors(remote, reference)
    assert remote.data_root == url.rstrip("/") and remote.config == reference.config

    s3.proxy.requests.clear()
    said, _ = _extract(url, tmp_path / "out")
    assert "up to date: 10 images" in said and s3.proxy.gets() == 0  # listed, nothing fetched

    client = s3.client()
    client.delete_object(Bucket=s3.bucket, Key="data/train/dogs/d0.jpg")
    write_image(tmp_path / "new.png", seed=77)
    client.put_object(Bucket=s3.bucket, Key="data/train/cats/new.png", Body=(tmp_path / "new.png").read_bytes())
    client.put_object(Bucket=s3.bucket, Key="data/train/cats/c1.png", Body=(local / "train/cats/c0.png").read_bytes())
    said, updated = _extract(url, tmp_path / "out")
    assert "2 extracted" in said and "8 reused, 1 dropped" in said and s3.proxy.gets() == 2, said
    c0, c1 = (list(updated.paths).index(f"train/cats/c{i}.png") for i in (0, 1))
    np.testing.assert_allclose(updated.X[c1], updated.X[c0], atol=1e-6)  # the replaced object's new vector


def test_a_flaky_object_is_retried_and_a_forbidden_one_is_listed_with_its_reason(s3, tmp_path):
    s3.upload_folder(_pets(tmp_path / "pets"), s3.bucket, "data")
    s3.proxy.failing["/data/train/cats/c1.png"] = [500, 3]  # three 500s, then the object
    s3.proxy.denied.add("/data/train/dogs/d2.jpg")  # a 403 every time
    said, store = _extract(f"s3://{s3.bucket}/data", tmp_path / "out", "--workers", "0")
    assert "9 extracted" in said and "1 unreadable" in said, said
    assert store.skipped == [("train/dogs/d2.jpg", store.skipped[0][1])] and "access denied" in store.skipped[0][1]
    assert "train/cats/c1.png" in list(store.paths)
    assert s3.proxy.gets("/data/train/cats/c1.png") == 4  # retried until it came


@pytest.mark.parametrize(
    "case, expected",
    [
        ("wrong key", "access denied"),
        ("no bucket", "no such bucket"),
        ("no credentials", "no credentials found"),
        ("no prefix", "nothing there"),
        ("option typo", "the store's client refused its options"),
    ],
)
def test_a_store_that_refuses_is_one_line_before_any_work(s3, tmp_path, monkeypatch, case, expected):
    s3.upload_folder(_pets(tmp_path / "pets", 1), s3.bucket, "data")
    url = f"s3://{s3.bucket}/data/"
    if case == "wrong key":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "not-a-key")
    elif case == "no bucket":
        url = "s3://photos2403/data/"  # no such bucket, and a "403" in its name
    elif case == "no credentials":
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    elif case == "no prefix":
        url = f"s3://{s3.bucket}/elsewhere/"
    options = ("--storage-option", "anonn=true") if case == "option typo" else ()
    assert_one_line_error(run("extract", "--data", url, "--out", tmp_path / "out", *RANDOM, *options), expected)
    assert not (tmp_path / "out" / "features").exists() or not list((tmp_path / "out" / "features").glob("*.h5"))
    assert s3.proxy.gets() == 0


def test_credentials_given_as_storage_options_are_never_written(s3, tmp_path, monkeypatch):
    s3.upload_folder(_pets(tmp_path / "pets", 1), s3.bucket, "data")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    options = ("--storage-option", f"key={ACCESS_KEY}", "--storage-option", f"secret={SECRET_KEY}")
    options += ("--storage-option", 'config_kwargs={"connect_timeout": 5}')  # a JSON value
    said, store = _extract(f"s3://{s3.bucket}/data", tmp_path / "out", *options)
    assert len(store.paths) == 4 and SECRET_KEY not in said
    for path in (tmp_path / "out").rglob("*"):
        assert not path.is_file() or SECRET_KEY.encode() not in path.read_bytes(), path
    code, said = cli_process("extract", "--data", "s3://x/y", "--storage-option", "novalue", *RANDOM)
    assert_ends_in_one_error_line(code, said, "--storage-option 'novalue': expected KEY=VALUE")


def test_kill_9_mid_run_and_an_immediate_rerun_finish_the_bucket(s3, tmp_path):
    local = tmp_path / "many"
    for i in range(48):
        write_image(local / ("a" if i % 2 else "b") / f"{i:03d}.png", seed=i, size=(160, 120))
    s3.upload_folder(local, s3.bucket, "many")
    out, url = tmp_path / "out", f"s3://{s3.bucket}/many"
    command = [sys.executable, "cli.py", "extract", "--data", url, "--out", out, *RANDOM, "--batch-size", "2"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    process = subprocess.Popen([str(c) for c in command], cwd=REPO, **quiet)
    deadline = time.monotonic() + 120
    while not _journal_rows(out) and time.monotonic() < deadline:  # some batches in, the run going on
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL  # killed mid-run, not finished
    said, store = _extract(url, out)
    assert "resuming: " in said and "48 extracted" not in said, said
    _, reference = _local(local, tmp_path / "local")
    _same_vectors(store, reference)


def _journal_rows(out) -> bool:
    return any(p.stat().st_size > 4096 for p in (out / "features").glob("*.partial")) if out.exists() else False


def test_a_listing_that_fails_changes_nothing(s3, tmp_path):
    s3.upload_folder(_pets(tmp_path / "pets", 2), s3.bucket, "data")
    said, store = _extract(f"s3://{s3.bucket}/data", tmp_path / "out")
    s3.proxy.failing[f"LIST/{s3.bucket}"] = [503, 10_000]  # every listing from now on
    code, said = cli_process("extract", "--data", f"s3://{s3.bucket}/data", "--out", tmp_path / "out", *RANDOM)
    assert_ends_in_one_error_line(code, said, "cannot reach the store")
    assert list(load_features(store.path).paths) == list(store.paths)  # no folder read as empty, nothing dropped


def test_predict_reads_a_bucket_folder_and_single_objects(s3, tmp_path):
    local = _pets(tmp_path / "pets")
    s3.upload_folder(local, s3.bucket, "data")
    _local(local, tmp_path / "out")
    fitted = run("fit", "--clf", "logreg", "--out", tmp_path / "out", "--quiet")
    assert fitted.exit_code == 0, fitted.output
    model = fitted.output.split("model: ")[1].split(" (+")[0]
    urls = (f"s3://{s3.bucket}/data/val/", f"s3://{s3.bucket}/data/train/cats/c0.png")
    missing = f"s3://{s3.bucket}/data/gone.png"
    code, said = cli_process("predict", "--model", model, *urls, missing, "--out", tmp_path / "remote.csv")
    assert code == 0 and "4 images, 1 unreadable" in said, said
    paths = [local / "val/cats/v0.png", local / "val/dogs/v1.jpg", local / "train/cats/c0.png"]
    predicted = run("predict", "--model", model, *paths, "--out", tmp_path / "local.csv", "--quiet")
    assert predicted.exit_code == 0, predicted.output
    remote_rows, local_rows = (list(csv.reader(open(tmp_path / f"{n}.csv"))) for n in ("remote", "local"))
    assert remote_rows.pop() == [missing, "", "", "", "", "object not found"]
    assert [r[0] for r in remote_rows[1:]] == [f"s3://{s3.bucket}/data/{p.relative_to(local)}" for p in paths]
    assert [r[1:] for r in remote_rows] == [r[1:] for r in local_rows]


def test_ray_actors_read_the_bucket_themselves(s3, tmp_path):
    local = _pets(tmp_path / "pets")
    s3.upload_folder(local, s3.bucket, "data")
    said, store = _extract(f"s3://{s3.bucket}/data", tmp_path / "out", "--ray", "local")
    assert "10 extracted" in said and s3.proxy.gets() == 10
    _, reference = _local(local, tmp_path / "local")
    _same_vectors(store, reference)


def test_a_bucket_is_read_in_the_layout_its_local_copy_is(s3, tmp_path):
    from featurize import ImageDataset, discover

    local = _pets(tmp_path / "pets", 1)
    (local / "train.txt").write_text("train/cats/c0.png cats\n")  # split folders win over lists, as locally
    s3.upload_folder(local, s3.bucket, "data")
    remote, here = discover(f"s3://{s3.bucket}/data/"), discover(local)
    assert (remote.layout, remote.paths, remote.splits) == (here.layout, here.paths, here.splits)
    dataset = ImageDataset(local, here.paths, OnBytes())  # a folder, as library code passed before sources
    assert [dataset[i][2] for i in range(len(dataset))] == [""] * len(here.paths)


class OnBytes:
    def from_bytes(self, data):
        return len(data)
