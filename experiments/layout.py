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


def audit_dir(out: str | os.PathLike, stem: str) -> Path:
    """OUT/audit/<feature file stem>/: one `audit` (issues.csv, audit.md, audit.json, audit.html)."""
    return Path(out, "audit", stem)


def explain_dir(out: str | os.PathLike = DEFAULT_OUT) -> Path:
    """OUT/explain/: `explain`'s pictures when no folder is given."""
    return Path(out, "explain")


def predictions_csv(model_path: str | os.PathLike, out: str | os.PathLike = DEFAULT_OUT) -> Path:
    """OUT/predictions/<model>.csv: `predict`'s CSV when no path is given, named by the model file.
    Names that say too little get their folder's: a fine-tune's model.joblib is named by its folder
    (hymenoptera-1a2b3c4d-resnet18.csv), a head `compare` kept by its report's
    (hymenoptera-1a2b3c4d-efficientnet_lite0-efficientnet_lite0-svm.csv), so two datasets' models
    never write the same CSV."""
    model_path = Path(model_path).absolute()
    folder = model_path.parent
    if model_path.stem == "model" and folder.name:
        name = folder.name
    elif folder.name == "models" and folder.parent.parent.name == "reports":
        name = f"{folder.parent.name}-{model_path.stem}"
    else:
        name = model_path.stem
    return Path(out, "predictions", f"{name}.csv")
