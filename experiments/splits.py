"""Which rows train and which rows score: the store's own split, or a recorded stratified hold-out."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.errors import CnnfeatError

HOLDOUT_FRACTION = 0.2


@dataclass
class Split:
    train: np.ndarray  # row indices
    evaluate: np.ndarray  # row indices of the held-out rows
    name: str  # "val", "test", or "holdout"
    seed: int | None  # the seed of a hold-out split, None when the store's split was used
    note: str = ""  # said to the user when the split is not the obvious one

    def describe(self) -> dict:
        return {"evaluated_on": self.name, "train_rows": int(len(self.train)), "eval_rows": int(len(self.evaluate)),
                "holdout_seed": self.seed, "holdout_fraction": HOLDOUT_FRACTION if self.seed is not None else None}


def train_eval_split(features, seed: int = 0) -> Split:
    """Rows of split `train` train; `val` (else `test`) rows score. A store with no such split gets a
    stratified hold-out of HOLDOUT_FRACTION of its rows, the same for every head given the seed."""
    from sklearn.model_selection import train_test_split

    present = [features.class_names[i] for i in np.unique(features.y)]
    if len(present) < 2:
        raise CnnfeatError(f"{features.path}: one class only ({', '.join(present) or 'no images'}); "
                           f"a classifier needs at least two")
    splits = np.asarray(features.splits)
    train = np.flatnonzero(splits == "train")
    for name in ("val", "test"):
        evaluate = np.flatnonzero(splits == name)
        if len(train) and len(evaluate):
            return Split(train, evaluate, name, None)
    rows = np.arange(len(features.y)) if not len(train) else train
    _, counts = np.unique(features.y[rows], return_counts=True)
    if len(rows) < 4 or counts.min() < 2:
        raise CnnfeatError(f"{features.path}: too few images to hold some out for scoring ({len(rows)} rows, "
                           f"smallest class {counts.min()}); add images or a val/ split")
    train, evaluate = train_test_split(rows, test_size=HOLDOUT_FRACTION, stratify=features.y[rows], random_state=seed)
    note = (f"no val/ or test/ rows: scoring on a stratified {HOLDOUT_FRACTION:.0%} hold-out of "
            f"{'the train rows' if np.any(splits == 'train') else 'all rows'} (seed {seed})")
    return Split(np.sort(train), np.sort(evaluate), "holdout", seed, note)
