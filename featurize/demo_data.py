"""A dataset that ships with the dependencies: scikit-learn's handwritten digits as image folders."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from common.files import ensure_writable, write_bytes_atomic


def write_digits(dest: str | Path, size: int = 64) -> tuple[Path, int]:
    """Write the 1,797 8x8 digits, upscaled to `size` pixels, as dest/train|val/<digit>/NNNN.png
    (every fifth image of each class in val). Existing files are left as they are."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    dest = ensure_writable(dest, "demo-data")
    seen = {}
    for number, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        seen[label] = seen.get(label, 0) + 1
        split = "val" if seen[label] % 5 == 0 else "train"
        target = dest / split / str(label) / f"{number:04d}.png"
        if target.exists():
            continue
        grey = (255 - pixels * (255 / 16)).astype(np.uint8)  # dark ink on white, like a scan
        png = io.BytesIO()
        Image.fromarray(grey, "L").resize((size, size), Image.NEAREST).save(png, format="PNG")
        write_bytes_atomic(target, png.getvalue())  # never half an image, which a re-run would keep
    return dest, len(digits.target)
