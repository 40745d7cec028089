"""The checks of `audit` that need only the vectors: copies (leaks into the held-out images,
duplicates inside a split) and outliers, from cosine nearest neighbours (experiments.neighbours).
`compare` runs the same leak rule (`leaked_rows`)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from common.hashing import file_sha256

from .choices import AUDIT_NEAR
from .neighbours import Neighbours, nearest

EXACT = 0.9999  # at or above: compare the files' bytes (sha256): an exact copy scores 1
NOT_EXACT = 0.9999  # the most any other copy scores, so the CSV's 4 decimals still tell them apart
NEIGHBOURS = 10  # per image: its duplicates within a split, and the mean distance that scores outliers
OUTLIER_Z = 3.5  # robust z-score (median and MAD of the distances) past which an image is an outlier
# More than this share of the held-out images "leaked", or more than ALIKE of the training images with
# a "copy" in train: the threshold does not separate copies from neighbours in these vectors (random
# weights; small drawings, where on digits 32% of distinct images are at 0.80 of another); said, not
# applied. On hymenoptera with 12 copy pairs planted inside train, 8% of training images are alike.
UNTELLABLE = 0.5
ALIKE = 0.2


class Finding(NamedTuple):
    row: int
    issue: str  # leak, duplicate, label or outlier
    score: float  # in [0, 1], higher = more suspicious
    suggested: int | None = None  # label: the likely class
    other: int | None = None  # leak, duplicate: the other image's row


class NearestTrain(NamedTuple):
    found: Neighbours  # each held-out row's most similar training row
    alike: float  # the share of training rows whose most similar other training row is at `near` or above


def nearest_train(X, split, near: float) -> NearestTrain:
    """Each held-out row's most similar training row, and how alike the training rows are among
    themselves (one index of the training rows answers both)."""
    held = len(split.heldout)
    found = nearest(X, split.train, np.concatenate([split.heldout, split.train]), 1)
    alike = float(np.mean(found.similarity[held:, 0] >= near)) if len(split.train) > 1 else 0.0
    return NearestTrain(Neighbours(found.similarity[:held], found.rows[:held]), alike)


def untellable(leaked: int, heldout: int, alike: float) -> bool:
    """Whether the threshold cannot tell copies from neighbours in these vectors (UNTELLABLE, ALIKE)."""
    return leaked > heldout * UNTELLABLE or alike > ALIKE


def leaked_rows(data, split, near: float = AUDIT_NEAR) -> tuple[np.ndarray, float]:
    """The held-out rows with a near-copy in train (their most similar training image at `near` or
    above), and the share of training rows alike (NearestTrain.alike)."""
    if not len(split.heldout) or not len(split.train):
        return np.zeros(0, dtype=np.int64), 0.0
    found, alike = nearest_train(data.X, split, near)
    return split.heldout[found.similarity[:, 0] >= near], alike


def leaks(data, split, near: float) -> tuple[list[Finding], float]:
    """Each held-out image whose most similar training image is at `near` or above (`other`: it),
    and the share of training rows alike (NearestTrain.alike)."""
    if not len(split.heldout) or not len(split.train):
        return [], 0.0
    (found, alike), exact = nearest_train(data.X, split, near), ExactCopies(data)
    findings = [
        Finding(int(row), "leak", exact.score(row, other, score), other=int(other))
        for row, score, other in zip(split.heldout, found.similarity[:, 0], found.rows[:, 0])
        if other >= 0 and score >= near
    ]
    return findings, alike


def duplicates(data, found: Neighbours, near: float) -> list[Finding]:
    """Pairs of images at `near` or above in one split, or in two held-out splits (val and test),
    each pair once (found from either side); a held-out image and a training one are a leak."""
    splits = np.asarray(data.splits)
    held = splits != "train"
    pairs = {}
    for row, (scores, others) in enumerate(zip(found.similarity, found.rows)):
        for score, other in zip(scores, others):
            if other >= 0 and score >= near and (splits[other] == splits[row] or held[other] & held[row]):
                pairs[min(row, other), max(row, other)] = float(score)
    exact = ExactCopies(data)
    return [Finding(a, "duplicate", exact.score(a, b, score), other=b) for (a, b), score in pairs.items()]


def outliers(found: Neighbours, z: float = OUTLIER_Z) -> list[Finding]:
    """Images far from every other: the mean cosine distance to their nearest NEIGHBOURS, a robust
    z-score above `z` (Iglewicz and Hoaglin's 3.5 by default); scored by the distance's rank."""
    if found.rows.shape[0] <= NEIGHBOURS:
        return []
    distance = 1 - found.similarity.mean(axis=1)
    median = np.median(distance)
    mad = np.median(np.abs(distance - median)) or 1e-12
    robust_z = 0.6745 * (distance - median) / mad
    rank = distance.argsort().argsort() / max(1, len(distance) - 1)
    return [Finding(int(row), "outlier", float(rank[row])) for row in np.flatnonzero(robust_z > z)]


class ExactCopies:
    """Scores of a copy: its similarity, or 1 where the two files have the same bytes (sha256, each
    file read once; a file gone since extraction is never called exact)."""

    def __init__(self, data):
        self.data, self.digests = data, {}

    def score(self, row: int, other: int, similarity: float) -> float:
        if similarity >= EXACT:
            mine, theirs = self._sha256(int(row)), self._sha256(int(other))
            if mine is not None and mine == theirs:
                return 1.0
        return float(min(similarity, NOT_EXACT))

    def _sha256(self, row: int) -> str | None:
        if row not in self.digests:
            try:
                self.digests[row] = file_sha256(Path(self.data.data_root, str(self.data.paths[row])))
            except OSError:
                self.digests[row] = None
        return self.digests[row]
