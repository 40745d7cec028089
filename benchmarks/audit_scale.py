"""`audit` at scale: generated stores of 10k and 100k rows (1,280 wide, 100 classes, every fifth row
val; 1M with --rows), with 1% of the val rows copied into train (the copy a little noisy) and 1% of
train rows given another class. Times each part, the process's peak memory, and how many of the
planted copies and labels the audit found. Past 50,000 rows the neighbour search is faiss IVF (16
of 4 sqrt(n) lists probed); below, exact.

    .venv/bin/python benchmarks/audit_scale.py                    # 10k and 100k (about 10 minutes)
    .venv/bin/python benchmarks/audit_scale.py --rows 1000000     # 1M: about 15 GB of memory
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import scale  # noqa: E402  (the generated vectors and store of benchmarks/scale.py)

PLANTED = 0.01


def make_store(rows: int, folder: Path) -> tuple[Path, dict]:
    """A store of `rows` generated vectors with planted leaks and wrong labels; returns it and them."""
    from featurize.placement import IN_MEMORY, Placement
    from featurize.store import VectorReader, write_store

    images = scale.image_list(rows, folder)
    X = scale.vectors(0, rows)
    y = np.asarray(images.labels)
    splits = np.asarray(images.splits)
    rng = np.random.default_rng(1)
    val, train = np.flatnonzero(splits == "val"), np.flatnonzero(splits == "train")
    leaks = rng.choice(val, int(PLANTED * len(val)), replace=False)
    targets = rng.choice(train, len(leaks), replace=False)
    X[targets] = X[leaks] + 0.5 * rng.standard_normal(X[leaks].shape, dtype=np.float32)  # a near-copy
    y[targets] = y[leaks]
    spare = np.setdiff1d(train, targets)
    moved = rng.choice(spare, int(PLANTED * len(train)), replace=False)
    y[moved] = (y[moved] + 1 + rng.integers(0, scale.CLASSES - 1, len(moved))) % scale.CLASSES
    images.labels = y.tolist()
    attrs = scale.attrs_for(images)
    identities = np.stack([np.arange(rows), np.arange(rows)], axis=1)
    placement = Placement(images.paths)
    placement.put(np.arange(rows), identities, np.arange(rows), [""] * rows, IN_MEMORY)
    store = folder / f"scale-{rows}.h5"
    write_store(store, images, identities, placement, scale.DIM, attrs, VectorReader(scale.DIM, memory=X))
    planted = {"leaks": [images.paths[i] for i in leaks], "moved": [images.paths[i] for i in moved]}
    return store, planted


def audit_in_a_process(store: Path, out: Path, planted: dict) -> dict:
    """cli.py audit in its own process (its peak memory alone), and what it found of the planted faults."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "audit", "--features", str(store), "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(done.stdout + done.stderr)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    import csv

    with open(out / "audit" / store.stem / "issues.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    leaks = {r["path"] for r in rows if r["issue"] == "leak"}
    labels = [r["path"] for r in rows if r["issue"] == "label"]
    return {
        "seconds": seconds,
        "peak_gib": peak,
        "leaks found": f"{len(leaks & set(planted['leaks']))} of {len(planted['leaks'])} ({len(leaks)} rows)",
        "moved in top 2x": f"{len(set(labels[: 2 * len(planted['moved'])]) & set(planted['moved']))} of "
        f"{len(planted['moved'])} ({len(labels)} label rows)",
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    print("| rows | audit s | peak GiB | leaks found | moved labels in the top 2x |")
    print("|---|---|---|---|---|")
    for rows in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            store, planted = make_store(rows, Path(tmp))
            found = audit_in_a_process(store, Path(tmp, "out"), planted)
            print(
                f"| {rows:,} | {found['seconds']:.0f} | {found['peak_gib']:.1f} | {found['leaks found']} | "
                f"{found['moved in top 2x']} |",
                flush=True,
            )
            print(json.dumps(found), file=sys.stderr)


if __name__ == "__main__":
    main()
