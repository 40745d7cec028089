"""Kills, concurrent writers, torn journals, leftovers: run the way a user meets them (real
processes with their DataLoader workers, real SIGKILL), checked against an uninterrupted run."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from featurize import extract, load_features
from featurize.journal import Journal, read_journal, read_vectors
from tests.conftest import REPO, write_image
from tests.test_cli import assert_one_line_error, run

RANDOM = {"backbone": "resnet18", "weights": "random", "progress": False}
IMAGES = 48


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    """48 small images and the vectors an uninterrupted run gives them."""
    data = tmp_path_factory.mktemp("kill") / "data"
    for i in range(IMAGES):
        write_image(data / ("a" if i % 2 else "b") / f"{i:02d}.png", seed=i)
    reference = load_features(extract(data=data, out=data.parent / "reference", workers=0, **RANDOM).store)
    return data, dict(zip(reference.paths, reference.X))


def _start(data, out, log):
    """`cnnfeat extract` as a user runs it: its own process, default DataLoader workers."""
    command = [
        sys.executable,
        "cli.py",
        "extract",
        "--data",
        str(data),
        "--out",
        str(out),
        "--backbone",
        "resnet18",
        "--weights",
        "random",
        "--batch-size",
        "2",
        "--quiet",
    ]
    return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def _journal_of(out, process, min_bytes=1):
    """Wait until the run writing under `out` has a journal of at least `min_bytes`; return its path."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        partial = next(iter((out / "features").glob("*.partial")), None)
        if partial is not None and partial.stat().st_size >= min_bytes:
            return partial
        time.sleep(0.05)
    raise AssertionError(f"no journal of {min_bytes} bytes under {out} (run ended: {process.poll()})")


def _kill_after(process, seconds):
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


def _check_complete(store, reference):
    features = load_features(store)
    assert sorted(features.paths) == sorted(reference) and len(set(features.paths)) == len(reference)
    for path, vector in zip(features.paths, features.X):
        np.testing.assert_allclose(vector, reference[path], rtol=1e-5, atol=1e-5)
    leftovers = sorted(p.name for p in store.parent.iterdir() if p.name != store.name)
    assert leftovers == [], leftovers  # no .partial, no .tmp-* files, no .lock (a killed run's is removed too)


def _kill_rerun_kill_finish(many_images, tmp_path, moments, seed):
    data, reference = many_images
    full_run = tmp_path / "timing.log"
    started = time.monotonic()
    with open(full_run, "w") as log:
        assert _start(data, tmp_path / "timing", log).wait(timeout=300) == 0
    duration = time.monotonic() - started
    rng = random.Random(seed)
    for moment in range(moments):
        out = tmp_path / f"run{moment}"
        logs = [tmp_path / f"run{moment}-{which}.log" for which in ("first", "rerun")]
        for log_path in logs:  # killed at a random moment, then re-run at once and killed again
            with open(log_path, "w") as log:
                _kill_after(_start(data, out, log), rng.uniform(0, duration))
        for log_path in logs:
            assert "being written" not in log_path.read_text(), log_path.read_text()
        finished = run(
            "extract", "--data", data, "--out", out, "--backbone", "resnet18", "--weights", "random", "--quiet"
        )
        assert finished.exit_code == 0 and "being written" not in finished.output, finished.output
        _check_complete(next((out / "features").glob("*.h5")), reference)


def test_kill_9_then_an_immediate_rerun_resumes(many_images, tmp_path):
    """Three random moments (the DataLoader workers of the killed run are still alive at the re-run)."""
    _kill_rerun_kill_finish(many_images, tmp_path, moments=3, seed=1)


@pytest.mark.slow
def test_kill_9_at_10_random_moments(many_images, tmp_path):
    """Ten more moments (20 took 4 minutes of CI's time; with the 3 above, 26 kills a run)."""
    _kill_rerun_kill_finish(many_images, tmp_path, moments=10, seed=2)


def _writing(many_images, tmp_path, log):
    """A `cnnfeat extract` process that has written its first batch; (process, data, reference, out)."""
    data, reference = many_images
    out = tmp_path / "out"
    process = _start(data, out, log)
    _journal_of(out, process)
    return process, data, reference, out


def test_sigterm_stops_cleanly_and_the_rerun_resumes(many_images, tmp_path):
    with open(tmp_path / "log", "w") as log:
        process, data, reference, out = _writing(many_images, tmp_path, log)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 1
    said = (tmp_path / "log").read_text()
    assert "interrupted; the images done so far are kept in" in said and "Traceback" not in said, said
    result = extract(data=data, out=out, **RANDOM)
    assert result.reused > 0 and any("resuming" in note for note in result.notes)
    _check_complete(result.store, reference)


def test_two_concurrent_runs_one_writes_the_other_says_so(many_images, tmp_path):
    with open(tmp_path / "log", "w") as log:
        first, data, reference, out = _writing(many_images, tmp_path, log)
        second = run("extract", "--data", data, "--out", out, "--backbone", "resnet18", "--weights", "random")
        assert first.wait(timeout=300) == 0
    assert_one_line_error(second, "is being written by cnnfeat extract", f"(pid {first.pid})")
    _check_complete(next((out / "features").glob("*.h5")), reference)


def test_a_torn_journal_is_salvaged_up_to_its_last_good_batch(tmp_path):
    path = tmp_path / "x.h5.partial"
    journal = Journal(path, "fp", dim=4)
    places = []
    for batch in range(3):
        places.extend(
            journal.append(
                [f"{batch}-{i}.png" for i in range(2)],
                [(10, batch)] * 2,
                np.full((2, 4), batch, np.float32) + [[0], [0.5]],
                ["", "bad" if batch == 1 else ""],
            )
        )
    journal.close()
    with open(path, "rb") as f:  # where append said each vector went, read back in runs
        np.testing.assert_array_equal(
            read_vectors(f, [int(p) for p in places], 4), np.repeat([0, 0.5, 1, 1.5, 2, 2.5], 4).reshape(6, 4)
        )
    whole = path.read_bytes()
    path.write_bytes(whole[:-7])  # killed in the middle of writing the third batch
    rows, notes = Journal(path, "fp", dim=4).resume()
    assert rows.paths == ["0-0.png", "0-1.png", "1-0.png", "1-1.png"] and rows.offsets[3] is None
    assert rows.reasons[3] == "bad" and "dropped the last, torn batch" in notes[0]
    assert rows.offsets[2] == places[2]  # the salvaged rows point into the file, not into memory

    corrupt = bytearray(whole)
    corrupt[-3] ^= 0xFF  # a flipped byte in the last batch fails its checksum
    path.write_bytes(bytes(corrupt))
    assert len(read_journal(path, 4).rows.paths) == 4

    resumed = Journal(path, "fp", dim=4)  # the next append truncates the torn tail first
    resumed.append(["3-0.png"], [(1, 1)], np.zeros((1, 4), np.float32), [""])
    resumed.close()
    assert read_journal(path, 4).rows.paths[-2:] == ["1-1.png", "3-0.png"] and read_journal(path, 4).torn_bytes == 0
    assert Journal(path, "other settings", dim=4).resume()[0] is None


def test_extract_resumes_from_a_torn_journal_and_sweeps_dead_writers_tmp_files(many_images, tmp_path):
    data, reference = many_images
    out = tmp_path / "out"
    with open(tmp_path / "log", "w") as log:
        process = _start(data, out, log)
        partial = _journal_of(out, process, min_bytes=30_000)  # a dozen batches in
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    partial.write_bytes(partial.read_bytes()[:-100])  # the batch being written when the kill came
    store = partial.with_suffix("")
    dead = store.with_name(store.name + ".tmp-99999999")  # what a writer killed mid-rename leaves
    dead.write_bytes(b"half a store")
    result = extract(data=data, out=out, **RANDOM)
    assert any("torn batch" in note for note in result.notes) and result.reused > 0
    _check_complete(result.store, reference)


def _hold_the_lock_repeatedly(path, seconds, results):
    """A writer that takes the store's lock again and again, and proves it is alone while it holds it."""
    from common.locks import Busy, exclusive

    taken = overlaps = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with exclusive(path):
                try:
                    fd = os.open(f"{path}.inside", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    overlaps += 1
                    continue
                os.close(fd)
                taken += 1
                os.unlink(f"{path}.inside")
        except Busy:
            pass
    results.put((taken, overlaps))


def test_the_lock_file_removed_on_release_never_lets_two_writers_in(tmp_path):
    """The lock file goes away when its holder is done; a writer that had opened it just before must
    see that and lock the new one, never hold a removed file while another holds the new."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    results = context.Queue()
    writers = [
        context.Process(target=_hold_the_lock_repeatedly, args=(tmp_path / "x.h5", 3.0, results)) for _ in range(4)
    ]
    for writer in writers:
        writer.start()
    counts = [results.get(timeout=60) for _ in writers]
    for writer in writers:
        writer.join()
    print(f"lock taken {sum(t for t, _ in counts)} times by 4 writers")
    assert sum(overlaps for _, overlaps in counts) == 0 and sum(taken for taken, _ in counts) > 100
    assert list(tmp_path.iterdir()) == []
