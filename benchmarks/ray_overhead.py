"""What `extract --ray local` costs against a plain `extract`, in one run on the same images.

Generates N small images (seeded patterns, 10 classes, PNG), then extracts them twice into fresh
output folders with a small backbone (random weights: this measures throughput, not features):
once in this process, once on a local Ray cluster started with this machine's CPUs. Prints
images/s of each, the Ray/plain ratio, the lowest cosine between the two runs' vectors, and the
driver's own write rate (rows appended to the journal and written to HDF5 per second, measured on
the plain run's rows) - the ceiling of a cluster that feeds one driver.

Usage: python benchmarks/ray_overhead.py [--images 20000] [--backbone mobilenet_v3_small]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from featurize import extract, load_features  # noqa: E402
from tests.conftest import write_image  # noqa: E402


def generate(root: Path, count: int) -> Path:
    for i in range(count):
        write_image(root / f"class{i % 10}" / f"{i:06d}.png", seed=i, size=(160, 120))
    return root


def timed_extract(data: Path, out: Path, backbone: str, **options):
    start = time.perf_counter()
    result = extract(data=data, out=out, backbone=backbone, weights="random", progress=False, **options)
    return result, time.perf_counter() - start


def driver_write_rate(features, folder: Path) -> float:
    """Rows per second through the driver's side alone: journal appends of 16 rows, then the store."""
    from featurize.journal import Journal

    journal = Journal(folder / "bench.partial", features.fingerprint, features.X.shape[1])
    paths, identities, vectors = list(features.paths), [(1, 1)] * len(features.paths), features.X
    start = time.perf_counter()
    for i in range(0, len(paths), 16):
        journal.append(paths[i : i + 16], identities[i : i + 16], vectors[i : i + 16], [""] * len(paths[i : i + 16]))
    journal.close()
    return len(paths) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--backbone", default="mobilenet_v3_small")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        started = time.perf_counter()
        data = generate(folder / "data", args.images)
        print(f"{args.images} generated images in {time.perf_counter() - started:.0f} s; backbone {args.backbone}")
        plain, plain_s = timed_extract(data, folder / "plain", args.backbone)
        on_ray, ray_s = timed_extract(data, folder / "ray", args.backbone, ray="local")
        a, b = load_features(plain.store), load_features(on_ray.store)
        assert list(a.paths) == list(b.paths)
        cosine = (a.X * b.X).sum(1) / np.linalg.norm(a.X, axis=1) / np.linalg.norm(b.X, axis=1)
        print(f"plain extract      {plain.extracted / plain_s:8.1f} img/s ({plain_s:.1f} s)")
        print(f"extract --ray local {on_ray.extracted / ray_s:7.1f} img/s ({ray_s:.1f} s, Ray start-up included)")
        print(f"ray / plain = {plain_s / ray_s:.2f}; lowest cosine between the runs {cosine.min():.6f}")
        print(f"driver journal appends alone: {driver_write_rate(a, folder):.0f} rows/s")


if __name__ == "__main__":
    main()
