"""The real image folders the quality benchmarks run on: scikit-learn's digits written as images
(into the cache), and ../shared/datasets/hymenoptera when it is there."""
from __future__ import annotations

from pathlib import Path

HYMENOPTERA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hymenoptera"


def image_folders(cache: Path) -> list[tuple[str, Path]]:
    """[(name, folder)]: digits (written under `cache` on first use), then hymenoptera if present."""
    from featurize.demo_data import write_digits

    digits = Path(cache) / "digits"
    if not digits.exists():
        write_digits(digits)
    return [("digits", digits)] + ([("hymenoptera", HYMENOPTERA)] if HYMENOPTERA.is_dir() else [])
