"""A manifest (`--data manifest.csv` or `.parquet`, on this machine or at a URL): one row per image with
the columns `path` (a local path or URL; relative to the manifest's folder when it is not absolute),
`label` and optionally `split` - what a labelling tool or a dataframe exports."""

from __future__ import annotations

import csv
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from common.errors import DataError

from .discovery import MISSING_FILE, SPLIT_ALIASES, ImageList, _identity_or_missing, dataset_name, from_rows
from .remote import Remote, access_error, is_url, object_tag, public_url
from .sources import ImageSource

SUFFIXES = (".csv", ".parquet")
STAT_THREADS = 16  # objects asked for their identity at once (one HEAD request each)


def is_manifest(text: str) -> bool:
    """A .parquet, or a .csv whose header names the columns path and label (a local .csv of `path
    label` lines is a list file, as it always was)."""
    if not text.lower().endswith(SUFFIXES):
        return False
    if is_url(text) or text.lower().endswith(".parquet") or not Path(text).is_file():
        return True
    with open(text, encoding="utf-8-sig", errors="replace") as handle:
        header = [column.strip().lower() for column in handle.readline().split(",")]
    return {"path", "label"} <= set(header)


def discover_manifest(where: str, storage_options: tuple = ()) -> ImageList:
    remote = Remote.of(where, storage_options) if is_url(where) else None
    shown = public_url(where) if remote else str(Path(where).resolve())
    rows = _rows(where, remote, shown)
    folder = where.rpartition("/")[0] if remote else str(Path(where).resolve().parent)
    first_url = next((p for p, _, _ in rows if is_url(p)), None)
    if first_url and remote is None:  # a local manifest of objects: the store must answer, before any work
        remote = Remote.of(first_url, storage_options)
        remote.check(first_url)
    public = public_url(folder) if is_url(folder) else folder
    images = ImageList(
        public, dataset_name(Path(where).stem, shown), "manifest", [], source=shown, reader=ImageSource(folder, remote)
    )
    from_rows(rows, images)
    images.identities = _identities(images)
    return images


def _rows(where: str, remote: Remote | None, shown: str) -> list[tuple[str, str, str]]:
    """(path, label, split) of every row of the manifest."""
    rows = [
        (_path(r["path"], shown, n), _label(r["label"], shown, n), _split(r.get("split"), shown, n))
        for n, r in _read_table(where, remote, shown)
    ]
    if not rows:
        raise DataError(f"--data {shown}: no rows")
    seen = set()
    for number, (path, _, _) in enumerate(rows, 2):
        if path in seen:
            raise DataError(f"{shown}:{number}: {path} is listed twice (each image once)")
        seen.add(path)
    return rows


def _read_table(where: str, remote: Remote | None, shown: str) -> list[tuple[int, dict]]:
    """(row number, {column: value}) of every row of the manifest."""
    try:
        data = remote.read(where) if remote else Path(where).read_bytes()
    except FileNotFoundError:
        raise DataError(f"--data {shown}: no such manifest") from None
    except OSError as error:
        raise access_error(shown, error) from None
    records = _parquet(data, shown) if where.lower().endswith(".parquet") else _csv(data)
    if records and not {"path", "label"} <= set(records[0]):
        raise DataError(
            f"--data {shown}: a manifest needs the columns path and label (and may have split); it has "
            f"{', '.join(map(str, records[0])) or 'none'}"
        )
    return [(n, r) for n, r in enumerate(records, 2)]


def _csv(data: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8-sig", errors="replace"))))


def _parquet(data: bytes, shown: str) -> list[dict]:
    try:
        import pandas as pd

        return pd.read_parquet(io.BytesIO(data)).to_dict("records")
    except ImportError:
        raise DataError(
            f"--data {shown}: reading Parquet needs pandas and pyarrow: pip install pandas pyarrow"
        ) from None
    except Exception as error:  # noqa: BLE001 - pyarrow's errors for a file that is not Parquet
        raise DataError(f"--data {shown}: not a readable Parquet file ({error})") from None


def _path(value, shown: str, number: int) -> str:
    return _cell(value, shown, number, "path")


def _label(value, shown: str, number: int) -> str:
    return _cell(value, shown, number, "label")


def _cell(value, shown: str, number: int, column: str) -> str:
    text = "" if value is None or value != value else str(value).strip()  # None: a short row; NaN: Parquet's empty
    if not text:
        raise DataError(f"{shown}:{number}: no {column}")
    return text


def _split(value, shown: str, number: int) -> str:
    text = "" if value is None or value != value else str(value).strip().lower()  # NaN: no split
    if text and text not in SPLIT_ALIASES:
        raise DataError(f"{shown}:{number}: split {text!r}; valid: train, val, test (or empty)")
    return SPLIT_ALIASES.get(text, "")


def _identities(images: ImageList) -> np.ndarray:
    """Each row's identity: (size, mtime) of a file, (size, ETag) of an object (asked in threads)."""
    source = images.reader

    def identity(path: str) -> tuple[int, int]:
        where = source.locate(path)
        if not is_url(where):
            return _identity_or_missing(Path(where))
        try:
            info = source.remote.info(where)
            return int(info.get("size") or 0), object_tag(info)
        except Exception:  # noqa: BLE001 - not there or not readable: read (and explained) when extracted
            return MISSING_FILE

    with ThreadPoolExecutor(min(STAT_THREADS, os.cpu_count() * 4 or 4)) as pool:
        pairs = list(pool.map(identity, images.paths))
    return np.asarray(pairs, np.int64).reshape(-1, 2)
