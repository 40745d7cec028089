"""The feature store at 10k, 100k and 1M rows: time per row and peak memory of each operation.

Vectors are generated (N x 1280 float32, 100 classes, seeded per batch, never all in memory) and
go through the store's own API, the way `extract` uses it:

  create      N rows appended to the journal in batches of 256, then the store written from it
  up-to-date  the "nothing changed" check (paths, labels, splits, file identities; no vectors)
  one-file    one image changed: its row from the journal, the other N-1 copied from the old store
  append 1%   N/100 new images: the old rows copied, the new ones from the journal
  load        load_features (all of X in memory), and load_features(lazy=True) + one 4096-row slice

Each (operation, N) runs in a fresh process, which reports its wall time and its peak resident
memory (ru_maxrss). Prints one table; time per row should stay flat as N grows, and memory should
not grow with N x D (a 1M x 1280 float32 matrix is 4.9 GiB).

Usage: python benchmarks/scale.py [--rows 10000 100000 1000000] [--dir DIR]
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

DIM, CLASSES, BATCH = 1280, 100, 256
OPERATIONS = ("create", "up-to-date", "one-file", "append 1%", "load", "load lazy")


def image_list(rows: int, folder: Path):
    from featurize.images import ImageList

    images = ImageList(root=folder, name="scale-00000000", layout="class-folders",
                       class_names=[f"class{c:03d}" for c in range(CLASSES)])
    for i in range(rows):
        images.add(f"class{i % CLASSES:03d}/{i:07d}.jpg", i % CLASSES, "train" if i % 5 else "val")
    return images


def attrs_for(images) -> dict:
    from featurize.store import FORMAT_VERSION, fingerprint, library_versions

    config = {"backbone": "generated", "weights": "generated", "feature_dim": DIM}
    return {"format_version": FORMAT_VERSION, "fingerprint": fingerprint(config), "config": json.dumps(config),
            "versions": json.dumps(library_versions()), "class_names": json.dumps(images.class_names),
            "data_root": str(images.root), "dataset": images.name, "layout": images.layout, "weights_source": ""}


def vectors(start: int, count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng([seed, start]).random((count, DIM), dtype=np.float32)


def journal_rows(journal, images, identities, todo: list[int], known: dict, seed: int = 0) -> None:
    """What extract's _store_batches does with each batch the backbone yields."""
    for start in range(0, len(todo), BATCH):
        rows = todo[start:start + BATCH]
        places = journal.append([images.paths[i] for i in rows], [identities[i] for i in rows],
                                vectors(rows[0], len(rows), seed), [""] * len(rows))
        for i, place in zip(rows, places):
            known[images.paths[i]] = (identities[i], place, "")


def rewrite(store: Path, images, identities, changed: list[int], seed: int) -> None:
    """An incremental run's store update: old rows from the store, `changed` from the journal."""
    from featurize.journal import Journal
    from featurize.store import VectorReader, read_rows, write_store

    attrs = attrs_for(images)
    known = read_rows(store, attrs["fingerprint"], str(images.root)).by_path()
    journal = Journal(store.with_name(store.name + ".partial"), attrs["fingerprint"], DIM)
    journal_rows(journal, images, identities, changed, known, seed)
    journal.close()
    write_store(store, images, identities, known, DIM, attrs, VectorReader(DIM, store, journal.path))
    journal.remove()


def run_operation(operation: str, rows: int, folder: Path) -> None:
    """One operation in this process; prints a JSON line with its seconds and peak RSS."""
    from featurize.journal import Journal
    from featurize.store import VectorReader, load_features, store_matches, write_store

    store = folder / f"scale-{rows}.h5"
    images = image_list(rows, folder)
    identities = [(i, i) for i in range(rows)]
    attrs = attrs_for(images)
    started = time.perf_counter()
    if operation == "create":
        journal, known = Journal(store.with_name(store.name + ".partial"), attrs["fingerprint"], DIM), {}
        journal_rows(journal, images, identities, list(range(rows)), known)
        journal.close()
        write_store(store, images, identities, known, DIM, attrs, VectorReader(DIM, None, journal.path))
        journal.remove()
    elif operation == "up-to-date":
        assert store_matches(store, attrs["fingerprint"], images, identities)
    elif operation == "one-file":
        identities[rows // 2] = (-5, -5)
        rewrite(store, images, identities, [rows // 2], seed=1)
    elif operation == "append 1%":
        old = rows - rows // 100  # the store holds the first 99%: take the last 1% out, then add it back
        small = image_list(old, folder)
        rewrite(store, small, identities[:old], [], seed=0)
        started = time.perf_counter()
        rewrite(store, images, identities, list(range(old, rows)), seed=2)
    elif operation == "load":
        assert load_features(store).X.shape == (rows, DIM)
    elif operation == "load lazy":
        assert load_features(store, lazy=True).X[rows // 2:rows // 2 + 4096].shape[1] == DIM
    seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mib": peak_mib}))


def measure(operation: str, rows: int, folder: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--operation", operation, "--rows", str(rows), "--dir", str(folder)],
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{operation} at {rows} rows failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dir", type=Path, default=None, help="Where the stores go (default: a temporary folder).")
    parser.add_argument("--operation", choices=OPERATIONS, help=argparse.SUPPRESS)  # one measurement, in a child
    args = parser.parse_args()
    if args.operation:
        return run_operation(args.operation, args.rows[0], args.dir)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        results = {rows: {op: measure(op, rows, Path(folder)) for op in OPERATIONS} for rows in args.rows}
        for rows in args.rows:
            (Path(folder) / f"scale-{rows}.h5").unlink()
    print(f"| operation | {' | '.join(f'{n:,} rows: s' for n in args.rows)} | µs per row at each N | "
          f"{' | '.join(f'peak MiB at {n:,}' for n in args.rows)} |")
    print("|---|" + "---|" * (2 * len(args.rows) + 1))
    for op in OPERATIONS:
        seconds = [results[n][op]["seconds"] for n in args.rows]
        per_row = " / ".join(f"{1e6 * s / n:.1f}" for s, n in zip(seconds, args.rows))
        peaks = " | ".join(f"{results[n][op]['peak_mib']:.0f}" for n in args.rows)
        print(f"| {op} | {' | '.join(f'{s:.2f}' for s in seconds)} | {per_row} | {peaks} |")


if __name__ == "__main__":
    main()
