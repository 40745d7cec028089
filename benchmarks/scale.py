"""The feature store at 10k, 100k and 1M rows: time per row and peak memory of each operation.

Vectors are generated (N x 1280 float32, 100 classes, seeded per batch, never all in memory) and
go through the store's own API, the way `extract` uses it:

  create      N rows appended to the journal in batches of 256, then the store written from it
  up-to-date  the "nothing changed" check (paths, labels, splits, file identities; no vectors)
  verify      `extract --verify`'s check: every vector read and checked against its block's checksum
  one-file    one image changed: its row from the journal, the other N-1 copied from the old store
  append 1%   N/100 new images: the old rows copied, the new ones from the journal
  load        load_features (all of X in memory), and load_features(lazy=True) + one 4096-row slice
  fit HEAD    `cnnfeat fit --clf HEAD` on the store (logreg, linear, knn; the default search; 80%
              train / 20% val): reading its rows, search, refit, held-out scoring. Each
              class's vectors lie around a centre of their own, so the heads have something to learn
              and the held-out accuracy is printed too. A head past its scales_badly_above (knn past
              50,000 rows: brute force, every held-out row against every training row) is left out,
              as `compare --clf all` leaves it out.
  extract one-file    `cli.py extract` as a user types it (lite0, the default engine), on a folder
              of N files whose store is up to date but for one file, replaced by a real JPEG: the
              listing, a stat per file, the model loaded for that one image, the store rewritten.
              The other N-1 files are empty: they are never decoded, their vectors are in the store.
  extract up-to-date  the same command again: nothing to extract (no model loaded).

Each (operation, N) runs in a fresh process, which reports its wall time and its peak resident
memory (ru_maxrss; for the extract runs, the `cli.py` process's own and its workers', from
wait4). Prints one table; time per row should stay flat as N grows, and memory should not grow
with N x D (a 1M x 1280 float32 matrix is 4.9 GiB).

Usage: python benchmarks/scale.py [--rows 10000 100000 1000000] [--dir DIR] [--only store|fit|cli]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DIM, CLASSES, BATCH = 1280, 100, 256
STORE_OPERATIONS = ("create", "up-to-date", "verify", "one-file", "append 1%", "load", "load lazy")
FIT_OPERATIONS = tuple(f"fit {head}" for head in ("logreg", "linear", "knn"))
CLI_OPERATIONS = ("extract one-file", "extract up-to-date")
OPERATIONS = STORE_OPERATIONS + FIT_OPERATIONS + CLI_OPERATIONS
CLI_BACKBONE = "efficientnet_lite0"  # 1280-wide, like the generated vectors; its weights ship with the package
SPREAD = 8.0  # each coordinate's noise around its class centre (centres: standard normal)


def image_list(rows: int, folder: Path):
    from featurize.discovery import ImageList

    images = ImageList(
        root=folder, name=f"scale-{rows}", layout="class-folders", class_names=[f"class{c:03d}" for c in range(CLASSES)]
    )
    for i in range(rows):
        # every fifth row of each class is val: each class in both splits
        images.add(f"class{i % CLASSES:03d}/{i:07d}.jpg", i % CLASSES, "val" if (i // CLASSES) % 5 == 0 else "train")
    return images


def attrs_for(images) -> dict:
    from featurize.fingerprints import fingerprint, store_attrs

    config = {"backbone": "generated", "weights": "generated", "feature_dim": DIM}
    return store_attrs(config, fingerprint(config), images, None)


def vectors(start: int, count: int, seed: int = 0) -> np.ndarray:
    """Rows start..start+count-1 (row i is of class i % CLASSES): its class centre plus noise."""
    centres = np.random.default_rng(12345).standard_normal((CLASSES, DIM), dtype=np.float32)
    noise = np.random.default_rng([seed, start]).standard_normal((count, DIM), dtype=np.float32)
    return centres[np.arange(start, start + count) % CLASSES] + SPREAD * noise


def journal_rows(journal, images, identities, todo: np.ndarray, placement, seed: int = 0) -> None:
    """Extract's own append_batches, fed generated batches as the backbone would yield them."""
    from featurize.extract import append_batches

    batches = (
        (
            list(range(start, min(start + BATCH, len(todo)))),
            vectors(int(todo[start]), min(BATCH, len(todo) - start), seed),
            [],
        )
        for start in range(0, len(todo), BATCH)
    )
    append_batches(batches, images, identities, todo, journal, placement, DIM)


def create(store: Path, images, identities, attrs: dict) -> None:
    """A new store: every row through the journal, then the store written from it."""
    from featurize.journal import Journal
    from featurize.placement import Placement
    from featurize.store import VectorReader, write_store

    journal, placement = (
        Journal(store.with_name(store.name + ".partial"), attrs["fingerprint"], DIM),
        Placement(images.paths),
    )
    journal_rows(journal, images, identities, np.arange(len(images)), placement)
    journal.close()
    write_store(store, images, identities, placement, DIM, attrs, VectorReader(DIM, None, journal.path))
    journal.remove()


def rewrite(store: Path, images, identities, changed: np.ndarray, seed: int) -> None:
    """An incremental run's store update: old rows from the store, `changed` from the journal."""
    from featurize.journal import Journal
    from featurize.placement import Placement
    from featurize.store import VectorReader, place_store_rows, write_store

    attrs = attrs_for(images)
    placement = Placement(images.paths)
    place_store_rows(placement, store, attrs["fingerprint"], str(images.root))
    journal = Journal(store.with_name(store.name + ".partial"), attrs["fingerprint"], DIM)
    journal_rows(journal, images, identities, changed, placement, seed)
    journal.close()
    write_store(store, images, identities, placement, DIM, attrs, VectorReader(DIM, store, journal.path))
    journal.remove()


def run_operation(operation: str, rows: int, folder: Path) -> None:
    """One operation in this process; prints a JSON line with its seconds and peak RSS."""
    from featurize.store import load_features, store_damage, store_matches

    if operation in CLI_OPERATIONS:
        return print(json.dumps(run_cli(operation, rows, folder)))
    store = folder / f"scale-{rows}.h5"
    images = image_list(rows, folder)
    identities = np.repeat(np.arange(rows, dtype=np.int64)[:, None], 2, axis=1)  # (size, mtime) of row i: (i, i)
    attrs = attrs_for(images)
    started = time.perf_counter()
    if operation == "create":
        create(store, images, identities, attrs)
    elif operation == "up-to-date":
        assert store_matches(store, attrs["fingerprint"], images, identities)
    elif operation == "verify":
        assert len(store_damage(store)) == 0
    elif operation == "one-file":
        identities[rows // 2] = (-5, -5)
        rewrite(store, images, identities, np.array([rows // 2]), seed=1)
    elif operation == "append 1%":
        old = rows - rows // 100  # the store holds the first 99%: take the last 1% out, then add it back
        small = image_list(old, folder)
        rewrite(store, small, identities[:old], np.arange(0), seed=0)
        started = time.perf_counter()
        rewrite(store, images, identities, np.arange(old, rows), seed=2)
    elif operation == "load":
        assert load_features(store).X.shape == (rows, DIM)
    elif operation == "load lazy":
        assert load_features(store, lazy=True).X[rows // 2 : rows // 2 + 4096].shape[1] == DIM
    elif operation.startswith("fit "):
        return print(json.dumps(fit_head(store, operation.split()[1])))
    seconds = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mib": peak_mib}))


def run_cli(operation: str, rows: int, folder: Path) -> dict:
    """`cli.py extract` as a user types it, on a folder of `rows` files whose store is already
    written; "extract one-file" first builds both and replaces one file with a real JPEG."""
    tree, out = folder / f"tree-{rows}", folder / f"out-{rows}"

    def extract(data: Path) -> list[str]:
        return [
            sys.executable,
            str(REPO / "cli.py"),
            "extract",
            "--backbone",
            CLI_BACKBONE,
            "--data",
            str(data),
            "--out",
            str(out),
            "--quiet",
        ]

    if operation == "extract one-file":
        changed = cli_tree_and_store(tree, out, rows)
        warm = folder / "warm-up"  # the ONNX export (once per backbone, then cached) is not what is timed
        write_jpeg(warm / "a" / "one.jpg")
        subprocess.run(extract(warm), check=True, capture_output=True)
        write_jpeg(changed)
    return measured_child(extract(tree))


def cli_tree_and_store(tree: Path, out: Path, rows: int) -> Path:
    """A folder of `rows` empty files (image_list's paths) and their up-to-date store, written
    through the store's API with the fingerprint the CLI computes; returns the middle file."""
    from featurize.backbones import get_backbone
    from featurize.discovery import discover, image_identities
    from featurize.fingerprints import FeatureSpec

    for c in range(CLASSES):
        (tree / f"class{c:03d}").mkdir(parents=True)
    paths = image_list(rows, tree).paths
    for path in paths:
        (tree / path).touch()
    spec = FeatureSpec(get_backbone(CLI_BACKBONE), None, "float32", "onnxruntime")
    images = discover(tree)
    store = spec.store_path(out, images.name)
    store.parent.mkdir(parents=True)
    create(store, images, image_identities(images), spec.store_attrs(images))
    return tree / paths[rows // 2]


def write_jpeg(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (96, 96), (200, 120, 40)).save(path, "JPEG")


def measured_child(command: list[str]) -> dict:
    """Wall time and peak RSS of one child process (its own, from wait4), which must succeed."""
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status):
            errors.seek(0)
            raise SystemExit(f"{' '.join(command)} failed:\n{errors.read().decode()}")
    return {"seconds": seconds, "peak_mib": usage.ru_maxrss / 1024}


def fit_head(store: Path, head: str) -> dict:
    """What `cnnfeat fit --clf HEAD` does, timed; seconds None where the head is left out."""
    from classifiers import get_head
    from experiments.fit import fit_and_score
    from experiments.splits import train_eval_split
    from featurize.store import load_features

    data = load_features(store, lazy=True)  # as `cnnfeat fit` reads it: the rows a step needs, when it needs them
    split = train_eval_split(data)
    limit = get_head(head).scales_badly_above
    if limit and len(split.train) > limit:
        return {"seconds": None, "peak_mib": None, "left_out": f"above {limit:,} training rows"}
    started = time.perf_counter()
    scored = fit_and_score(data, split, head, log=lambda line: print(line, file=sys.stderr))
    return {
        "seconds": time.perf_counter() - started,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "accuracy": scored.info["heldout"]["accuracy"],
        "search": scored.info["cv"]["search"],
    }


def measure(operation: str, rows: int, folder: Path) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--operation", operation, "--rows", str(rows), "--dir", str(folder)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"{operation} at {rows} rows failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dir", type=Path, default=None, help="Where the stores go (default: a temporary folder).")
    parser.add_argument(
        "--only",
        choices=("store", "fit", "cli"),
        help="Only the store operations, only the fits, or only the `cli.py extract` runs.",
    )
    parser.add_argument("--operation", choices=OPERATIONS, help=argparse.SUPPRESS)  # one measurement, in a child
    args = parser.parse_args()
    if args.operation:
        return run_operation(args.operation, args.rows[0], args.dir)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        operations = {
            "store": STORE_OPERATIONS,
            "fit": ("create", *FIT_OPERATIONS),
            "cli": CLI_OPERATIONS,
            None: OPERATIONS,
        }[args.only]
        results = {}
        for rows in args.rows:
            results[rows] = {op: measure(op, rows, Path(folder)) for op in operations}
            for leftover in (Path(folder) / name for name in (f"scale-{rows}.h5", f"tree-{rows}", f"out-{rows}")):
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)  # GBs at 1M
    print(
        f"| operation | {' | '.join(f'{n:,} rows: s' for n in args.rows)} | µs per row at each N | "
        f"{' | '.join(f'peak MiB at {n:,}' for n in args.rows)} |"
    )
    print("|---|" + "---|" * (2 * len(args.rows) + 1))
    for op in operations:
        measured = [results[n][op] for n in args.rows]
        seconds = " | ".join("left out" if m["seconds"] is None else f"{m['seconds']:.2f}" for m in measured)
        per_row = " / ".join(
            "-" if m["seconds"] is None else f"{1e6 * m['seconds'] / n:.1f}" for m, n in zip(measured, args.rows)
        )
        peaks = " | ".join("-" if m["peak_mib"] is None else f"{m['peak_mib']:.0f}" for m in measured)
        print(f"| {op} | {seconds} | {per_row} | {peaks} |")
    for op in (op for op in operations if op in FIT_OPERATIONS):
        said = [
            results[n][op].get("left_out")
            or f"{results[n][op]['search']} search, held-out accuracy {results[n][op]['accuracy']:.3f}"
            for n in args.rows
        ]
        print(f"{op}: " + "; ".join(f"{n:,} rows: {s}" for n, s in zip(args.rows, said)))


if __name__ == "__main__":
    main()
