"""Where the commands write under the output root (`--out`; artifacts/README.md draws the tree).

Every path an experiment writes by default is made here, so the layout is written down once. It
imports nothing heavy: the CLI shows these defaults in its --help."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_OUT = "artifacts"


def features_dir(out: str | os.PathLike) -> Path:
    """OUT/features/: the feature stores `extract` writes (featurize names the files)."""
    return Path(out, "features")


def models_dir(out: str | os.PathLike) -> Path:
    """OUT/models/: the heads `fit` saves."""
    return Path(out, "models")


def report_dir(out: str | os.PathLike, name: str) -> Path:
    """OUT/reports/NAME/: one `compare` report, its predictions, pictures and fitted heads."""
    return Path(out, "reports", name)


def finetune_dir(out: str | os.PathLike, dataset: str, backbone: str) -> Path:
    """OUT/finetune/DATASET-BACKBONE/: one fine-tuned network (checkpoint, saved model, heldout.csv)."""
    return Path(out, "finetune", f"{dataset}-{backbone}")


def explain_dir(out: str | os.PathLike = DEFAULT_OUT) -> Path:
    """OUT/explain/: `explain`'s pictures when no folder is given."""
    return Path(out, "explain")


def predictions_csv(model_path: str | os.PathLike, out: str | os.PathLike = DEFAULT_OUT) -> Path:
    """OUT/predictions/<model>.csv: `predict`'s CSV when no path is given, named by the model file
    (a fine-tune's generic model.joblib by its folder, e.g. hymenoptera-1a2b3c4d-resnet18.csv)."""
    model_path = Path(model_path)
    name = model_path.parent.name if model_path.stem == "model" and model_path.parent.name else model_path.stem
    return Path(out, "predictions", f"{name}.csv")
