"""`compare --clf all`: the old way (every candidate of the full grids on every fold, one job,
scikit-learn's SVC) against today's default (every core; the SVM's kernel matrix computed once per
fold; the forest's candidates scored out of bag above 1,000 rows), in one run, on:

  generated  N rows x 1280 generated "CNN-like" features (6 classes, 80% train / 20% val; the
             default N=2527 is the size of the 6-class photo set in issue 11), written through the
             feature store's own API;
  digits     scikit-learn's 1,797 handwritten digits as images, through efficientnet_lite0 (real
             CNN features; --skip-real leaves it out);
  hymenoptera  ../shared/datasets/hymenoptera through efficientnet_lite0 (when it is there).

Prints, per dataset and head: search + refit seconds and val accuracy both ways, then the total
wall-clock time of each compare and the speed-up. Usage:
  python benchmarks/compare_speed.py [--rows 2527] [--skip-real] [--cache DIR]
  python benchmarks/compare_speed.py --stack-only   (today's default plus the stack row, generated set)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from classifiers.heads import HEADS, _pipeline, _standardise  # noqa: E402
from classifiers.search import SearchSettings  # noqa: E402
from experiments.compare import compare  # noqa: E402
from featurize import extract, load_features  # noqa: E402
from featurize.discovery import ImageList  # noqa: E402
from featurize.fingerprints import fingerprint, library_versions  # noqa: E402
from featurize.placement import IN_MEMORY, Placement  # noqa: E402
from featurize.store import VectorReader, write_store  # noqa: E402

HYMENOPTERA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hymenoptera"
OLD = SearchSettings(search="grid", jobs=1)  # what `compare` did before: full grids, one job
NEW = SearchSettings()  # today's default


def _sklearn_svc(seed):
    from sklearn.svm import SVC

    return _pipeline(_standardise(), SVC(random_state=seed))


# The heads as they were: scikit-learn's SVC (its kernel evaluated inside libsvm per candidate) and
# the MLP's full grid of 15.
OLD_HEADS = {
    "svm": {"build": _sklearn_svc},
    "mlp": {"grid": [{"hidden_layer_sizes": [[256], [512], [256, 128]], "alpha": [1e-4, 1e-3, 1e-2, 1e-1, 1.0]}]},
}


@contextmanager
def old_heads():
    saved = dict(HEADS)
    for name, changes in OLD_HEADS.items():
        HEADS[name] = dataclasses.replace(HEADS[name], **changes)
    try:
        yield
    finally:
        HEADS.update(saved)


def generated_store(folder: Path, rows: int, dim: int = 1280, classes: int = 6, seed: int = 0) -> Path:
    """Non-negative pooled-activation-like vectors: each class a few clusters in a 48-d latent
    space, mapped through a random layer and a softplus, plus noise. Tuned so that logistic
    regression lands near 0.85, like lite0 features of a 6-class photo set."""
    rng = np.random.default_rng(seed)
    latent, clusters = 48, 3
    centres = rng.normal(0, 0.6, (classes, clusters, latent))
    labels = rng.integers(0, classes, rows)
    z = centres[labels, rng.integers(0, clusters, rows)] + rng.normal(0, 1, (rows, latent))
    weights = rng.normal(0, 1 / np.sqrt(latent), (latent, dim))
    X = np.log1p(np.exp(z @ weights + rng.normal(0, 0.6, (rows, dim)) - 0.5)).astype(np.float32)
    names = [f"class{c}" for c in range(classes)]
    images = ImageList(root=folder, name="generated-00000000", layout="split-folders", class_names=names)
    for i, label in enumerate(labels):
        images.add(
            f"{'val' if i % 5 == 0 else 'train'}/{names[label]}/{i:06d}.png",
            int(label),
            "val" if i % 5 == 0 else "train",
        )
    config = {"backbone": "efficientnet_lite0", "weights": "generated", "feature_dim": dim}
    identities = np.ones((rows, 2), np.int64)
    placement = Placement(images.paths)
    placement.put(np.arange(rows), identities, np.arange(rows), [""] * rows, IN_MEMORY)
    attrs = {
        "format_version": 1,
        "fingerprint": fingerprint(config),
        "config": json.dumps(config),
        "versions": json.dumps(library_versions()),
        "class_names": json.dumps(names),
        "data_root": str(folder),
        "dataset": images.name,
        "layout": images.layout,
        "weights_source": "",
    }
    store = folder / "features" / f"{images.name}-efficientnet_lite0.h5"
    store.parent.mkdir(parents=True, exist_ok=True)
    write_store(store, images, identities, placement, dim, attrs, VectorReader(dim, memory=X))
    return store


def real_store(data: Path, cache: Path) -> Path:
    return extract(data=data, out=cache, progress=False).store


def measure(store: Path, settings: SearchSettings, out: Path, ensemble: str = "vote") -> tuple[float, dict]:
    started = time.perf_counter()
    outcome = compare(
        features=[store], out=out, clf="all", refit=True, search=settings, ensemble=ensemble, log=lambda _: None
    )
    seconds = time.perf_counter() - started
    return seconds, {r.head: (r.info.get("fit_seconds") or 0.0, r.metrics["accuracy"]) for r in outcome.rows}


def report(name: str, store: Path, work: Path) -> tuple[float, float]:
    with old_heads():
        old_seconds, old = measure(store, OLD, work / f"{name}-old")
    new_seconds, new = measure(store, NEW, work / f"{name}-new")
    data = load_features(store)
    print(f"\n### {name} ({np.sum(data.splits == 'train'):,} train / {np.sum(data.splits == 'val'):,} val)\n")
    print("| head | old: s | old: val acc | new: s | new: val acc | Δ acc (points) |")
    print("|---|---|---|---|---|---|")
    for head in old:
        print(
            f"| {head} | {old[head][0]:.1f} | {old[head][1]:.3f} | {new[head][0]:.1f} | {new[head][1]:.3f} "
            f"| {100 * (new[head][1] - old[head][1]):+.1f} |"
        )
    best_old, best_new = max(a for _, a in old.values()), max(a for _, a in new.values())
    print(
        f"| **compare, wall clock** | **{old_seconds:.0f}** | best {best_old:.3f} | **{new_seconds:.0f}** "
        f"| best {best_new:.3f} | {100 * (best_new - best_old):+.1f} |"
    )
    print(f"\nspeed-up {old_seconds / new_seconds:.1f}x", flush=True)
    return old_seconds, new_seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2527)
    parser.add_argument("--skip-real", action="store_true", help="Only the generated features.")
    parser.add_argument("--cache", type=Path, default=None, help="Keep extracted feature files here.")
    parser.add_argument(
        "--stack-only",
        action="store_true",
        help="Only today's default with the stack row too (--ensemble vote,stack), generated set.",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache = args.cache or work / "cache"
        generated = generated_store(work / "generated", args.rows)
        if args.stack_only:
            seconds, rows = measure(generated, NEW, work / "stack", ensemble="vote,stack")
            print("| row | s | val acc |\n|---|---|---|")
            print("\n".join(f"| {head} | {s:.1f} | {accuracy:.3f} |" for head, (s, accuracy) in rows.items()))
            print(f"| **compare, wall clock** | **{seconds:.0f}** | |")
            return
        report(f"generated, {args.rows} rows x 1280, 6 classes", generated, work)
        if not args.skip_real:
            from featurize.demo_data import write_digits

            digits = cache / "digits"
            if not digits.exists():
                write_digits(digits)
            report("digits, efficientnet_lite0", real_store(digits, cache), work)
            if HYMENOPTERA.is_dir():
                report("hymenoptera, efficientnet_lite0", real_store(HYMENOPTERA, cache), work)


if __name__ == "__main__":
    main()
