"""`cnnfeat predict`: one CSV row per image (class, probability, one column per class, or the reason),
written to OUT/predictions/<model>.csv unless given a path."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from classifiers import load_model
from common.errors import CnnfeatError
from common.files import atomic_write, ensure_writable
from common.names import printable
from featurize import IMAGE_EXTENSIONS, find_images, is_url, list_objects, source_for_paths

from .layout import predictions_csv

FOLDER_CSV = "predictions.csv"  # the file's name when --out is a folder


def expand_inputs(inputs, storage_options: tuple = ()) -> list[str]:
    """Files as given; folders -> their images, recursively; a URL of an object store's folder -> the
    URLs of its images; a missing path is kept (its row says so)."""
    paths = []
    for item in inputs:
        if is_url(item):  # one object as given (its row says why when it cannot be read), a folder listed
            paths.extend([str(item)] if _is_image_name(str(item)) else list_objects(str(item), storage_options))
            continue
        item = Path(item)
        paths.extend(find_images(item)) if item.is_dir() else paths.append(str(item))
    if not paths:
        raise CnnfeatError(f"no images in {', '.join(map(str, inputs))}")
    return paths


def _is_image_name(url: str) -> bool:
    return url.rstrip("/").lower().endswith(IMAGE_EXTENSIONS) and not url.endswith("/")


def csv_path(out_csv, model_path) -> Path:
    """Where the CSV goes: `out_csv`; in it as predictions.csv when it is a folder (made if need be: a
    trailing slash says so); OUT/predictions/<model>.csv of the default output root when None."""
    if out_csv is None:
        return predictions_csv(model_path)
    if Path(out_csv).is_dir() or str(out_csv).endswith(("/", os.sep)):
        return Path(out_csv) / FOLDER_CSV
    return Path(out_csv)


def predict_to_csv(
    model_path, inputs, out_csv=None, device="auto", batch_size=None, workers=None, progress=True, storage_options=()
) -> tuple[Path, int, int]:
    """Predict every image, writing the CSV batch by batch in input order (memory of one batch,
    however many images); returns (csv path, rows written, unreadable images). Names that are not
    UTF-8 are written readably (\\xNN escapes): the CSV is UTF-8 text for any program to read. `inputs`
    may be URLs of an object store (read with `storage_options`)."""
    out_csv = csv_path(out_csv, model_path)
    ensure_writable(out_csv.parent)
    model = load_model(model_path)
    paths = expand_inputs(inputs, storage_options)
    reader = source_for_paths(paths, storage_options)
    classes = [str(c) for c in model.classes_]
    failed = []
    with atomic_write(out_csv) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "predicted", "probability", *(f"p_{printable(c)}" for c in classes), "error"])
        for good, vectors, bad in model.iter_embedded(paths, device, batch_size, workers, progress, reader):
            writer.writerows(_batch_lines(model, paths, classes, good, vectors, bad))
            failed += bad
        if len(failed) == len(paths):  # a mistyped path, most likely: keep the CSV a run before wrote
            position, reason = failed[0]
            raise CnnfeatError(
                f"none of the {len(paths)} images could be read ({printable(paths[position])}: {printable(reason)}); "
                f"{printable(out_csv)} left as it was"
            )
    return out_csv, len(paths), len(failed)


def _batch_lines(model, paths: list[str], classes: list[str], good, vectors, bad) -> list[list]:
    """The CSV lines of one batch, in input order: a prediction per readable image, the reason for
    each other one."""
    lines = {j: [printable(paths[j]), "", "", *([""] * len(classes)), printable(reason)] for j, reason in bad}
    if len(good):
        for j, predicted, probabilities in zip(good, model.predict(vectors), model.predict_proba(vectors)):
            column = classes.index(str(predicted))
            lines[j] = [
                printable(paths[j]),
                printable(predicted),
                f"{probabilities[column]:.6f}",
                *(f"{p:.6f}" for p in probabilities),
                "",
            ]
    return [lines[j] for j in sorted(lines)]
