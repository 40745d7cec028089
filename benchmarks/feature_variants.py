"""What flip-averaged features and fused backbones do to every head: `compare --clf all` on

  lite0         efficientnet_lite0 features (the default)
  lite0 flip    the same backbone, `extract --tta flip` (each vector the mean of the image's and
                its mirror image's)
  lite2         efficientnet_lite2 features
  lite0+lite2   the two files joined per image, each L2-normalised first (`compare --features
                lite0 --features lite2`: the fused rows)

on scikit-learn's digits as images and on ../shared/datasets/hymenoptera, in one run. Prints, per
dataset, each head's val accuracy under each and the difference from lite0.

Usage: python benchmarks/feature_variants.py [--cache DIR]   (about 20 minutes on 2 cores)
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from data import run_on_image_folders  # noqa: E402  (benchmarks/data.py)

from experiments.compare import compare  # noqa: E402
from featurize import extract  # noqa: E402

COLUMNS = ("lite0", "lite0 flip", "lite2", "lite0+lite2")


def accuracies(stores: list[Path], out: Path) -> dict:
    """{(feature label, head): val accuracy} of one compare."""
    outcome = compare(features=stores, out=out, clf="all", log=lambda _: None)
    return {(row.backbone, row.head): row.metrics["accuracy"] for row in outcome.rows}


def report(name: str, data: Path, cache: Path, work: Path) -> None:
    lite0 = extract(data=data, out=cache, progress=False).store
    flip = extract(data=data, out=cache, progress=False, tta="flip").store
    lite2 = extract(data=data, backbone="efficientnet_lite2", out=cache, progress=False).store
    scores = accuracies([lite0, lite2], work / f"{name}-fused")
    scores.update(
        {
            ("efficientnet_lite0 flip", head): accuracy
            for (_, head), accuracy in accuracies([flip], work / f"{name}-flip").items()
        }
    )
    labels = dict(
        zip(
            COLUMNS,
            (
                "efficientnet_lite0",
                "efficientnet_lite0 flip",
                "efficientnet_lite2",
                "efficientnet_lite0+efficientnet_lite2",
            ),
        )
    )
    heads = [head for label, head in scores if label == labels["lite0"]]
    print(f"\n### {name}: val accuracy per head (Δ: points from lite0)\n")
    print("| head | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for head in heads:
        base = scores[(labels["lite0"], head)]
        cells = [f"{base:.3f}"] + [
            f"{scores[(labels[c], head)]:.3f} ({100 * (scores[(labels[c], head)] - base):+.1f})" for c in COLUMNS[1:]
        ]
        print(f"| {head} | " + " | ".join(cells) + " |")
    best = {c: max(a for (label, _), a in scores.items() if label == labels[c]) for c in COLUMNS}
    print("| **best head** | " + " | ".join(f"**{best[c]:.3f}**" for c in COLUMNS) + " |", flush=True)


if __name__ == "__main__":
    run_on_image_folders(report, __doc__)
