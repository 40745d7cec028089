"""Several feature files of the same images joined into one: each image's vectors side by side.

The vectors are joined as they are stored; the L2 normalisation of each part (so a backbone with
larger activations does not drown the others) is the fitted model's first step
(`classifiers.heads.fused_head`), so a saved fused model takes the same raw joined vectors that
it makes itself from images.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from common.errors import StoreError

from .fingerprints import fingerprint
from .store import Features

FuseMode = Literal["concat", "none"]  # compare --fuse
FUSE_MODES = get_args(FuseMode)
SHOWN = 5  # missing images named in a note; the rest are counted


def fuse_features(parts: list[Features], log=print) -> tuple[Features, list[str]]:
    """One Features whose rows are the images present in every part (in the first part's order),
    each row the parts' vectors joined. Refuses parts of another dataset or with other labels;
    names the images left out. Returns (fused, notes)."""
    first = parts[0]
    for other in parts[1:]:
        _check_same_images(first, other)
    common, rows = _common_rows(parts)
    for part, part_rows in zip(parts[1:], rows[1:]):
        if not np.array_equal(part.y[part_rows], first.y[rows[0]]):
            raise StoreError(f"{part.path} labels some images differently from {first.path}: not the same dataset")
    notes = _missing_notes(parts, set(common))
    for note in notes:
        log(note)
    fused = replace(
        first,
        path=Path(_joined(parts)),
        config=_fused_config(parts),
        parts=tuple(parts),
        fingerprint=fingerprint({"fused": [part.fingerprint for part in parts]}),
        X=np.hstack([np.asarray(part.X[part_rows], dtype=np.float32) for part, part_rows in zip(parts, rows)]),
        y=first.y[rows[0]],
        paths=first.paths[rows[0]],
        splits=first.splits[rows[0]],
        skipped=sorted({tuple(s) for part in parts for s in part.skipped}),
        weights_source="",
    )
    return fused, notes


def _common_rows(parts: list[Features]) -> tuple[list[str], list[np.ndarray]]:
    """The paths in every part (in the first part's order), and each part's rows of them."""
    row_of = [{path: row for row, path in enumerate(part.paths.tolist())} for part in parts]
    common = [path for path in parts[0].paths.tolist() if all(path in rows for rows in row_of[1:])]
    if not common:
        raise StoreError(f"{_joined(parts)}: no image is in every one of these feature files")
    return common, [np.asarray([rows[path] for path in common]) for rows in row_of]


def _fused_config(parts: list[Features]) -> dict:
    """The fused features' config: the joined backbone name and width, and each part's config."""
    return {
        "backbone": "+".join(part.backbone for part in parts),
        "feature_dim": sum(int(part.X.shape[1]) for part in parts),
        "fused": [
            {"config": part.config, "fingerprint": part.fingerprint, "weights_source": part.weights_source}
            for part in parts
        ],
    }


def part_widths(config: dict) -> list[int]:
    """The width of each part of a fused feature config, in order."""
    return [int(part["config"]["feature_dim"]) for part in config["fused"]]


def _check_same_images(first: Features, other: Features):
    if other.dataset != first.dataset:
        raise StoreError(
            f"cannot fuse feature files of different datasets: {first.path} ({first.dataset}) and "
            f"{other.path} ({other.dataset})"
        )
    if list(other.class_names) != list(first.class_names):
        raise StoreError(
            f"cannot fuse {first.path} and {other.path}: their class names differ "
            f"({json.dumps(first.class_names)} vs {json.dumps(other.class_names)})"
        )


def _missing_notes(parts: list[Features], common: set) -> list[str]:
    notes = []
    for part in parts:
        missing = [path for path in part.paths.tolist() if path not in common]
        if missing:
            shown = ", ".join(missing[:SHOWN]) + (f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else "")
            notes.append(
                f"fused features: {len(missing)} image(s) of {part.path.name} are not in every other "
                f"feature file and are left out of the fused rows: {shown}"
            )
    return notes


def _joined(parts: list[Features]) -> str:
    return " + ".join(str(part.path) for part in parts)
