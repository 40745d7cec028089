"""What `extract --dtype float16` costs the heads: `compare --clf all` on a float32 store and on the
float16 store of the same images, in one run.

Datasets: scikit-learn's digits as images, and ../shared/datasets/hymenoptera when it is there,
through efficientnet_lite0. Prints, per dataset and head, val accuracy from each store and the
difference, plus the file sizes and the largest relative rounding error of a vector.

Usage: python benchmarks/float16_storage.py [--cache DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from data import run_on_image_folders  # noqa: E402  (benchmarks/data.py)

from experiments.compare import compare  # noqa: E402
from featurize import extract, load_features  # noqa: E402
from featurize.store import Storage  # noqa: E402


def accuracies(store: Path, out: Path) -> dict:
    outcome = compare(features=[store], out=out, clf="all", log=lambda _: None)
    return {row.head: row.metrics["accuracy"] for row in outcome.rows}


def report(name: str, data: Path, cache: Path, work: Path) -> None:
    single = extract(data=data, out=cache, progress=False).store
    half = extract(data=data, out=cache, progress=False, storage=Storage("float16")).store
    a, b = load_features(single), load_features(half)
    error = np.abs(a.X - b.X).max(axis=1) / np.abs(a.X).max(axis=1)
    print(
        f"\n### {name}: {len(a.X)} vectors; file {single.stat().st_size / 2**20:.1f} MiB (float32) vs "
        f"{half.stat().st_size / 2**20:.1f} MiB (float16); largest rounding error {error.max():.2e} of a "
        f"vector's largest value\n"
    )
    full, rounded = accuracies(single, work / f"{name}-32"), accuracies(half, work / f"{name}-16")
    print("| head | float32: val acc | float16: val acc | Δ (points) |")
    print("|---|---|---|---|")
    for head in full:
        print(f"| {head} | {full[head]:.3f} | {rounded[head]:.3f} | {100 * (rounded[head] - full[head]):+.1f} |")


if __name__ == "__main__":
    run_on_image_folders(report, __doc__)
