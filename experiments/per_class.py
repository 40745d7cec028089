"""Where a compare row fails, class by class: precision, recall, F1 and support per class, the pairs
of classes the rows confuse most, and the held-out images a row got wrong (with thumbnails for the
HTML report)."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np

MISTAKES_PER_CLASS = 3  # wrong held-out images shown per true class
CONFUSED_PAIRS = 5  # pairs of classes listed
THUMBNAIL_PIXELS = 112  # the longer side of a thumbnail
THUMBNAIL_SOURCE_PIXELS = 50_000_000  # larger images (after a JPEG's reduced decoding) get no thumbnail


def class_scores(row) -> list[dict]:
    """Per class (the row's classes that are among its true or predicted labels, in its order):
    precision, recall, F1 and support on its held-out images, as scikit-learn computes them."""
    from sklearn.metrics import precision_recall_fscore_support

    seen = set(row.truth) | set(row.predicted)
    labels = [c for c in row.classes if c in seen] + sorted(seen - set(row.classes), key=str)
    precision, recall, f1, support = precision_recall_fscore_support(
        row.truth, row.predicted, labels=labels, zero_division=0
    )
    return [
        {"class": c, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for c, p, r, f, s in zip(labels, precision, recall, f1, support)
    ]


def confusion(truth, predicted, labels) -> tuple[np.ndarray, np.ndarray]:
    """(counts, shares): the confusion matrix (rows: true class, columns: predicted, in `labels`'
    order), and each row divided by its true class's count (a class with none: a row of zeros)."""
    from sklearn.metrics import confusion_matrix

    counts = confusion_matrix(truth, predicted, labels=labels)
    return counts, counts / counts.sum(axis=1, keepdims=True).clip(min=1)


class ConfusedPair(NamedTuple):
    first: str
    second: str
    first_as_second: int  # mistakes summed over the rows
    second_as_first: int
    rows: int  # rows that made at least one of them

    @property
    def total(self) -> int:
        return self.first_as_second + self.second_as_first


def confused_pairs(rows, top: int = CONFUSED_PAIRS) -> list[ConfusedPair]:
    """The `top` pairs of classes most often mistaken for each other, either way, summed over the rows."""
    mistakes, rows_of = Counter(), Counter()
    for row in rows:
        made = Counter((t, p) for t, p in zip(row.truth, row.predicted) if t != p)
        mistakes.update(made)
        rows_of.update({frozenset(pair) for pair in made})
    pairs = {frozenset(pair) for pair in mistakes}
    listed = []
    for pair in pairs:
        first, second = sorted(pair, key=str)
        listed.append(ConfusedPair(first, second, mistakes[(first, second)], mistakes[(second, first)], rows_of[pair]))
    return sorted(listed, key=lambda p: (-p.total, str(p.first), str(p.second)))[:top]


class Mistake(NamedTuple):
    path: str  # as the feature file names it (relative to the data root)
    true: str
    predicted: str
    probability: float | None  # the row's probability of its (wrong) prediction


def mistakes(row, per_class: int = MISTAKES_PER_CLASS) -> dict[str, list[Mistake]]:
    """{true class: up to `per_class` held-out images the row got wrong, the most confident first}."""
    wrong = {}
    for i, (path, true, predicted) in enumerate(zip(row.paths, row.truth, row.predicted)):
        if true != predicted:
            wrong.setdefault(true, []).append(Mistake(path, true, predicted, _probability(row, i, predicted)))
    return {
        true: sorted(found, key=lambda m: -(m.probability or 0.0))[:per_class]
        for true, found in sorted(wrong.items(), key=lambda item: str(item[0]))
    }


def _probability(row, i: int, label) -> float | None:
    if row.proba is None or label not in row.classes:
        return None
    return float(np.asarray(row.proba)[i][row.classes.index(label)])


def thumbnail(path: Path, pixels: int = THUMBNAIL_PIXELS) -> bytes | None:
    """A small JPEG of the image (upright, RGB), or None where it cannot be read now (moved, damaged)
    or would decode to more than THUMBNAIL_SOURCE_PIXELS (a JPEG decodes reduced first, so only a
    huge image of another format is left out: the report is not worth seconds and gigabytes)."""
    import warnings

    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # bounded here instead
            with Image.open(path) as image:
                image.draft("RGB", (pixels, pixels))  # a JPEG decodes at a fraction of its size
                if image.width * image.height > THUMBNAIL_SOURCE_PIXELS:
                    return None
                small = ImageOps.exif_transpose(image).convert("RGB")
        small.thumbnail((pixels, pixels))
        buffer = io.BytesIO()
        small.save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
