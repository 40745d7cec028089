"""The real image folders the quality benchmarks run on: scikit-learn's digits written as images
(into the cache), and ../shared/datasets/hymenoptera when it is there."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

HYMENOPTERA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hymenoptera"


def image_folders(cache: Path) -> list[tuple[str, Path]]:
    """[(name, folder)]: digits (written under `cache` on first use), then hymenoptera if present."""
    from featurize.demo_data import write_digits

    digits = Path(cache) / "digits"
    if not digits.exists():
        write_digits(digits)
    return [("digits", digits)] + ([("hymenoptera", HYMENOPTERA)] if HYMENOPTERA.is_dir() else [])


def run_on_image_folders(report, description: str):
    """The command line of a quality benchmark: `report(name, folder, cache, work)` on each image
    folder; --cache keeps the images and feature files between runs."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=None, help="Keep images and feature files here.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache = args.cache or work / "cache"
        for name, folder in image_folders(cache):
            report(name, folder, cache, work)
