"""What each feature recipe (`extract --layers/--pool/--image-size/--tta`) and the heads' `--normalize
power` do to the logreg, svm and knn heads, on real image sets of different kinds, with what each
costs to extract.

Datasets: ../shared/datasets/hymenoptera (photos, ants vs bees), scikit-learn's digits (1,797 8x8
grey digits, upscaled), and three from scikit-image's bundled files (`pip install scikit-image`):
patches (which of 16 of its photos a 32-pixel patch comes from: local texture and colour), LFW
faces vs non-faces (200 grey 25x25 crops) and textures (96-pixel patches of its brick, grass and
gravel photos). Patches are cut from the top half of each photo for train and from the bottom half
for val. Backbone: efficientnet_lite0, onnxruntime, this machine's CPU.

Protocol per (dataset, recipe, head): the head's default grid searched on the train split (3-fold
CV), scored on the val split. Each cell: val accuracy, and in brackets its difference from the plain
recipe in points with the 95% interval of a paired bootstrap over the val images (2,000 draws):
an interval that straddles 0 is noise. "s" is the extraction's wall time (all images, 2 cores).

Usage: python benchmarks/feature_variants.py [--cache DIR] [--datasets hymenoptera,digits,patches,faces,textures]
       [--recipes plain,gem,...]   (about 60 minutes on 2 cores with every recipe)
       python benchmarks/feature_variants.py --cost [--recipes ...]   (extraction speed only, on hymenoptera)
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
import numpy as np  # noqa: E402
from data import HYMENOPTERA  # noqa: E402  (benchmarks/data.py)
from sklearn.model_selection import GridSearchCV, StratifiedKFold  # noqa: E402

from classifiers import get_head, power_head, resolve_grid  # noqa: E402
from featurize import Recipe, extract, load_features  # noqa: E402

RECIPES = {
    "plain": Recipe(),
    "gem": Recipe(pool="gem"),
    "max": Recipe(pool="max"),
    "avgmax": Recipe(pool="avgmax"),
    "layers 2": Recipe(layers=2),
    "layers 3": Recipe(layers=3),
    "layers 5": Recipe(layers=5),
    "size 320": Recipe(image_size=320),
    "flip": Recipe(tta="flip"),
    "crops": Recipe(tta="crops"),
    "layers 3 gem": Recipe(layers=3, pool="gem"),
    "layers 5 gem": Recipe(layers=5, pool="gem"),
    "layers 5 flip": Recipe(layers=5, tta="flip"),
    "layers 5 flip 320": Recipe(layers=5, tta="flip", image_size=320),
}
HEADS = ("logreg", "svm", "knn")
POWER = "+ power"  # the plain recipe's vectors, the heads with --normalize power
DRAWS = 2000


def write_faces(dest: Path) -> Path:
    """LFW faces vs non-faces (skimage.data.lfw_subset: 100 + 100 grey 25x25), every fourth in val."""
    from PIL import Image
    from skimage.data import lfw_subset

    for i, pixels in enumerate(lfw_subset()):
        split = "val" if i % 4 == 0 else "train"
        target = dest / split / ("face" if i < 100 else "other") / f"{i:03d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((pixels * 255).astype(np.uint8), "L").save(target)
    return dest


def write_textures(dest: Path) -> Path:
    """96-pixel patches of skimage's brick, grass and gravel photos (512x512 grey)."""
    return write_photo_patches(dest, ("brick", "grass", "gravel"), patch=96, train=60, val=30)


PHOTOS = (
    "astronaut", "brick", "camera", "cat", "cell", "coffee", "coins", "grass",
    "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text",
)  # fmt: skip


def write_patches(dest: Path) -> Path:
    """Which of 16 of scikit-image's photos a 32-pixel patch comes from (local texture and colour only)."""
    return write_photo_patches(dest, PHOTOS, patch=32, train=40, val=20)


def write_photo_patches(dest: Path, photos, patch: int, train: int, val: int) -> Path:
    """dest/train|val/<photo>/NNN.png: `patch`-pixel squares of each of skimage's `photos`, train
    ones from the top half of the photo, val ones from the bottom half, at random places (seed 0)."""
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(0)
    for name in photos:
        photo = getattr(data, name)()
        half = photo.shape[0] // 2
        for split, count, top in (("train", train, 0), ("val", val, half)):
            for k in range(count):
                y, x = rng.integers(top, top + half - patch), rng.integers(0, photo.shape[1] - patch)
                target = dest / split / name / f"{k:03d}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(photo[y : y + patch, x : x + patch]).convert("RGB").save(target)
    return dest


def datasets(cache: Path, names: list[str]) -> dict[str, Path]:
    from featurize.demo_data import write_digits

    makers = {
        "hymenoptera": lambda folder: HYMENOPTERA,
        "digits": lambda folder: write_digits(folder)[0],
        "faces": write_faces,
        "textures": write_textures,
        "patches": write_patches,
    }
    folders = {}
    for name in names:
        folder = cache / name
        folders[name] = folder if folder.exists() else makers[name](folder)
    return folders


def val_predictions(X, y, Xv, head: str, power: bool) -> np.ndarray:
    spec = power_head(get_head(head)) if power else get_head(head)
    search = GridSearchCV(spec.build(0), resolve_grid(spec), cv=StratifiedKFold(3, shuffle=True, random_state=0))
    return search.fit(X, y).best_estimator_.predict(Xv)


def measure(folder: Path, recipe: Recipe, out: Path, power: bool = False) -> dict:
    started = time.perf_counter()
    result = extract(data=folder, out=out, recipe=recipe, progress=False)
    seconds = time.perf_counter() - started if result.extracted else None
    data = load_features(result.store)
    train, val = data.splits == "train", data.splits == "val"
    correct = {
        head: (val_predictions(data.X[train], data.y[train], data.X[val], head, power) == data.y[val]).tolist()
        for head in HEADS
    }
    return {"seconds": seconds, "dim": int(data.X.shape[1]), "correct": correct}


def paired_interval(correct: list, base: list, seed: int = 0) -> tuple[float, float, float]:
    """(difference in points, its 95% bootstrap interval) of two heads' val correctness."""
    a, b = np.asarray(correct, float), np.asarray(base, float)
    draws = np.random.default_rng(seed).integers(0, len(a), (DRAWS, len(a)))
    diffs = (a[draws] - b[draws]).mean(1) * 100
    return (a.mean() - b.mean()) * 100, *np.percentile(diffs, [2.5, 97.5])


def table(name: str, results: dict) -> str:
    base = results["plain"]
    lines = [
        f"\n### {name} ({len(base['correct']['logreg'])} val images): val accuracy (Δ points from plain [95% CI])\n",
        "| recipe | width | extract s | " + " | ".join(HEADS) + " |",
        "|---|---|---|" + "---|" * len(HEADS),
    ]
    for label, r in results.items():
        cells = []
        for head in HEADS:
            accuracy = np.mean(r["correct"][head])
            if label == "plain":
                cells.append(f"{accuracy:.3f}")
                continue
            diff, low, high = paired_interval(r["correct"][head], base["correct"][head])
            mark = "**" if low > 0 else ""
            cells.append(f"{mark}{accuracy:.3f} ({diff:+.1f} [{low:+.1f}, {high:+.1f}]){mark}")
        seconds = "-" if r["seconds"] is None else f"{r['seconds']:.0f}"
        lines.append(f"| {label} | {r['dim']} | {seconds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def extraction_cost(folder: Path, labels: list[str], work: Path) -> None:
    """Images per second of each recipe's extraction of `folder`, the graph already exported (a first
    run into one folder, the timed one into another), and the ratio to the plain recipe's."""
    rates = {}
    for label in labels:
        recipe = RECIPES[label]
        extract(data=folder, out=work / f"{label}-warm", recipe=recipe, progress=False)
        result = extract(data=folder, out=work / f"{label}-timed", recipe=recipe, progress=False)
        rates[label] = result.total / result.seconds
        print(f"| {label} | {rates[label]:.1f} | {rates[label] / rates[labels[0]]:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=None, help="Keep images, feature files and results here.")
    parser.add_argument("--datasets", default="hymenoptera,digits,patches,faces,textures")
    parser.add_argument("--recipes", default=",".join([*RECIPES, POWER]))
    parser.add_argument("--cost", action="store_true", help="Only time each recipe's extraction of hymenoptera.")
    args = parser.parse_args()
    unknown = set(args.recipes.split(",")) - {*RECIPES, POWER}
    if unknown:
        parser.error(f"unknown recipes {sorted(unknown)}; known: {', '.join([*RECIPES, POWER])}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.cost:
            print("| recipe | img/s | of plain |\n|---|---|---|")
            return extraction_cost(
                HYMENOPTERA, ["plain", *(r for r in args.recipes.split(",") if r not in ("plain", POWER))], Path(tmp)
            )
        cache = args.cache or Path(tmp)
        for name, folder in datasets(cache, args.datasets.split(",")).items():
            saved = cache / f"variants-{name}.json"
            results = json.loads(saved.read_text()) if saved.exists() else {}
            for label in ["plain", *(r for r in args.recipes.split(",") if r != "plain")]:
                if label not in results:
                    recipe = Recipe() if label == POWER else RECIPES[label]
                    results[label] = measure(folder, recipe, cache / "features", power=label == POWER)
                    saved.write_text(json.dumps(results))
                    print(f"{name} {label}: done", file=sys.stderr, flush=True)
            print(table(name, {k: results[k] for k in ["plain", *args.recipes.split(",")] if k in results}), flush=True)


if __name__ == "__main__":
    main()
