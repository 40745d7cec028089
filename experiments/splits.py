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
    from sklearn.model_selection import train_test_split

    _, counts = np.unique(features.y[rows], return_counts=True)
    if len(rows) < 4 or counts.min() < 2:
        raise CnnfeatError(
            f"{features.path}: too few images to hold some out for scoring ({len(rows)} rows, "
            f"smallest class {counts.min()}); add images or a val/ split"
        )
    train, heldout = train_test_split(rows, test_size=HOLDOUT_FRACTION, stratify=features.y[rows], random_state=seed)
    note = f"no val/ or test/ rows: scoring on a stratified {HOLDOUT_FRACTION:.0%} hold-out of {of_what} (seed {seed})"
    return Split(np.sort(train), np.sort(heldout), "holdout", seed, note)
