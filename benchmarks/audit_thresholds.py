"""Where `audit`'s near-duplicate threshold comes from: the cosine similarity of an image's vector to
its copy's (exact, re-encoded, resized, mirrored, cropped), against the similarity of each original
to its nearest *other* original. Real photos (hymenoptera) and scikit-learn's digits (8 x 8
drawings as 64-pixel PNGs), lite0, plain and flip-averaged vectors; centred on the mean vector as
`audit` compares them, and raw for contrast.

    .venv/bin/python benchmarks/audit_thresholds.py            # about 3 minutes on 2 cores

A threshold separates the two when it lies above (nearly) every distinct pair and below the copies
it should catch; the table prints the quantiles of both so the choice can be read off.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from experiments.choices import AUDIT_NEAR as NEAR  # noqa: E402
from featurize import Recipe, extract, load_features, write_digits  # noqa: E402

HYMENOPTERA = REPO.parent / "shared" / "datasets" / "hymenoptera"
COPIES = {
    "exact": lambda im: im,
    "jpeg q70": lambda im: im,  # saved at quality 70 below
    "resized 0.8x": lambda im: im.resize((max(1, int(im.width * 0.8)), max(1, int(im.height * 0.8)))),
    "mirrored": ImageOps.mirror,
    "cropped 90%": lambda im: im.crop(
        (im.width // 20, im.height // 20, im.width - im.width // 20, im.height - im.height // 20)
    ),
}


def plant(source: Path, folder: Path, count: int) -> list[tuple[str, str, str]]:
    """Originals (every image of `source`) and copies of the first `count`, all in one class folder;
    returns (kind, original, copy) file names."""
    folder.mkdir(parents=True)
    originals = sorted(p for p in source.rglob("*.[jp][pn]g"))
    pairs = []
    for i, path in enumerate(originals):
        name = f"{i:04d}{path.suffix}"
        (folder / name).write_bytes(path.read_bytes())
        if i >= count:
            continue
        image = Image.open(path).convert("RGB")
        for kind, change in COPIES.items():
            copy = f"{i:04d}-{kind.split()[0]}{path.suffix if kind == 'exact' else '.jpg'}"
            if kind == "exact":
                (folder / copy).write_bytes(path.read_bytes())
            else:
                change(image).save(folder / copy, quality=70 if kind == "jpeg q70" else 95)
            pairs.append((kind, name, copy))
    return pairs


def similarities(store: Path, pairs, centred: bool) -> tuple[dict, np.ndarray]:
    features = load_features(store)
    X = np.asarray(features.X, dtype=np.float64)
    if centred:
        X -= X.mean(axis=0)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    row = {Path(p).name: i for i, p in enumerate(features.paths)}
    by_kind: dict[str, list[float]] = {}
    for kind, original, copy in pairs:
        by_kind.setdefault(kind, []).append(float(X[row[original]] @ X[row[copy]]))
    originals = np.array([i for name, i in row.items() if "-" not in name])
    kept = X[originals]
    S = kept @ kept.T
    np.fill_diagonal(S, -1)
    # the first `count` originals have copies; their nearest other original is still a distinct image
    return by_kind, S.max(axis=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=60, help="originals that get one copy of each kind")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_digits(Path(tmp, "digits-source"))
        for name, source in (("hymenoptera", HYMENOPTERA), ("digits", Path(tmp, "digits-source"))):
            data = Path(tmp, name)
            pairs = plant(source, data / "all", args.copies)
            for tta in ("none", "flip"):
                store = extract(data=data, out=Path(tmp, "out"), recipe=Recipe(tta=tta), progress=False).store
                for centred in (True, False):
                    title = f"{name}, lite0, tta={tta}, {'centred' if centred else 'raw'}"
                    print_table(title, *similarities(store, pairs, centred), args.copies)


def print_table(title: str, by_kind: dict, nearest_other: np.ndarray, copies: int) -> None:
    print(f"\n### {title}: cosine similarity, {copies} copies of each kind")
    print(f"| pair | min | 5% | median | found at {NEAR} |")
    print("|---|---|---|---|---|")
    for kind, values in by_kind.items():
        q = np.quantile(values, [0, 0.05, 0.5])
        found = np.mean(np.asarray(values) >= NEAR)
        print(f"| {kind} copy | {q[0]:.4f} | {q[1]:.4f} | {q[2]:.4f} | {found:.1%} |")
    q = np.quantile(nearest_other, [0.5, 0.95, 0.99, 1.0])
    print(
        f"distinct originals ({len(nearest_other)}), each to its nearest other: median {q[0]:.4f}, "
        f"95% {q[1]:.4f}, 99% {q[2]:.4f}, max {q[3]:.4f}; at or above {NEAR}: {int(np.sum(nearest_other >= NEAR))}",
        flush=True,
    )


if __name__ == "__main__":
    main()
