"""The HDF5 feature store: one file per (dataset, backbone + weights, preprocessing).

A complete store is only ever written whole, to a temporary name, then renamed into place, with a
`complete` attribute set last; rows extracted by a run that has not finished go to an append-only
`<store>.partial` file beside it, which the next run picks up. So a killed run never leaves a file
that looks complete, and loses at most the batch it was writing.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from .errors import StoreError

FORMAT_VERSION = 1


def _str_dtype():
    import h5py
    return h5py.string_dtype("utf-8")


def fingerprint(config: dict) -> str:
    """Hash of everything that changes the numbers (backbone, weights, preprocessing, pooling,
    format version); two stores with the same fingerprint hold comparable vectors."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


FEATURE_PACKAGES = ("cnnfeat", "torch", "torchvision", "numpy", "h5py", "pillow", "efficientnet-lite-pytorch")


def library_versions(packages=FEATURE_PACKAGES) -> dict:
    """Installed version of each package (None where it is not installed)."""
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


@dataclass
class Rows:
    """Rows of a store, in order: one per image, good (a vector) or skipped (a reason)."""

    paths: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)
    vectors: list = field(default_factory=list)  # np.ndarray (D,), or None where skipped
    reasons: list[str] = field(default_factory=list)  # "" where good

    def append(self, path, identity, vector, reason=""):
        self.paths.append(path)
        self.sizes.append(int(identity[0]))
        self.mtimes.append(int(identity[1]))
        self.vectors.append(vector)
        self.reasons.append(reason)

    def by_path(self) -> dict:
        """path -> ((size, mtime), vector, reason); later rows win."""
        return {p: ((s, m), v, r) for p, s, m, v, r in
                zip(self.paths, self.sizes, self.mtimes, self.vectors, self.reasons)}


@dataclass
class Features:
    """What other code reads from a complete store, as numpy arrays."""

    path: Path
    X: np.ndarray  # (N, D) float32
    y: np.ndarray  # (N,) int64, indices into class_names
    class_names: list[str]
    paths: np.ndarray  # (N,) str, relative to data_root
    splits: np.ndarray  # (N,) str: "train", "val", "test", or "" where the data had no split
    fingerprint: str
    config: dict
    versions: dict
    data_root: str
    dataset: str
    skipped: list[tuple[str, str]]  # (path, reason) of images that could not be read
    weights_source: str = ""  # how to rebuild the backbone: "" (its own weights), "random", or a checkpoint path

    @property
    def backbone(self) -> str:
        return self.config["backbone"]


def _open(path: Path, mode: str = "r"):
    import h5py
    try:
        return h5py.File(path, mode)
    except OSError as error:
        raise StoreError(f"{path}: not a readable HDF5 feature file ({error})") from None


def load_features(path: str | os.PathLike) -> Features:
    """Read a complete feature store; refuse a missing, foreign or unfinished one."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such feature file (run `cnnfeat extract` first)")
    with _open(path) as h5:
        attrs = h5.attrs
        if "fingerprint" not in attrs or "features" not in h5:
            raise StoreError(f"{path}: not a cnnfeat feature file")
        if not attrs.get("complete", False):
            raise StoreError(f"{path}: incomplete feature file (its extraction did not finish); "
                             f"run `cnnfeat extract` again")
        return Features(
            path=path,
            X=h5["features"][:].astype(np.float32, copy=False),
            y=h5["labels"][:].astype(np.int64),
            class_names=json.loads(attrs["class_names"]),
            paths=h5["paths"].asstr()[:],
            splits=h5["splits"].asstr()[:],
            fingerprint=str(attrs["fingerprint"]),
            config=json.loads(attrs["config"]),
            versions=json.loads(attrs["versions"]),
            data_root=str(attrs["data_root"]),
            dataset=str(attrs["dataset"]),
            skipped=_skipped_of(h5),
            weights_source=str(attrs.get("weights_source", "")),
        )


def _skipped_of(h5) -> list[tuple[str, str]]:
    return list(zip(h5["skipped/paths"].asstr()[:], h5["skipped/reasons"].asstr()[:]))


def read_skipped(path: Path) -> list[tuple[str, str]]:
    """(path, reason) of the images a store could not read, without reading its vectors."""
    with _open(path) as h5:
        return _skipped_of(h5)


def read_rows(path: Path, expected_fingerprint: str) -> Rows | None:
    """All rows of a complete store with this fingerprint, or None (absent, other settings, broken)."""
    try:
        with _open(path) as h5:
            if not h5.attrs.get("complete", False) or h5.attrs.get("fingerprint") != expected_fingerprint:
                return None
            return _rows_of(h5["features"][:], h5["paths"].asstr()[:], h5["file_size"][:],
                            h5["file_mtime_ns"][:], h5["skipped"])
    except (StoreError, KeyError, OSError):
        return None


def _rows_of(vectors, paths, sizes, mtimes, skipped) -> Rows:
    rows = Rows()
    for p, s, m, v in zip(paths, sizes, mtimes, vectors):
        rows.append(p, (s, m), v)
    for p, s, m, r in zip(skipped["paths"].asstr()[:], skipped["file_size"][:],
                          skipped["file_mtime_ns"][:], skipped["reasons"].asstr()[:]):
        rows.append(p, (s, m), None, r)
    return rows


def store_matches(path: Path, fp: str, images, identities) -> bool:
    """True when the complete store at `path` already says exactly what a rebuild would write.

    Reads paths, labels, splits and file identities only, never the vectors: the "up to date"
    answer stays fast however large the store."""
    try:
        with _open(path) as h5:
            if not h5.attrs.get("complete", False) or h5.attrs.get("fingerprint") != fp:
                return False
            if json.loads(h5.attrs["class_names"]) != images.class_names:
                return False
            stored = {}  # path -> (label, split, (size, mtime)), good and skipped rows alike
            for group in (h5, h5["skipped"]):
                stored.update(zip(group["paths"].asstr()[:],
                                  zip(group["labels"][:].tolist(), group["splits"].asstr()[:],
                                      zip(group["file_size"][:].tolist(), group["file_mtime_ns"][:].tolist()))))
    except (StoreError, KeyError, OSError):
        return False
    return len(stored) == len(images.paths) and all(
        stored.get(p) == (label, split, identity)
        for p, label, split, identity in zip(images.paths, images.labels, images.splits, identities))


def write_store(path: Path, images, identities, rows_by_path, dim: int, attrs: dict) -> tuple[int, int]:
    """Write the complete store for `images` from `rows_by_path` atomically; (good, skipped)."""
    good = [i for i, p in enumerate(images.paths) if rows_by_path[p][1] is not None]
    bad = [i for i, p in enumerate(images.paths) if rows_by_path[p][1] is None]
    vectors = np.zeros((len(good), dim), dtype=np.float32)
    for row, i in enumerate(good):
        vectors[row] = rows_by_path[images.paths[i]][1]
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    import h5py
    try:
        with h5py.File(tmp, "w") as h5:
            for key, value in attrs.items():
                h5.attrs[key] = value
            h5.create_dataset("features", data=vectors, chunks=(max(1, min(len(good), 1024)), dim) if good else None)
            _write_columns(h5, images, identities, good)
            h5.create_dataset("labels", data=np.asarray([images.labels[i] for i in good], dtype=np.int64))
            skipped = h5.create_group("skipped")
            _write_columns(skipped, images, identities, bad)
            skipped.create_dataset("reasons", data=[rows_by_path[images.paths[i]][2] for i in bad],
                                   dtype=_str_dtype())
            skipped.create_dataset("labels", data=np.asarray([images.labels[i] for i in bad], dtype=np.int64))
            h5.attrs["complete"] = True  # last: a file without it is never read as a store
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return len(good), len(bad)


def _write_columns(group, images, identities, rows):
    group.create_dataset("paths", data=[images.paths[i] for i in rows], dtype=_str_dtype())
    group.create_dataset("splits", data=[images.splits[i] for i in rows], dtype=_str_dtype())
    group.create_dataset("file_size", data=np.asarray([identities[i][0] for i in rows], dtype=np.int64))
    group.create_dataset("file_mtime_ns", data=np.asarray([identities[i][1] for i in rows], dtype=np.int64))


class PartialLog:
    """Append-only record of the rows a run has extracted so far, beside the store it will become.

    The `rows` attribute is raised only after a batch is written and flushed, so a run killed in
    the middle of a write leaves at most that one batch unread by the next run.
    """

    def __init__(self, path: Path, fp: str, dim: int):
        self.path, self.fp, self.dim = path, fp, dim
        self._h5 = None

    def read(self) -> Rows | None:
        """The rows a killed run left, or None (absent, other settings, or unreadable)."""
        if not self.path.exists():
            return None
        try:
            with _open(self.path) as h5:
                if h5.attrs.get("fingerprint") != self.fp:
                    return None
                n = int(h5.attrs["rows"])
                rows = Rows()
                for p, s, m, v, r in zip(h5["paths"].asstr()[:n], h5["file_size"][:n], h5["file_mtime_ns"][:n],
                                         h5["vectors"][:n], h5["reasons"].asstr()[:n]):
                    rows.append(p, (s, m), None if r else v, r)
                return rows
        except (StoreError, KeyError, OSError, ValueError):
            return None

    def append(self, paths, identities, vectors, reasons) -> None:
        if self._h5 is None:
            self._open_for_append()
        h5 = self._h5
        n, k = int(h5.attrs["rows"]), len(paths)
        for name in ("paths", "file_size", "file_mtime_ns", "vectors", "reasons"):
            h5[name].resize(n + k, axis=0)
        h5["paths"][n:] = paths
        h5["file_size"][n:] = [s for s, _ in identities]
        h5["file_mtime_ns"][n:] = [m for _, m in identities]
        h5["vectors"][n:] = vectors
        h5["reasons"][n:] = reasons
        h5.flush()
        h5.attrs["rows"] = n + k
        h5.flush()

    def _open_for_append(self):
        import h5py
        if self.read() is not None:
            self._h5 = h5py.File(self.path, "a")
            return
        self.path.unlink(missing_ok=True)
        h5 = h5py.File(self.path, "w")
        h5.attrs["fingerprint"] = self.fp
        h5.attrs["rows"] = 0
        h5.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=_str_dtype(), chunks=(256,))
        for name in ("file_size", "file_mtime_ns"):
            h5.create_dataset(name, shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(256,))
        h5.create_dataset("vectors", shape=(0, self.dim), maxshape=(None, self.dim), dtype=np.float32,
                          chunks=(64, self.dim))
        h5.create_dataset("reasons", shape=(0,), maxshape=(None,), dtype=_str_dtype(), chunks=(256,))
        h5.flush()
        self._h5 = h5

    def close(self):
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def remove(self):
        self.close()
        self.path.unlink(missing_ok=True)


@contextmanager
def exclusive(path: Path):
    """Hold a lock beside `path` for the duration; a second writer stops with a clear message."""
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise StoreError(f"{path} is being written by {holder}; wait for that run to finish "
                             f"and run again") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"cnnfeat extract (pid {os.getpid()})")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
