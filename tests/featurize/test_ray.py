"""`extract --ray` and `fit --ray`: a real local Ray cluster (2 CPUs); the driver alone writes the store."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from featurize import Recipe, extract, load_features
from tests.conftest import REPO, write_image
from tests.test_cli import assert_one_line_error, run

RANDOM = {"backbone": "resnet18", "weights": "random", "progress": False}


@pytest.fixture(scope="module")
def local_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_a_ray_run_writes_the_store_a_local_run_writes(local_cluster, class_folders, tmp_path, graph_cache):
    (class_folders / "cats" / "broken.png").write_bytes(b"not a png")
    plain = load_features(extract(data=class_folders, out=tmp_path / "plain", workers=0, **RANDOM).store)
    result = extract(data=class_folders, out=tmp_path / "ray", ray="local", **RANDOM)
    on_ray = load_features(result.store)
    assert result.extracted == 8 and on_ray.fingerprint == plain.fingerprint
    assert list(on_ray.paths) == list(plain.paths) and on_ray.skipped[0][0] == "cats/broken.png"
    np.testing.assert_allclose(on_ray.X, plain.X, rtol=1e-5, atol=1e-5)

    again = extract(data=class_folders, out=tmp_path / "ray", ray="local", **RANDOM)
    assert (again.extracted, again.model_loaded) == (0, False)  # "up to date" never needs the cluster
    write_image(class_folders / "dogs" / "new.png", seed=55)
    graph = next(graph_cache.glob("*.onnx"))
    graph.write_bytes(graph.read_bytes()[:1000])  # a cache file cut short (a full disk, a copy stopped)
    third = extract(data=class_folders, out=tmp_path / "ray", ray="local", **RANDOM)
    assert (third.extracted, third.reused) == (1, 8)
    assert graph.stat().st_size > 1000  # exported again for the actors, and the cache mended


def test_cluster_errors_are_one_line(local_cluster, class_folders, tmp_path):
    result = run(
        "extract",
        "--data",
        class_folders,
        "--out",
        tmp_path,
        "--backbone",
        "resnet18",
        "--weights",
        "random",
        "--ray",
        "local",
        "--device",
        "cuda",
        "--quiet",
    )
    assert_one_line_error(result, "the Ray cluster has no GPU")
    local_cluster.shutdown()  # joining an address is tried only when no cluster is connected
    result = run(
        "extract",
        "--data",
        class_folders,
        "--out",
        tmp_path,
        "--backbone",
        "resnet18",
        "--weights",
        "random",
        "--ray",
        "127.0.0.1:1",
        "--quiet",
    )
    assert_one_line_error(result, "--ray 127.0.0.1:1: no Ray cluster answers there")


def test_an_actor_that_cannot_start_is_a_clear_error_and_keeps_nothing_half_done(class_folders, tmp_path):
    """The driver checks the weights file exists; only the actors load it (torch engine): a
    checkpoint of another network fails there, and the driver reports it in one line."""
    import torch

    torch.save({"not": torch.zeros(1)}, tmp_path / "other.pth")
    result = run(
        "extract",
        "--data",
        class_folders,
        "--out",
        tmp_path / "out",
        "--backbone",
        "resnet18",
        "--weights",
        tmp_path / "other.pth",
        "--engine",
        "torch",
        "--ray",
        "local",
        "--quiet",
    )
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert result.exit_code == 1 and len(errors) == 1, result.output
    assert "the Ray cluster failed" in errors[0] and "does not fit backbone resnet18" in errors[0]
    # (Ray's raylet may still print one line of its own as the cluster stops: not ours to silence)
    assert not list((tmp_path / "out" / "features").glob("*.h5"))


@pytest.mark.parametrize("clf, search", [("logreg", "grid"), ("knn", "coordinate")])
def test_fit_on_ray_finds_what_a_local_fit_finds(local_cluster, tinted_store, tmp_path, monkeypatch, clf, search):
    """`fit --ray`: the cross-validation fits run as Ray tasks (Ray's joblib backend), same scores."""
    from ray.util.joblib.ray_backend import RayBackend

    from experiments.fit import fit_model

    local = fit_model(features=tinted_store, out=tmp_path / "local", clf=clf, search=search, jobs=1, log=lambda _: None)
    configured = []
    monkeypatch.setattr(RayBackend, "configure", _spy(RayBackend.configure, configured))
    result = run(
        "fit",
        "--features",
        tinted_store,
        "--out",
        tmp_path / "ray",
        "--clf",
        clf,
        "--search",
        search,
        "--ray",
        "local",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    on_ray = json.loads((tmp_path / "ray" / "models" / local.json_path.name).read_text())
    assert on_ray["best_params"] == local.info["best_params"]
    assert on_ray["cv"] == {**local.info["cv"], "seconds": on_ray["cv"]["seconds"]}
    assert on_ray["heldout"]["accuracy"] == local.info["heldout"]["accuracy"]
    assert configured  # the fits did go through Ray's backend


def _spy(method, calls):
    def spied(*args, **kwargs):
        calls.append(kwargs)
        return method(*args, **kwargs)

    return spied


def test_an_actor_killed_mid_run_loses_nothing(tmp_path):
    """`extract --ray local` as its own process; one of its embedding actors is SIGKILLed once rows
    have reached the journal. Ray restarts the actor and retries its batch, or the run ends in one
    Error line; either way, after at most one re-run, the store holds every image with the vectors
    of an uninterrupted local run."""
    data = tmp_path / "data"
    for i in range(160):
        write_image(data / ("a" if i % 2 else "b") / f"{i:03d}.png", seed=i)
    reference = load_features(extract(data=data, out=tmp_path / "reference", workers=0, **RANDOM).store)
    command = [
        sys.executable,
        "cli.py",
        "extract",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "out"),
        "--backbone",
        "resnet18",
        "--weights",
        "random",
        "--batch-size",
        "2",
        "--ray",
        "local",
        "--quiet",
    ]
    with open(tmp_path / "log", "w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        victim = _actor_once_rows_arrive(process, tmp_path / "out" / "features")
        os.kill(victim, signal.SIGKILL)
        code = process.wait(timeout=300)
    output = (tmp_path / "log").read_text()
    if code != 0:  # the driver gave up on the actor: one line, and the rows that arrived are kept
        assert [line for line in output.splitlines() if line.startswith("Error: ")], output
        rerun = run(
            "extract",
            "--data",
            data,
            "--out",
            tmp_path / "out",
            "--backbone",
            "resnet18",
            "--weights",
            "random",
            "--ray",
            "local",
            "--quiet",
        )
        assert rerun.exit_code == 0 and "resuming" in rerun.output, rerun.output
    done = load_features(next((tmp_path / "out" / "features").glob("*.h5")))
    assert list(done.paths) == list(reference.paths) and done.fingerprint == reference.fingerprint
    np.testing.assert_allclose(done.X, reference.X, rtol=1e-5, atol=1e-5)
    print(f"run after the kill: exit {code}")


def _actor_once_rows_arrive(process, features, timeout=180):
    """The pid of an embedding actor of `process`'s Ray cluster, once its journal holds a few rows."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        partial = next(iter(features.glob("*.partial")), None) if features.exists() else None
        actors = [pid for pid in _descendants(process.pid) if "EmbedShard" in _command_line(pid)]
        if partial is not None and partial.stat().st_size > 20_000 and actors:
            return actors[0]
        time.sleep(0.05)
    raise AssertionError(f"no actor with rows in the journal (run ended: {process.poll()})")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _command_line(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_recipe_vectors_on_ray_equal_the_local_ones(local_cluster, class_folders, tmp_path):
    """The torch engine in Ray's actors builds its own network: it must pool stages and flip as the
    local run does."""
    options = {**RANDOM, "engine": "torch", "recipe": Recipe(layers=2, pool="gem", tta="flip")}
    plain = load_features(extract(data=class_folders, out=tmp_path / "plain", workers=0, **options).store)
    on_ray = load_features(extract(data=class_folders, out=tmp_path / "ray", ray="local", **options).store)
    assert on_ray.fingerprint == plain.fingerprint and on_ray.config["tta"] == "flip" and on_ray.config["layers"] == 2
    assert on_ray.X.shape[1] == 256 + 512  # resnet18's last two stages
    np.testing.assert_allclose(on_ray.X, plain.X, rtol=1e-5, atol=1e-5)


def test_audit_on_ray_finds_what_a_local_audit_finds(local_cluster, tinted_store, tmp_path, monkeypatch):
    """`audit --ray`: the search's CV fits and the label check's out-of-fold fits both run as Ray
    tasks, and the findings are the local run's, row for row."""
    from ray.util.joblib.ray_backend import RayBackend

    common = ("audit", "--features", tinted_store, "--cv", "3", "--quiet")
    local = run(*common, "--out", tmp_path / "local", "--jobs", "1")
    assert local.exit_code == 0, local.output
    configured = []
    monkeypatch.setattr(RayBackend, "configure", _spy(RayBackend.configure, configured))
    on_ray = run(*common, "--out", tmp_path / "ray", "--ray", "local")
    assert on_ray.exit_code == 0, on_ray.output
    issues = [(tmp_path / run_ / "audit" / tinted_store.stem / "issues.csv").read_text() for run_ in ("local", "ray")]
    assert issues[0] == issues[1] and issues[0].count("\n") > 1
    assert len(configured) == 2  # one backend for the search's fits, one for the out-of-fold fits
