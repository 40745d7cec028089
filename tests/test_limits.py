"""The machine says no: a file-size limit, a full disk, a read-only --out, no shared memory for the
decoding workers, a second compare into the same folder. Each command, run as a user runs it (its
own process, its real limit or file system), ends in one `Error:` line naming the path and the
cause, having lost nothing: no traceback, no crash, no hang, no half-written file."""

import csv
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from featurize import load_features
from tests.conftest import REPO, generated_store, write_image, write_tinted
from tests.test_cli import assert_ends_in_one_error_line, assert_one_line_error, cli_process, run

RANDOM = ["--backbone", "resnet18", "--weights", "random", "--engine", "torch"]


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    for i in range(64):
        write_image(folder / ("a" if i % 2 else "b") / f"{i:02d}.png", seed=i)
    return folder


def test_workers_without_shared_memory_end_the_run_in_one_line(images, tmp_path):
    """Fault 2: the worker logged 'unable to resize file' and the run waited for its batch forever."""
    args = ["extract", "--data", images, "--out", tmp_path / "out", *RANDOM, "--batch-size", "32", "--quiet"]
    code, said = cli_process(*args, "--workers", "1", file_size=3 << 20, timeout=180)  # a batch: 4.8 MB of pixels
    assert_ends_in_one_error_line(code, said, "a decoding worker failed", "--workers 0", "shared memory")
    code, said = cli_process(*args, "--workers", "0", file_size=3 << 20)  # the way out it names, under the same limit
    assert code == 0 and "64 images: 64 extracted" in said, said


def test_a_file_size_limit_while_the_store_is_rewritten(images, tmp_path):
    """Fault 10: HDF5 failed to write, then crashed the process as it closed the file (exit 139)."""
    out = tmp_path / "out"
    args = ["extract", "--data", images, "--out", out, *RANDOM, "--workers", "0", "--quiet"]
    assert cli_process(*args)[0] == 0
    store = next((out / "features").glob("*.h5"))
    before = load_features(store)
    write_image(images / "a" / "new.png", seed=99)  # one more image: the journal is small, the rewrite is not
    code, said = cli_process(*args, file_size=64 << 10)
    assert_ends_in_one_error_line(
        code, said, f"cannot write {store}", "File too large", "ulimit -f", f"kept in {store.name}.partial"
    )
    np.testing.assert_array_equal(load_features(store).X, before.X)  # the old store is whole
    assert sorted(p.name for p in store.parent.iterdir()) == [store.name, store.name + ".partial"]
    code, said = cli_process(*args)
    assert code == 0 and "resuming: 1 images" in said and "65 images: 0 extracted" in said, said


def _report_files_are_whole(report):
    for path in report.rglob("*"):
        assert ".tmp-" not in path.name, path
        if path.suffix == ".csv":
            rows = list(csv.reader(path.open()))
            assert rows and all(len(row) == len(rows[0]) for row in rows), path
        elif path.suffix == ".png":
            Image.open(path).load()


def test_a_file_size_limit_while_compare_writes_its_report(tmp_path):
    """Fault 9: a truncated predictions/...csv beside a complete report, and exit 0 or a traceback."""
    store = generated_store(tmp_path, 3000, dim=8, classes=3)[0]
    args = [
        "compare",
        "--features",
        store,
        "--out",
        tmp_path / "out",
        "--clf",
        "logreg",
        "--ensemble",
        "none",
        "--cv",
        "2",
        "--quiet",
    ]
    code, said = cli_process(*args, file_size=12 << 10)  # the model fits; the 600-row predictions file does not
    assert_ends_in_one_error_line(code, said, "cannot write", "File too large")
    _report_files_are_whole(tmp_path / "out" / "reports")
    code, said = cli_process(*args)
    assert code == 0, said
    predictions = next((tmp_path / "out" / "reports").rglob("*logreg.csv"))
    assert len(list(csv.reader(predictions.open()))) == 601
    _report_files_are_whole(tmp_path / "out" / "reports")


def test_outputs_that_are_files_or_folders_are_one_line(tinted_store, tmp_path):
    """Fault 11: extract --out FILE, export --out FILE, demo-data into a file gave tracebacks; predict
    --out DIR writes DIR/predictions.csv."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    data = write_tinted(tmp_path / "tinted", 2)
    assert_one_line_error(run("extract", "--data", data, "--out", afile, *RANDOM), "--out", "is a file, not a folder")
    assert_one_line_error(run("demo-data", afile / "digits"), str(afile))
    fitted = run("fit", "--clf", "logreg", "--features", tinted_store, "--out", tmp_path / "a", "--cv", "2")
    model = fitted.output.strip().splitlines()[-1].split()[1]
    assert_one_line_error(run("export", "--model", model, "--out", afile), "is a file, not a folder")
    folder = tmp_path / "predictions"
    folder.mkdir()
    result = run("predict", "--model", model, "--out", folder, data / "val")
    assert result.exit_code == 0 and (folder / "predictions.csv").is_file(), result.output
    result = run("predict", "--model", model, "--out", f"{tmp_path}/new/", data / "val")  # a folder to make
    assert result.exit_code == 0 and (tmp_path / "new" / "predictions.csv").is_file(), result.output


@pytest.fixture(scope="module")
def namespaces():
    """Whether this machine lets a test mount its own small file systems (a user and mount namespace)."""
    if shutil.which("unshare") is None:
        pytest.skip("no `unshare`: cannot mount a small or read-only file system without root")
    if subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "tmpfs", "/mnt"], capture_output=True).returncode:
        pytest.skip("this machine does not allow user namespaces that mount file systems")


def in_namespace(script: str, timeout=600) -> subprocess.CompletedProcess:
    """`script` (bash) as root of a new user and mount namespace: its mounts vanish when it ends."""
    return subprocess.run(
        ["unshare", "-rm", "bash", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_a_full_disk_ends_in_one_line_and_a_rerun_with_space_finishes(images, tmp_path, namespaces):
    """Fault 10, a real ENOSPC: a 256 KiB file system takes the journal, not the store."""
    disk, logs = tmp_path / "disk", tmp_path / "logs"
    disk.mkdir()
    logs.mkdir()
    command = f"{sys.executable} cli.py extract --data {images} --out {disk} {' '.join(RANDOM)} --workers 0 --quiet"
    done = in_namespace(f"""
        mount -t tmpfs -o size=256k tmpfs {disk}
        {command} > {logs}/full.log 2>&1; echo $? > {logs}/full.code
        mount -o remount,size=16m {disk}
        {command} > {logs}/room.log 2>&1; echo $? > {logs}/room.code
        {sys.executable} -c "from featurize import load_features; import glob; \\
print(len(load_features(glob.glob('{disk}/features/*.h5')[0]).paths))" > {logs}/rows.txt 2>&1
    """)
    assert done.returncode == 0, done.stderr
    said = (logs / "full.log").read_text()
    assert_ends_in_one_error_line(
        int((logs / "full.code").read_text()),
        said,
        "cannot write",
        "No space left on device",
        ".partial: run the same command again to resume",
    )
    said = (logs / "room.log").read_text()
    assert (logs / "room.code").read_text().strip() == "0" and "resuming: 64 images" in said, said
    assert (logs / "rows.txt").read_text().strip() == "64"


def test_a_read_only_out_is_found_before_any_work(tinted_store, tmp_path, namespaces):
    """Fault 10: fit and compare searched every head, then failed to save with a traceback."""
    readonly, logs = tmp_path / "readonly", tmp_path / "logs"
    readonly.mkdir()
    logs.mkdir()
    data = write_tinted(tmp_path / "tinted", 2)
    fitted = run("fit", "--clf", "logreg", "--features", tinted_store, "--out", tmp_path / "a", "--cv", "2")
    model = fitted.output.strip().splitlines()[-1].split()[1]
    commands = {
        "extract": f"extract --data {data} --out {readonly} {' '.join(RANDOM)}",
        "fit": f"fit --clf svm --features {tinted_store} --out {readonly}",
        "compare": f"compare --features {tinted_store} --out {readonly} --clf svm",
        "predict": f"predict --model {model} --out {readonly}/p.csv {data}/val",
        "export": f"export --model {model} --out {readonly}/onnx",
        "explain": f"explain --model {model} --out {readonly}/why {data}/val",
    }
    runs = "\n".join(
        f"{sys.executable} cli.py {args} > {logs}/{name}.log 2>&1; echo $? > {logs}/{name}.code"
        for name, args in commands.items()
    )
    done = in_namespace(f"mount -t tmpfs -o ro tmpfs {readonly}\n{runs}")
    assert done.returncode == 0, done.stderr
    for name in commands:
        said = (logs / f"{name}.log").read_text()
        assert_ends_in_one_error_line(
            int((logs / f"{name}.code").read_text()), said, str(readonly), "Read-only file system"
        )
        assert "search" not in said and "extract" not in said.lower().replace("cnnfeat extract", ""), said


def test_one_compare_per_report_folder(tinted_store, tmp_path):
    """Fault 8: two compares into one --out both exit 0, the knn row of one and the knn model of the other."""
    out = tmp_path / "out"
    args = ["compare", "--features", tinted_store, "--out", out, "--clf", "rf,knn", "--quiet"]
    first = subprocess.Popen(
        [sys.executable, str(REPO / "cli.py"), *map(str, args)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lock = out / "reports" / f"{tinted_store.stem}.lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    second = run(*args, "--cv", "3")
    said, code = first.communicate(timeout=300)[0], first.returncode
    assert code == 0, said
    assert_one_line_error(second, "is being written by cnnfeat compare", f"(pid {first.pid})")
    assert not lock.exists()

    models = out / "reports" / tinted_store.stem / "models"  # a model file that is not the row's
    knn = next(models.glob("*-knn.json"))
    key = knn.read_text().split('"cache_key": "')[1].split('"')[0]
    for suffix in (".joblib", ".json"):
        shutil.copy(next(models.glob(f"*-rf{suffix}")), knn.with_suffix(suffix))
    knn.write_text(knn.read_text().replace('"cache_key": "', f'"cache_key": "{key}", "old_key": "', 1))
    again = run(*args)
    assert again.exit_code == 0 and "cannot reuse" in again.output and "not the knn of these features" in again.output
    assert "rf: nothing changed, reusing" in again.output


def test_workers_with_a_small_dev_shm_end_the_run_in_one_line(images, tmp_path, namespaces):
    """Fault 2 as a container meets it: /dev/shm of 1 MiB (Docker's is 64 MB), batches of 4.8 MB."""
    logs = tmp_path / "logs"
    logs.mkdir()
    command = (
        f"{sys.executable} cli.py extract --data {images} --out {tmp_path / 'out'} {' '.join(RANDOM)} "
        f"--batch-size 32 --quiet"
    )
    done = in_namespace(f"""
        mount -t tmpfs -o size=1m tmpfs /dev/shm
        timeout 120 {command} --workers 1 > {logs}/shm.log 2>&1; echo $? > {logs}/shm.code
        timeout 120 {command} --workers 0 > {logs}/zero.log 2>&1; echo $? > {logs}/zero.code
    """)
    assert done.returncode == 0, done.stderr
    assert_ends_in_one_error_line(
        int((logs / "shm.code").read_text()),
        (logs / "shm.log").read_text(),
        "a decoding worker failed",
        "--workers 0",
        "shared memory",
    )
    said = (logs / "zero.log").read_text()
    assert (logs / "zero.code").read_text().strip() == "0" and "64 images: 64 extracted" in said, said


@pytest.mark.parametrize(
    "rows,dim,dtype,compression,skipped,reason",
    [
        (1, 8, "float32", None, 0, 0),
        (0, 8, "float32", None, 3, 20),
        (205, 1280, "float32", None, 0, 0),
        (206, 1280, "float16", None, 0, 0),
        (205, 1280, "float32", "gzip", 0, 0),
        (10, 1280, "float32", None, 5000, 1000),
        (1025, 1280, "float16", "lzf", 7, 300),
    ],
)
def test_the_space_reserved_for_a_store_is_never_less_than_it_takes(
    tmp_path, rows, dim, dtype, compression, skipped, reason
):
    """Fault 10: HDF5 crashes the process when it cannot write a file it is closing, so the bound the
    store reserves first must hold for every shape: a last chunk allocated whole, long reasons of
    skipped images, long names that are not ASCII, attributes."""
    from featurize.discovery import ImageList
    from featurize.placement import IN_MEMORY, Placement
    from featurize.store import Storage, VectorReader, size_bound, write_store

    images = ImageList(root=tmp_path, name="x-00000000", layout="class-folders", class_names=["é" * 40, "b"])
    total = rows + skipped
    for i in range(total):
        images.add(f"{'é' * 60}/{i:06d}.jpg", i % 2, "train")
    reasons = [""] * rows + ["bad " * (reason // 4)] * skipped
    placement = Placement(images.paths)
    placement.put(np.arange(total), np.ones((total, 2)), np.arange(total), reasons, IN_MEMORY)
    storage, attrs = Storage(dtype, compression), {"fingerprint": "x", "config": "{" + "x" * 3000 + "}"}
    X = np.random.default_rng(0).random((total, dim), dtype=np.float32)
    store = tmp_path / "s.h5"
    write_store(
        store, images, np.ones((total, 2), np.int64), placement, dim, attrs, VectorReader(dim, memory=X), storage
    )
    assert store.stat().st_size <= size_bound(images, rows, dim, storage, [r for r in reasons if r], attrs)


def _file_size_limit(size: int):
    def limit():
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return limit


def test_a_file_size_limit_between_the_store_and_its_bound_stops_before_hdf5_writes(tmp_path):
    """The reservation errs on the large side: a limit above the store's size but below its bound
    stops the write, with an OutputError, before HDF5 starts (never a crash)."""
    size = generated_store(tmp_path, 3000, dim=64)[0].stat().st_size
    (tmp_path / "again").mkdir()
    script = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); from pathlib import Path; "
        f"from tests.conftest import generated_store; generated_store(Path({str(tmp_path / 'again')!r}), 3000, "
        f"dim=64)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_file_size_limit(size + 4096),
    )
    assert done.returncode == 1 and "OutputError: cannot write" in done.stderr and "needs up to" in done.stderr, (
        done.returncode,
        done.stderr[-2000:],
    )
    assert list((tmp_path / "again").iterdir()) == []


def test_a_file_size_limit_met_by_the_parallel_fits_is_one_line(tmp_path):
    """joblib hands the training rows to its workers through a temporary file: under `ulimit -f` that
    failed deep inside it, a 40-line PicklingError traceback."""
    store = generated_store(tmp_path, 4000, dim=128)[0]  # 2.6 MB of vectors: past joblib's 1 MB memmap threshold
    args = ["fit", "--clf", "logreg", "--features", store, "--out", tmp_path / "out", "--quiet"]
    code, said = cli_process(*args, file_size=1 << 20)
    assert_ends_in_one_error_line(code, said, "File too large", "--jobs 1")
    code, said = cli_process(*args, "--jobs", "1", file_size=1 << 20)  # the way out it names
    assert code == 0, said


def test_a_full_disk_while_compare_rewrites_its_report_leaves_the_previous_one_whole(tmp_path, namespaces):
    """A nearly full disk: the report was left half new (report.md with one row, report.html missing),
    and a head whose model could not be saved was listed as 'not fitted'."""
    store = generated_store(tmp_path, 3000, dim=8, classes=3)[0]
    disk, logs = tmp_path / "disk", tmp_path / "logs"
    disk.mkdir()
    logs.mkdir()
    command = (
        f"{sys.executable} cli.py compare --features {store} --out {disk} --clf logreg,knn --ensemble none --quiet"
    )
    files = f"$(cd {disk}/reports && find . -type f -not -path './*/models/*' | sort)"
    done = in_namespace(f"""
        mount -t tmpfs -o size=16m tmpfs {disk}
        {command} --cv 2 > {logs}/room.log 2>&1; echo $? > {logs}/room.code
        (cd {disk}/reports && sha256sum {files}) > {logs}/before.txt
        fallocate -l $(( $(df --output=avail -B1 {disk} | tail -1) - 40000 )) {disk}/filler
        {command} --cv 3 > {logs}/full.log 2>&1; echo $? > {logs}/full.code
        (cd {disk}/reports && sha256sum {files}) > {logs}/after.txt
        ls -a {disk}/reports/* > {logs}/listing.txt
    """)
    assert done.returncode == 0, done.stderr
    assert (logs / "room.code").read_text().strip() == "0", (logs / "room.log").read_text()
    assert_ends_in_one_error_line(
        int((logs / "full.code").read_text()),
        (logs / "full.log").read_text(),
        "cannot write",
        "No space left on device",
    )
    assert "not fitted" not in (logs / "full.log").read_text()
    before = (logs / "before.txt").read_text()
    assert "report.html" in before and (logs / "after.txt").read_text() == before  # the previous report, whole
    assert ".tmp-" not in (logs / "listing.txt").read_text()


def test_an_error_during_extraction_starts_its_own_line_after_the_progress_bar(images, tmp_path):
    """The journal's write failed while the bar was drawn: 'Error: ...' was glued to the bar's line."""
    code, said = cli_process(
        "extract", "--data", images, "--out", tmp_path / "out", *RANDOM, "--workers", "0", file_size=64 << 10
    )  # no --quiet: the bar is drawn; the journal outgrows the limit
    assert_ends_in_one_error_line(code, said, "cannot write", ".partial", "File too large")


def _killed(_):
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's out-of-memory killer does to a worker


def test_a_parallel_worker_killed_out_of_memory_is_one_line():
    """A 1M-row audit's out-of-fold fits (2 workers, a copy of the rows each) ran this machine out of
    memory: the kernel killed a joblib worker and the user got joblib's TerminatedWorkerError
    traceback. A worker really killed the same way is now one line with the way out."""
    from joblib import Parallel, delayed

    from common.errors import machine_refusal

    with pytest.raises(Exception) as raised:
        Parallel(n_jobs=2)(delayed(_killed)(i) for i in range(2))
    said = machine_refusal(raised.value)
    assert type(raised.value).__name__ == "TerminatedWorkerError" and "--jobs 1" in said and "memory" in said
