"""Which rows train and which rows score: the store's own split, or a recorded stratified hold-out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from common.errors import CnnfeatError

HOLDOUT_FRACTION = 0.2
SCORED_SPLITS = ("val", "test")  # the store's split that scores, the first present


@dataclass
class Split:
    train: np.ndarray  # row indices of the training rows
    heldout: np.ndarray  # row indices of the held-out rows, which score
    name: str  # "val", "test", or "holdout"
    seed: int | None  # the seed of a hold-out split, None when the store's split was used
    note: str = ""  # said to the user when the split is not the obvious one

    def describe(self) -> dict:
        return {
            "evaluated_on": self.name,
            "train_rows": int(len(self.train)),
            "eval_rows": int(len(self.heldout)),
            "holdout_seed": self.seed,
            "holdout_fraction": HOLDOUT_FRACTION if self.seed is not None else None,
        }


class HeldoutImages(NamedTuple):
    paths: list  # the held-out rows' image paths (relative to the data root), in row order
    truth: list  # their true class names
    excluded: int = 0  # held-out images of the store left out (compare --exclude-leaks)


def heldout_images(features, split: Split, excluded: int = 0) -> HeldoutImages:
    return HeldoutImages(
        [str(p) for p in features.paths[split.heldout]],
        list(np.asarray(features.class_names, dtype=object)[features.y[split.heldout]]),
        excluded,
    )


def train_eval_split(features, seed: int = 0) -> Split:
    """Rows of split `train` train; `val` (else `test`) rows score. A store with no such split gets a
    stratified hold-out of HOLDOUT_FRACTION of its rows, the same for every head given the seed."""
    present = [features.class_names[i] for i in np.unique(features.y)]
    if len(present) < 2:
        raise CnnfeatError(
            f"{features.path}: one class only ({', '.join(present) or 'no images'}); a classifier needs at least two"
        )
    splits = np.asarray(features.splits)
    train = np.flatnonzero(splits == "train")
    for name in SCORED_SPLITS:
        heldout = np.flatnonzero(splits == name)
        if len(train) and len(heldout):
            return Split(train, heldout, name, None)
    return _holdout(
        features,
        train if len(train) else np.arange(len(features.y)),
        seed,
        "the train rows" if len(train) else "all rows",
    )


def _holdout(features, rows: np.ndarray, seed: int, of_what: str) -> Split:
    """A stratified HOLDOUT_FRACTION of `rows` held out, the rest training."""
    train, heldout = holdout_rows(features.paths[rows], features.y[rows], seed, str(features.path))
    note = f"no val/ or test/ rows: scoring on a stratified {HOLDOUT_FRACTION:.0%} hold-out of {of_what} (seed {seed})"
    return Split(np.sort(rows[train]), np.sort(rows[heldout]), "holdout", seed, note)


def holdout_rows(paths, labels, seed: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) positions of a seeded, stratified HOLDOUT_FRACTION hold-out of these
    images. Drawn over the images sorted by path, so it depends on which images there are and not on
    their order: `compare` (a store's rows) and `finetune` (a folder's listing) hold out the same ones."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    _, counts = np.unique(labels, return_counts=True)
    if len(labels) < 4 or counts.min() < 2:
        raise CnnfeatError(
            f"{source}: too few images to hold some out for scoring ({len(labels)} images, smallest class "
            f"{counts.min() if len(counts) else 0}); add images or a val/ split"
        )
    by_path = np.argsort(np.asarray(paths, dtype=str), kind="stable")
    train, heldout = train_test_split(by_path, test_size=HOLDOUT_FRACTION, stratify=labels[by_path], random_state=seed)
    return np.sort(train), np.sort(heldout)
