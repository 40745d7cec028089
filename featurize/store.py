"""The HDF5 feature store: one file per (dataset, backbone + weights, preprocessing, precision).

A complete store is only ever written whole, to a temporary name, fsynced, then renamed into
place, with a `complete` attribute set last; rows extracted by a run that has not finished go to
the append-only journal `<store>.partial` beside it (see journal.py), which the next run salvages.
So a killed run never leaves a file that looks complete, and loses at most the batch it was writing.
One writer at a time holds a POSIX lock beside the store; the kernel drops it when that writer dies.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path

import numpy as np

from .errors import StoreError
from .files import atomic_write, check_name, pid_alive, runs
from .journal import read_vectors
from .placement import IN_JOURNAL, IN_MEMORY, IN_STORE, NOWHERE, SKIPPED, Placement

FORMAT_VERSION = 1
DTYPES = ("float32", "float16")
COMPRESSIONS = ("none", "lzf", "gzip")
COPY_ROWS = 1024  # rows per chunk when a store is written: memory is one chunk (5 MiB at 1280-d), whatever N is


@dataclass(frozen=True)
class Storage:
    """How the vectors are kept on disk. `dtype` float16 rounds them (so it is part of the
    fingerprint); compression never changes a number. Compression None: whatever the existing
    file has (none for a new one), so a run that does not ask never rewrites a file to change it."""

    dtype: str = "float32"
    compression: str | None = None

    def check(self) -> "Storage":
        if self.dtype not in DTYPES:
            raise StoreError(f"--dtype {self.dtype!r}; valid: {', '.join(DTYPES)}")
        if self.compression is not None and self.compression not in COMPRESSIONS:
            raise StoreError(f"--compression {self.compression!r}; valid: {', '.join(COMPRESSIONS)}")
        return self

    def dataset_options(self, rows: int, dim: int) -> dict:
        chunk_rows = max(1, min(rows, (1 << 20) // (dim * 4)))  # about 1 MiB per HDF5 chunk
        options = {"dtype": self.dtype, "chunks": (chunk_rows, dim) if rows else None}
        if self.compression not in (None, "none") and rows:
            options["compression"] = self.compression
        return options

    def resolved(self, path: Path) -> "Storage":
        """This storage with compression None made the one of the file at `path` (none if unreadable)."""
        if self.compression is not None:
            return self
        try:
            with _open(path) as h5:
                return replace(self, compression=_storage_of(h5).compression)
        except (StoreError, OSError, ValueError):
            return replace(self, compression="none")


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
class Features:
    """What other code reads from a complete store, as numpy arrays."""

    path: Path
    X: np.ndarray  # (N, D) float32; with load_features(lazy=True) the h5py dataset (stored dtype)
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
    parts: tuple = ()  # fused features (featurize.fuse): the Features joined, in order

    @property
    def backbone(self) -> str:
        return self.config["backbone"]

    @property
    def files(self) -> tuple:
        """The feature file(s) these rows were read from."""
        return tuple(part.path for part in self.parts) or (self.path,)


def _open(path: Path, mode: str = "r"):
    import h5py
    try:
        return h5py.File(path, mode)
    except OSError as error:
        raise StoreError(f"{path}: not a readable HDF5 feature file ({error})") from None


def load_features(path: str | os.PathLike, lazy: bool = False) -> Features:
    """Read a complete feature store; refuse a missing, foreign or unfinished one. `lazy`: X is the
    h5py dataset itself (the file stays open while it is referenced), read by whoever slices it -
    a million rows need not sit in memory twice, or at all."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such feature file (run `cnnfeat extract` first)")
    h5 = _open(path)
    try:
        features = _features_of(path, h5, lazy)
    finally:
        if not lazy:
            h5.close()
    return features


READ_BYTES = 4 << 20  # take_rows reads a lazy store in spans of about this many bytes


def take_rows(X, rows: np.ndarray, block: int | None = None) -> np.ndarray:
    """X[rows] as float32, where X is an array or a lazily loaded store's h5py dataset: the dataset is
    read in blocks of neighbouring rows, so only the rows asked for are ever held (a million-row
    `fit` needs its training rows in memory, not the whole matrix beside them)."""
    rows = np.asarray(rows, dtype=np.int64)
    if isinstance(X, np.ndarray):
        return X[rows].astype(np.float32, copy=False)
    block = block or max(1, READ_BYTES // (X.shape[1] * X.dtype.itemsize))
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    out = np.empty((len(rows), X.shape[1]), np.float32)
    for begin in range(int(ordered[0]), int(ordered[-1]) + 1, block) if len(rows) else ():
        lo, hi = np.searchsorted(ordered, [begin, begin + block])
        if hi > lo:  # one read of the span holding these rows, then the rows asked for
            out[order[lo:hi]] = X[begin:int(ordered[hi - 1]) + 1][ordered[lo:hi] - begin]
    return out


def _features_of(path: Path, h5, lazy: bool) -> Features:
    attrs = h5.attrs
    if "fingerprint" not in attrs or "features" not in h5:
        raise StoreError(f"{path}: not a cnnfeat feature file")
    if not attrs.get("complete", False):
        raise StoreError(f"{path}: incomplete feature file (its extraction did not finish); "
                         f"run `cnnfeat extract` again")
    config = json.loads(attrs["config"])
    # These two become parts of output paths (reports, fine-tune folders): a shared file must
    # not be able to write outside --out.
    dataset = check_name(str(attrs["dataset"]), "dataset name", path)
    check_name(config.get("backbone"), "backbone name", path)
    return Features(
        path=path,
        X=h5["features"] if lazy else h5["features"][:].astype(np.float32, copy=False),
        y=h5["labels"][:].astype(np.int64),
        class_names=json.loads(attrs["class_names"]),
        paths=h5["paths"].asstr()[:],
        splits=h5["splits"].asstr()[:],
        fingerprint=str(attrs["fingerprint"]),
        config=config,
        versions=json.loads(attrs["versions"]),
        data_root=str(attrs["data_root"]),
        dataset=dataset,
        skipped=_skipped_of(h5),
        weights_source=str(attrs.get("weights_source", "")),
    )


def _skipped_of(h5) -> list[tuple[str, str]]:
    return list(zip(h5["skipped/paths"].asstr()[:], h5["skipped/reasons"].asstr()[:]))


def read_skipped(path: Path) -> list[tuple[str, str]]:
    """(path, reason) of the images a store could not read, without reading its vectors."""
    with _open(path) as h5:
        return _skipped_of(h5)


def _same_settings(h5, fp: str, data_root: str) -> bool:
    """A complete store of these settings, made from the images under this root."""
    attrs = h5.attrs
    return bool(attrs.get("complete", False)) and attrs.get("fingerprint") == fp and attrs.get("data_root") == data_root


def place_store_rows(placement: Placement, path: Path, expected_fingerprint: str, data_root: str) -> int | None:
    """Put the rows of the complete store at `path` into `placement` (their vectors stay in the
    file: IN_STORE), COPY_ROWS at a time; how many rows name no image of the list (dropped), or None
    where the store is absent, of other settings or broken."""
    try:
        with _open(path) as h5:
            if not _same_settings(h5, expected_fingerprint, data_root):
                return None
            dropped = 0
            for group, kind in ((h5, IN_STORE), (h5["skipped"], SKIPPED)):
                rows = group["paths"].shape[0]
                for start in range(0, rows, COPY_ROWS):
                    end = min(rows, start + COPY_ROWS)
                    reasons = group["reasons"].asstr()[start:end] if kind == SKIPPED else [""] * (end - start)
                    identities = np.stack([group["file_size"][start:end], group["file_mtime_ns"][start:end]], axis=1)
                    dropped += placement.put_paths(group["paths"].asstr()[start:end], identities,
                                                   np.arange(start, end), reasons, IN_STORE)
            return dropped
    except (StoreError, KeyError, OSError):
        return None


class VectorReader:
    """Reads vectors wherever they lie - the store being replaced (IN_STORE), the journal
    (IN_JOURNAL), or an array in memory (IN_MEMORY) - a chunk at a time, one read per run of
    neighbouring rows."""

    def __init__(self, dim: int, store: Path | None = None, journal: Path | None = None,
                 memory: np.ndarray | None = None):
        self.dim, self.store, self.journal, self.memory = dim, store, journal, memory

    def __enter__(self):
        import h5py
        self._h5 = h5py.File(self.store, "r") if self.store else None
        self._journal = open(self.journal, "rb") if self.journal and self.journal.exists() else None
        return self

    def __exit__(self, *exc):
        for handle in (self._h5, self._journal):
            if handle is not None:
                handle.close()

    def read(self, kinds: np.ndarray, wheres: np.ndarray) -> np.ndarray:
        out = np.empty((len(kinds), self.dim), np.float32)
        for kind, read in ((IN_STORE, self._from_store), (IN_MEMORY, self._from_memory),
                           (IN_JOURNAL, lambda offsets: read_vectors(self._journal, offsets, self.dim))):
            ks = np.flatnonzero(kinds == kind)
            if len(ks):
                out[ks] = read(wheres[ks].tolist())
        return out

    def _from_store(self, rows: list[int]) -> np.ndarray:
        features, out = self._h5["features"], np.empty((len(rows), self.dim), np.float32)
        for first, end in runs(rows, 1):
            out[first:end] = features[rows[first]:rows[end - 1] + 1]
        return out

    def _from_memory(self, rows: list[int]) -> np.ndarray:
        return self.memory[rows]


def store_matches(path: Path, fp: str, images, identities, storage: Storage = Storage()) -> bool:
    """True when the complete store at `path` already says exactly what a rebuild would write.

    Reads paths, labels, splits and file identities only, never the vectors, and those COPY_ROWS
    rows at a time, in the images' order (the order a rebuild writes): the "up to date" answer
    stays fast however large the store, and its memory is a chunk plus the skipped rows."""
    try:
        with _open(path) as h5:
            if not _same_settings(h5, fp, str(images.root)):
                return False
            if json.loads(h5.attrs["class_names"]) != images.class_names:
                return False
            if storage.resolved(path).compression != _storage_of(h5).compression:  # asked for another: rewrite
                return False
            skipped = dict(zip(h5["skipped/paths"].asstr()[:], _row_facts(h5["skipped"], 0, None)))
            if h5["paths"].shape[0] + len(skipped) != len(images.paths):
                return False
            good = (i for i, p in enumerate(images.paths) if p not in skipped)
            for start in range(0, h5["paths"].shape[0], COPY_ROWS):
                paths = h5["paths"].asstr()[start:start + COPY_ROWS]
                for p, facts in zip(paths, _row_facts(h5, start, start + COPY_ROWS)):
                    i = next(good)
                    if images.paths[i] != p or facts != (images.labels[i], images.splits[i], tuple(identities[i])):
                        return False
            return all(skipped[p] == (label, split, tuple(identity)) for p, label, split, identity
                       in zip(images.paths, images.labels, images.splits, identities) if p in skipped)
    except (StoreError, KeyError, OSError):
        return False


def _row_facts(group, start: int, end: int | None):
    """(label, split, (size, mtime)) of the group's rows start..end, as Python values."""
    return zip(group["labels"][start:end].tolist(), group["splits"].asstr()[start:end],
               zip(group["file_size"][start:end].tolist(), group["file_mtime_ns"][start:end].tolist()))


def _storage_of(h5) -> Storage:
    """How the file keeps its vectors (files from before the attribute: float32, uncompressed)."""
    stored = json.loads(h5.attrs.get("storage", "{}"))
    return Storage(stored.get("dtype", "float32"), stored.get("compression") or "none")


def write_store(path: Path, images, identities: np.ndarray, placement: Placement, dim: int, attrs: dict,
                reader: VectorReader | None = None, storage: Storage = Storage()) -> tuple[int, int]:
    """Write the complete store for `images` (every one placed: a vector or a reason) atomically,
    COPY_ROWS rows at a time; (good, skipped)."""
    import h5py

    if np.any(placement.kind == NOWHERE):
        raise StoreError(f"{path}: {int(np.sum(placement.kind == NOWHERE))} images have no vector and no reason")
    good, bad = np.flatnonzero(placement.kind != SKIPPED), placement.skipped()
    reader = reader or VectorReader(dim)
    with atomic_write(path) as tmp, h5py.File(tmp, "w") as h5, reader:
        for key, value in attrs.items():
            h5.attrs[key] = value
        h5.attrs["storage"] = json.dumps({**asdict(storage), "compression": storage.compression or "none"})
        features = h5.create_dataset("features", shape=(len(good), dim), **storage.dataset_options(len(good), dim))
        for start in range(0, len(good), COPY_ROWS):
            part = good[start:start + COPY_ROWS]
            features[start:start + len(part)] = reader.read(placement.kind[part], placement.where[part])
        _write_columns(h5, images, identities, good)
        skipped = h5.create_group("skipped")
        _write_columns(skipped, images, identities, bad)
        skipped.create_dataset("reasons", data=[placement.reasons[i] for i in bad.tolist()], dtype=_str_dtype())
        h5.attrs["complete"] = True  # last: a file without it is never read as a store
    return len(good), len(bad)


def _write_columns(group, images, identities: np.ndarray, rows: np.ndarray):
    """Paths, splits, labels and file identities of `rows` (strings COPY_ROWS at a time: h5py
    makes an object per string it writes)."""
    for name, column in (("paths", images.paths), ("splits", images.splits)):
        dataset = group.create_dataset(name, shape=(len(rows),), dtype=_str_dtype())
        for start in range(0, len(rows), COPY_ROWS):
            part = rows[start:start + COPY_ROWS].tolist()
            dataset[start:start + len(part)] = [column[i] for i in part]
    group.create_dataset("labels", data=np.asarray(images.labels, dtype=np.int64)[rows])
    group.create_dataset("file_size", data=identities[rows, 0].astype(np.int64))
    group.create_dataset("file_mtime_ns", data=identities[rows, 1].astype(np.int64))


LOCK_WAIT_S = 2.0  # how long to wait for a lock whose holder has not yet said who it is
_HELD_HERE: set[Path] = set()  # POSIX locks do not exclude the process that holds them: these do


@contextmanager
def exclusive(path: Path):
    """Hold a lock beside `path` for the duration; a second writer stops with a clear message.

    A POSIX record lock (lockf), not flock: it belongs to this process only, so the DataLoader
    workers forked while it is held do not keep it alive after this process is killed, and the
    kernel releases it the moment this process dies, whatever killed it."""
    lock_path = path.with_name(path.name + ".lock").resolve()
    if lock_path in _HELD_HERE:
        raise StoreError(f"{path} is being written by this process (pid {os.getpid()}); wait for that run to "
                         f"finish and run again")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, path)
        _HELD_HERE.add(lock_path)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"cnnfeat extract (pid {os.getpid()})".encode(), 0)
        yield
    finally:
        _HELD_HERE.discard(lock_path)
        os.close(fd)  # releases the lock


def _acquire(fd: int, path: Path) -> None:
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError:  # EAGAIN / EACCES: held by a live process
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            pid = holder.rsplit("pid ", 1)[-1].rstrip(")")
            # A held lock whose recorded pid is gone belongs to a writer that has just started and
            # not yet written its pid: wait a moment rather than name a dead process.
            if (pid.isdigit() and pid_alive(int(pid))) or time.monotonic() > deadline:
                named = holder if pid.isdigit() and pid_alive(int(pid)) else "another process"
                raise StoreError(f"{path} is being written by {named}; wait for that run to finish "
                                 f"and run again") from None
            time.sleep(0.05)
