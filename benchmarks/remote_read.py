"""Extraction from where large datasets live, in one run on the same images (hymenoptera):

  local     the folder on this machine's disk (the baseline);
  s3        the same files as objects on an S3 server on loopback (moto's, tests/s3_server.py), read
            through s3fs as `--data s3://bucket/prefix/` reads them;
  s3 +Nms   the same, every request answered N ms late (a store farther away than loopback);
  shards    the same images as WebDataset shards (64 samples each) on disk, and in the bucket; the
            first run streams each shard once to index it (timed: "index"), a later run reads the
            cached index (the steady state).

Each row: `featurize.extract` into a fresh output folder (the exported graph already cached), images/s
and the ratio to the local folder; then the bytes alone, fetched by as many threads as extract decodes
a store's images with (the S3 server is Python, on the same cores as the extraction: this is its own rate). Usage:
  python benchmarks/remote_read.py [--data ../shared/datasets/hymenoptera] [--latency-ms 20] [--workers N]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from featurize import extract  # noqa: E402
from featurize.devices import default_workers  # noqa: E402
from featurize.engines import graph_cache_dir  # noqa: E402
from tests.s3_server import ACCESS_KEY, SECRET_KEY, S3Server  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hymenoptera"
PER_SHARD = 64


def write_shards(data: Path, folder: Path) -> str:
    """The images of `data` (split/class/file) as `<split>-NNNNNN.tar` shards; the brace pattern."""
    folder.mkdir(parents=True)
    classes = sorted({p.parent.name for p in data.glob("*/*/*")})
    (folder / "classes.txt").write_text("\n".join(classes) + "\n")
    names = []
    for split in sorted(p.name for p in data.iterdir() if p.is_dir()):
        files = sorted(p for p in (data / split).glob("*/*") if p.is_file())
        for number, start in enumerate(range(0, len(files), PER_SHARD)):
            names.append(f"{split}-{number:06d}")
            with tarfile.open(folder / f"{names[-1]}.tar", "w") as tar:
                for path in files[start : start + PER_SHARD]:
                    key = f"{path.parent.name}_{path.stem}".replace(".", "_")  # a key ends at its first dot
                    for name, data_bytes in (
                        (f"{key}.cls", str(classes.index(path.parent.name)).encode()),
                        (f"{key}{path.suffix.lower()}", path.read_bytes()),
                    ):
                        info = tarfile.TarInfo(name)
                        info.size = len(data_bytes)
                        tar.addfile(info, io.BytesIO(data_bytes))
    return "{" + ",".join(names) + "}.tar"


def timed_extract(data: str, work: Path, workers: int | None) -> tuple[float, int]:
    out = Path(tempfile.mkdtemp(dir=work))
    started = time.perf_counter()
    result = extract(data=data, out=out, workers=workers, progress=False)
    return time.perf_counter() - started, result.total - len(result.skipped)


def timed_fetch(data: str, workers: int) -> tuple[float, int]:
    """Every image's bytes read (not decoded) by `workers` threads, as extract's decoding threads read them."""
    from concurrent.futures import ThreadPoolExecutor

    from featurize import discover

    images = discover(data)
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        sizes = list(pool.map(images.reader.read, images.paths))
    return time.perf_counter() - started, len(sizes)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=None, help="decoding threads [default: extract's]")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="remote-read-"))
    os.environ.setdefault("CNNFEAT_CACHE_DIR", str(work / "cache"))
    server = S3Server()
    try:
        os.environ.update(server.env(work), AWS_EC2_METADATA_DISABLED="true")
        assert ACCESS_KEY and SECRET_KEY
        client = server.client()
        client.create_bucket(Bucket="bench")
        server.upload_folder(args.data, "bench", "folder")
        pattern = write_shards(args.data, work / "shards")
        server.upload_folder(work / "shards", "bench", "shards")
        timed_extract(str(args.data), work, args.workers)  # warm-up: the graph exported and cached

        rows = []

        def row(label, data, latency=0.0, fresh_index=False):
            if fresh_index:
                shutil.rmtree(graph_cache_dir() / "shard-index", ignore_errors=True)
            server.proxy.latency_s = latency
            seconds, images = timed_extract(data, work, args.workers)
            rows.append((label, images, seconds))

        row("local folder", str(args.data))
        row("s3 folder (loopback)", "s3://bench/folder/")
        row(f"s3 folder +{args.latency_ms:g} ms/request", "s3://bench/folder/", args.latency_ms / 1000)
        row("local shards, index", str(work / "shards" / pattern), fresh_index=True)
        row("local shards", str(work / "shards" / pattern))
        row("s3 shards, index", f"s3://bench/shards/{pattern}", fresh_index=True)
        row("s3 shards", f"s3://bench/shards/{pattern}")
        row(f"s3 shards +{args.latency_ms:g} ms/request", f"s3://bench/shards/{pattern}", args.latency_ms / 1000)
        threads = args.workers or default_workers("onnxruntime", remote=True)
        for label, data, latency in (
            ("fetch only: local folder", str(args.data), 0.0),
            ("fetch only: s3 folder (loopback)", "s3://bench/folder/", 0.0),
            (f"fetch only: s3 folder +{args.latency_ms:g} ms", "s3://bench/folder/", args.latency_ms / 1000),
        ):
            server.proxy.latency_s = latency
            seconds, images = timed_fetch(data, threads)
            rows.append((label, images, seconds))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    base = rows[0][1] / rows[0][2]
    local, remote = default_workers("onnxruntime"), default_workers("onnxruntime", remote=True)
    workers = args.workers or f"default ({local} threads; {remote} for a store)"
    print(f"{args.data.name}: efficientnet_lite0, onnxruntime, {os.cpu_count()} CPUs, workers {workers}")
    print(f"{'source':34} {'images':>7} {'seconds':>8} {'images/s':>9} {'vs local':>9}")
    for label, images, seconds in rows:
        print(f"{label:34} {images:7d} {seconds:8.2f} {images / seconds:9.1f} {images / seconds / base:8.2f}x")


if __name__ == "__main__":
    main()
