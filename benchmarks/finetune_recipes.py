"""Which fine-tune recipe to compare the frozen heads against: each recipe's held-out accuracy and
time beside the best frozen head of the same backbone (efficientnet_lite0), on the same held-out
images, on scikit-learn's digits as images and on ../shared/datasets/hymenoptera.

Recipes (every one: AdamW at lr 1e-3, the backbone at 0.1x, warm-up + cosine, label smoothing 0.1,
random resized crops and flips (but default-noflip), 5 epochs, the epoch chosen on a 20% slice of train):

  before               last 3 blocks unfrozen, their batch-norm statistics updated, a random new
                       layer, crops of 8% of the image or more (the default until 2026-12)
  probe-last3          the same, the new layer starting as a linear probe (logreg on the frozen features)
  probe-last3-crop50   the same, crops of 50% or more
  probe-all-bn-crop8   every block unfrozen, every batch-norm layer keeping its statistics, probe
                       start, crops of 8% or more
  probe-all-bn-crop35  the same, crops of 35% or more
  default              the same, crops of 50% or more (today's default)
  default-noflip       the default without flips

Usage: python benchmarks/finetune_recipes.py [--cache DIR] [--datasets digits,hymenoptera]
       [--recipes before,default,...]   (about 40 minutes for all of them on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from data import image_folders  # noqa: E402  (benchmarks/data.py)

from experiments.compare import compare  # noqa: E402
from experiments.finetune import FinetuneSettings, run_finetune  # noqa: E402
from featurize import extract  # noqa: E402

QUIET = {"progress": False}
OLD = {"unfreeze": "last-3-blocks", "batchnorm": "train", "crop_scale": 0.08}  # the default until 2026-12
RECIPES = {
    "before": FinetuneSettings(head_init="random", **OLD, **QUIET),
    "probe-last3": FinetuneSettings(**OLD, **QUIET),
    "probe-last3-crop50": FinetuneSettings(unfreeze="last-3-blocks", batchnorm="train", **QUIET),
    "probe-all-bn-crop8": FinetuneSettings(crop_scale=0.08, **QUIET),
    "probe-all-bn-crop35": FinetuneSettings(crop_scale=0.35, **QUIET),
    "default": FinetuneSettings(**QUIET),
    "default-noflip": FinetuneSettings(flip=False, **QUIET),
}
FROZEN_HEADS = "logreg,svm,knn"


def best_frozen(data: Path, cache: Path, work: Path) -> tuple[str, float]:
    """(head, held-out accuracy) of the best of FROZEN_HEADS on lite0's features."""
    store = extract(data=data, out=cache, progress=False).store
    outcome = compare(features=[store], out=work / "frozen", clf=FROZEN_HEADS, ensemble="none", log=lambda _: None)
    best = max(outcome.rows, key=lambda row: row.metrics["accuracy"])
    return best.head, best.metrics["accuracy"]


def run_recipe(data: Path, settings: FinetuneSettings, out: Path) -> dict:
    """The fine-tuned model's record, plus the whole run's wall-clock seconds."""
    started = time.perf_counter()
    folder = run_finetune(data, out=out, settings=settings, log=lambda _: None)
    record = json.loads((folder / "model.json").read_text())
    return {**record, "wall_seconds": time.perf_counter() - started}


def report(name: str, data: Path, cache: Path, work: Path, recipes: list[str]) -> None:
    head, frozen = best_frozen(data, cache, work)
    print(f"\n### {name}: best frozen head of lite0 ({FROZEN_HEADS}): {head} {frozen:.3f}\n")
    print(
        "| recipe | held-out accuracy | vs best frozen | best epoch | slice accuracy by epoch "
        "| seconds per epoch (train + slice) | wall s |"
    )
    print("|---|---|---|---|---|---|---|")
    for recipe in recipes:
        record = run_recipe(data, RECIPES[recipe], work / recipe)
        accuracy = record["heldout"]["accuracy"]
        history = [e for e in record["history"] if e["epoch"]]  # not the probe's epoch 0: no training
        per_epoch = sum(e["train_seconds"] + e["select_seconds"] for e in history) / len(history)
        print(
            f"| {recipe} | {accuracy:.3f} | {100 * (accuracy - frozen):+.1f} | {record['best_params']['best_epoch']} "
            f"| {' '.join(format(e['selection_accuracy'], '.3f') for e in record['history'])} "
            f"| {per_epoch:.1f} | {record['wall_seconds']:.0f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=None, help="Keep images and feature files here.")
    parser.add_argument("--datasets", default="digits,hymenoptera")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, folder in image_folders(args.cache or work / "cache"):
            if name in args.datasets.split(","):
                report(name, folder, args.cache or work / "cache", work / name, args.recipes.split(","))


if __name__ == "__main__":
    main()
