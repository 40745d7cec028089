"""Where a fine-tune's time goes on this machine, and how long `compare --finetune` takes on 2,500
photos.

Part 1, per training image (efficientnet_lite0, batches of 16, hymenoptera's train photos): decode
+ the default augmentation (one process), the forward pass in train mode, and backward + the optimiser step,
with the last 3 blocks unfrozen and with all of them, in channels_last memory and in the default
(contiguous) layout: channels_last's gain is printed as a ratio against contiguous, same run.

Part 2, end to end: 2,500 photos written from hymenoptera's (each source photo cropped, mirrored
and re-encoded at random, a few times over; class folders, no split), then `cli.py extract` and
`cli.py compare --clf logreg,svm,knn --finetune` with the default recipe, timed. Derived photos
share their source across train and hold-out, so this part times; it does not score.

Usage: python benchmarks/finetune_time.py [--photos 2500] [--skip-compare]   (about 15 minutes)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from data import HYMENOPTERA  # noqa: E402  (benchmarks/data.py)

BATCH = 16
REPEATS = 4  # timed batches per setting, after one untimed (oneDNN builds its kernels on the first)


def decode_seconds(paths: list[Path], transform) -> float:
    """Seconds per image to read, decode and augment, in this process."""
    from featurize.decoding import load_image

    started = time.perf_counter()
    for path in paths:
        transform(load_image(path))
    return (time.perf_counter() - started) / len(paths)


def step_seconds(batch, unfreeze: str, channels_last: bool) -> tuple[float, float]:
    """(forward, backward + step) seconds per image for lite0 in train mode with `unfreeze`."""
    import torch

    from experiments.finetune import FinetuneSettings, build_network
    from featurize import get_backbone

    settings = FinetuneSettings(unfreeze=unfreeze, head_init="random")
    module = build_network(get_backbone("efficientnet_lite0"), settings, 2, "cpu").module
    if not channels_last:
        module = module.to(memory_format=torch.contiguous_format)
    batch = batch.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
    labels = torch.zeros(len(batch), dtype=torch.long)
    module.train()
    forward = backward = 0.0
    for repeat in range(REPEATS + 1):
        started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(module(batch), labels)
        middle = time.perf_counter()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if repeat:
            forward, backward = forward + middle - started, backward + time.perf_counter() - middle
    return forward / (REPEATS * len(batch)), backward / (REPEATS * len(batch))


def breakdown() -> None:
    import torch

    from experiments.choices import FINETUNE_CROP_SCALE
    from experiments.finetune import _augmentation
    from featurize import get_backbone
    from featurize.decoding import load_image

    prep = get_backbone("efficientnet_lite0").load(None).preprocessing
    transform = _augmentation(prep, FINETUNE_CROP_SCALE, True)
    paths = sorted((HYMENOPTERA / "train").rglob("*.jpg"))[:64]
    batch = torch.stack([transform(load_image(p)) for p in paths[:BATCH]])
    print(f"decode + augmentation: {1000 * decode_seconds(paths, transform):.1f} ms per image (one process)\n")
    print("| unfreeze | layout | forward ms/image | backward + step ms/image | total | contiguous / channels_last |")
    print("|---|---|---|---|---|---|")
    for unfreeze in ("last-3-blocks", "all"):
        totals = {}
        for channels_last in (False, True):
            forward, backward = step_seconds(batch, unfreeze, channels_last)
            totals[channels_last] = forward + backward
            layout = "channels_last" if channels_last else "contiguous"
            ratio = f"{totals[False] / totals[True]:.2f}x" if channels_last else ""
            print(
                f"| {unfreeze} | {layout} | {1000 * forward:.1f} | {1000 * backward:.1f} | "
                f"{1000 * (forward + backward):.1f} | {ratio} |",
                flush=True,
            )


def write_photos(dest: Path, count: int) -> None:
    """`count` photos from hymenoptera's, class folders and no split: random crops of 60-100% of
    each side, mirrored at random, re-encoded as JPEG (quality 85-95)."""
    import random

    from PIL import Image, ImageOps

    sources = sorted(HYMENOPTERA.rglob("*.jpg"))
    rng = random.Random(0)
    for number in range(count):
        source = sources[number % len(sources)]
        with Image.open(source) as image:
            image = image.convert("RGB")
            width, height = image.size
            w, h = int(width * rng.uniform(0.6, 1)), int(height * rng.uniform(0.6, 1))
            left, top = rng.randint(0, width - w), rng.randint(0, height - h)
            photo = image.crop((left, top, left + w, top + h))
            photo = ImageOps.mirror(photo) if rng.random() < 0.5 else photo
            target = dest / source.parent.name / f"{number:05d}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            photo.save(target, quality=rng.randint(85, 95))


def timed(*args) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "cli.py"), *map(str, args)], check=True)
    return time.perf_counter() - started


def end_to_end(count: int, work: Path) -> None:
    photos, out = work / "photos", work / "out"
    write_photos(photos, count)
    extract = timed("extract", "--data", photos, "--out", out, "--quiet")
    compare = timed("compare", "--clf", "logreg,svm,knn", "--finetune", "--out", out, "--quiet")
    record = json.loads(next(out.glob("finetune/*/model.json")).read_text())
    epochs = [e for e in record["history"] if e["epoch"]]  # not the probe's epoch 0: no training
    train = sum(e["train_seconds"] for e in epochs)
    select = sum(e["select_seconds"] for e in epochs)
    print(
        f"\n{count} photos (no split): extract {extract:.0f} s; compare --clf logreg,svm,knn --finetune {compare:.0f} s"
    )
    print(
        f"  the fine-tune: {record['fit_seconds']:.0f} s for {len(epochs)} epochs ({train:.0f} s training, "
        f"{select:.0f} s scoring the selection slice), recipe {record['best_params']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=2500)
    parser.add_argument("--skip-compare", action="store_true", help="Only the per-image breakdown.")
    args = parser.parse_args()
    breakdown()
    if not args.skip_compare:
        with tempfile.TemporaryDirectory() as tmp:
            end_to_end(args.photos, Path(tmp))


if __name__ == "__main__":
    main()
