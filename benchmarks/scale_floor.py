"""How far the heads' standardiser may divide: each feature's scale floored at a fraction of the
median feature's (classifiers.scaling.ChunkedStandardScaler's `smallest_scale`), measured per head.

A pooled CNN channel that fires on a single training image has a spread near 0; unfloored, that
channel lit in a new image is a z-score of 10^4 and decides a linear head's answer at p = 1.0. For
each feature file given (train/val splits), each head is grid-searched on train with its default
grid (3-fold CV) under each floor and scored on val: accuracy, log-loss, and the largest |z| of a
val row. Run: python benchmarks/scale_floor.py FILE.h5 [FILE.h5 ...] [--heads logreg,svm]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from sklearn.metrics import accuracy_score, log_loss  # noqa: E402
from sklearn.model_selection import GridSearchCV, StratifiedKFold  # noqa: E402

from classifiers import get_head, resolve_grid  # noqa: E402
from featurize import load_features  # noqa: E402

FLOORS = (0.0, 0.01, 0.1, 1.0)


def measure(path: str, heads: list[str]) -> list[tuple]:
    data = load_features(path)
    train, val = data.splits == "train", data.splits == "val"
    X, y, Xv, yv = data.X[train], data.y[train], data.X[val], data.y[val]
    rows = []
    for head in heads:
        spec = get_head(head)
        if "smallest_scale" not in spec.build(0).named_steps["scale"].get_params():
            print(f"{head}: not standardised (nothing to floor)")
            continue
        for floor in FLOORS:
            pipeline = spec.build(0).set_params(scale__smallest_scale=floor)
            search = GridSearchCV(pipeline, resolve_grid(spec), cv=StratifiedKFold(3, shuffle=True, random_state=0))
            search.fit(X, y)
            best = search.best_estimator_
            z = np.abs(best.named_steps["scale"].transform(Xv)).max()
            proba = best.predict_proba(Xv) if hasattr(best, "predict_proba") else None
            loss = log_loss(yv, proba, labels=best.classes_) if proba is not None else float("nan")
            rows.append((Path(path).stem, head, floor, accuracy_score(yv, best.predict(Xv)), loss, z))
            print(f"{rows[-1][0]:45s} {head:7s} floor {floor:<5g} accuracy {rows[-1][3]:.4f} "
                  f"log-loss {loss:.4f} max|z| {z:,.0f}", flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--heads", default="logreg,svm")
    args = parser.parse_args()
    for path in args.files:
        measure(path, args.heads.split(","))


if __name__ == "__main__":
    main()
