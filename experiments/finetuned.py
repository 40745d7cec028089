"""The fine-tuned network's held-out predictions, heldout.csv beside its saved model: written by
`finetune`, read back by `compare` as one more row of its table, once checked that it can be
ranked fairly beside the heads (the same data, the same held-out images, its epoch not chosen on
them). Both halves of the file's format live here."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from common.errors import CnnfeatError
from common.files import atomic_write

from .layout import finetune_dir
from .ranking import Row
from .splits import HeldoutImages

FINETUNE_ROW = "finetuned"  # the row's head name, and the saved model's
HELDOUT_CSV = "heldout.csv"


def write_heldout_csv(path: Path, paths: list, labels: list, proba: np.ndarray, class_names: list) -> Path:
    """One line per held-out image: path, true and predicted class, a probability per class. A file
    name that is not UTF-8 goes in as its own bytes (surrogateescape), and comes back the same."""
    names = np.asarray(class_names, dtype=object)
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "true", "predicted", *(f"p_{c}" for c in class_names)])
        for p, t, row in zip(paths, labels, proba):
            writer.writerow([p, names[t], names[row.argmax()], *(f"{v:.6f}" for v in row)])
    return path


def finetuned_row(out, data, label: str, heldout: HeldoutImages, log) -> Row | None:
    """The fine-tuned network of this feature file's dataset and backbone as a compare row; None when
    there is none (or it was fine-tuned from other weights: it belongs beside that file). One that
    cannot be ranked fairly beside the heads is a clear error."""
    folder = finetune_dir(out, data.dataset, data.backbone)
    info = _bundle_info(folder, data)
    if info is None:
        return None
    lines = _read_heldout_csv(folder / HELDOUT_CSV)
    _check_same_images(folder / HELDOUT_CSV, lines, heldout)
    wanted = set(heldout.paths)
    lines = [r for r in lines if r["path"] in wanted]  # fewer under compare --exclude-leaks
    classes = info["class_names"]
    log(f"{data.backbone} {FINETUNE_ROW}: from {folder}")
    return Row(
        label,
        FINETUNE_ROW,
        info,
        [r["path"] for r in lines],
        [r["true"] for r in lines],
        [r["predicted"] for r in lines],
        _probabilities(lines, classes),
        classes,
        model_path=str(folder / "model.joblib") if (folder / "model.joblib").is_file() else None,
    )


def _bundle_info(folder: Path, data) -> dict | None:
    """The fine-tune's saved record, when there is one for this feature file's weights and data."""
    if not (folder / "model.json").is_file() or not (folder / HELDOUT_CSV).is_file():
        return None
    info = json.loads((folder / "model.json").read_text())
    if info.get("start_weights", data.config["weights"]) != data.config["weights"]:
        return None  # fine-tuned from other weights than this file's: it belongs beside that one
    if info.get("data_root") != data.data_root:
        raise CnnfeatError(f"{folder} was fine-tuned on {info.get('data_root')}, not {data.data_root}")
    if not info.get("selection"):
        raise CnnfeatError(
            f"{folder} chose its epoch on the images it is scored on (an older cnnfeat); run `cnnfeat finetune` again"
        )
    return info


def _read_heldout_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
        return list(csv.DictReader(handle))


def _check_same_images(path: Path, lines: list[dict], heldout: HeldoutImages) -> None:
    """The file scores every one of compare's held-out images, each once, with the feature file's
    classes (and no more than those, but for the ones --exclude-leaks left out of compare's)."""
    scored, wanted = {r["path"] for r in lines}, set(heldout.paths)
    if not wanted <= scored or len(scored - wanted) > heldout.excluded or len(lines) != len(scored):
        raise CnnfeatError(
            f"{path} scores other images than compare ({len(wanted - scored)} of compare's "
            f"missing, {len(scored - wanted)} others); run `cnnfeat compare --finetune`, which fine-tunes on "
            "compare's own held-out images"
        )
    expected = dict(zip(heldout.paths, heldout.truth))
    if any(expected[r["path"]] != r["true"] for r in lines if r["path"] in expected):
        raise CnnfeatError(f"{path} gives other true classes than the feature file")


def _probabilities(lines: list[dict], classes: list) -> np.ndarray:
    proba = np.asarray([[float(r[f"p_{c}"]) for c in classes] for r in lines]).reshape(len(lines), len(classes))
    return proba / proba.sum(axis=1, keepdims=True).clip(min=1e-12)  # undo the CSV's rounding
