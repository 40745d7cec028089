"""The HDF5 feature store: one file per (dataset, backbone + weights, preprocessing, precision).

A complete store is only ever written whole, to a temporary name, fsynced, then renamed into
place, with a `complete` attribute set last; rows extracted by a run that has not finished go to
the append-only journal `<store>.partial` beside it (see journal.py), which the next run salvages.
So a killed run never leaves a file that looks complete, and loses at most the batch it was writing.
One writer at a time holds a POSIX lock beside the store (common.locks.exclusive); the kernel drops it
when that writer dies. Every attribute is validated as it is read (a store that does not parse is
refused in one line, and rebuilt by `extract`), and the vectors carry checksums (integrity.py).

Paths are file names as the operating system gives them: a name that is not valid UTF-8 is kept
losslessly (its raw bytes in the file, surrogate escapes in Python, as os.listdir gives it).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from common.errors import CnnfeatError, OutputError, StoreError, describe_os_error
from common.files import atomic_write
from common.names import check_name, printable

from .integrity import CheckedRows, Checksums, attributes_checksum, block_checksum, strings_checksum, take_rows
from .journal import read_vectors
from .placement import IN_JOURNAL, IN_MEMORY, IN_STORE, NOWHERE, SKIPPED, Placement

FORMAT_VERSION = 1
StorageDtype = Literal["float32", "float16"]
DTYPES = get_args(StorageDtype)
Compression = Literal["none", "lzf", "gzip"]
COMPRESSIONS = get_args(Compression)
COPY_ROWS = 1024  # rows per chunk when a store is written: memory is one chunk (5 MiB at 1280-d), whatever N is;
# one checksum per chunk (the file says how many rows: its `checksum_rows`)
DAMAGED_OR_FOREIGN = (StoreError, OSError, KeyError, ValueError, TypeError, IndexError)  # what reading a store
# that is not a whole, valid cnnfeat store can raise


@dataclass(frozen=True)
class Storage:
    """How the vectors are kept on disk. `dtype` float16 rounds them (so it is part of the
    fingerprint); compression never changes a number. Compression None: whatever the existing
    file has (none for a new one), so a run that does not ask never rewrites a file to change it."""

    dtype: StorageDtype = "float32"
    compression: Compression | None = None

    def check(self) -> Storage:
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

    def resolved(self, path: Path) -> Storage:
        """This storage with compression None made the one of the file at `path` (none if unreadable)."""
        if self.compression is not None:
            return self
        try:
            with _open(path) as h5:
                return replace(self, compression=read_header(path, h5).storage.compression)
        except DAMAGED_OR_FOREIGN:
            return replace(self, compression="none")


@dataclass
class Features:
    """What other code reads from a complete store, as numpy arrays."""

    path: Path
    X: np.ndarray  # (N, D) float32; with load_features(lazy=True) a CheckedRows: slice it, a batch at a time
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
    data_source: str = ""  # what extract's --data named (a list file, or data_root); "" in a store from before it
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
        raise StoreError(f"{printable(path)}: not a readable HDF5 feature file ({error})") from None


# -- what a store says about itself, validated --------------------------------------------------


@dataclass(frozen=True)
class Header:
    """A complete store's attributes, each checked as it is read: a store cut short, damaged or
    crafted is refused here in one line, never halfway through a fit."""

    fingerprint: str
    config: dict
    class_names: list
    versions: dict
    data_root: str
    dataset: str
    storage: Storage
    weights_source: str
    data_source: str
    rows: int
    dim: int
    checksums: Checksums | None  # None in a store from before them
    columns: dict  # each column's checksum ({} in a store from before them)


def read_header(path: Path, h5) -> Header:
    attrs = h5.attrs
    if "fingerprint" not in attrs or "features" not in h5:
        raise StoreError(f"{printable(path)}: not a cnnfeat feature file")
    if not attrs.get("complete", False):
        raise StoreError(
            f"{printable(path)}: incomplete feature file (its extraction did not finish); run `cnnfeat extract` again"
        )
    try:
        header = _parse_header(path, h5)
    except CnnfeatError:
        raise
    except DAMAGED_OR_FOREIGN as error:
        raise _damaged_file(path, error) from None
    return header


def _damaged_file(path: Path, error: Exception) -> StoreError:
    return StoreError(
        f"{printable(path)}: a damaged feature file ({type(error).__name__}: {error}); run "
        f"`cnnfeat extract` on its data again to rebuild it"
    )


def _parse_header(path: Path, h5) -> Header:
    attrs, features = h5.attrs, h5["features"]
    config = _json_attr(attrs, "config", dict)
    class_names = _json_attr(attrs, "class_names", list)
    if not class_names or not all(isinstance(c, str) for c in class_names):
        raise ValueError(f"class_names {class_names!r} is not a list of names")
    storage = _json_attr(attrs, "storage", dict, default="{}")
    if len(features.shape) != 2 or features.shape[1] != config.get("feature_dim", features.shape[1]):
        raise ValueError(f"vectors of shape {features.shape} where the config says {config.get('feature_dim')}-d")
    rows = features.shape[0]
    _check_column_lengths(h5, rows)
    sealed = _json_attr(attrs, "sealed", dict, default="{}")
    if sealed and sealed.get("attributes") != attributes_checksum(attrs):
        raise ValueError("its attributes do not match their checksum")
    checksums = _checksums_of(h5, rows)
    stored_as = _storage_of(storage)
    # The dataset and backbone names become parts of output paths (reports, fine-tune folders): a
    # shared file must not be able to write outside --out.
    check_name(config.get("backbone"), "backbone name", path)
    return Header(
        fingerprint=_text(attrs["fingerprint"]),
        config=config,
        class_names=class_names,
        versions=_json_attr(attrs, "versions", dict, default="{}"),
        data_root=_text(attrs["data_root"]),
        dataset=check_name(_text(attrs["dataset"]), "dataset name", path),
        storage=stored_as,
        weights_source=_text(attrs.get("weights_source", "")),
        data_source=_text(attrs.get("data_source", "")),
        rows=rows,
        dim=features.shape[1],
        checksums=checksums,
        columns=sealed.get("columns", {}),
    )


def _storage_of(storage: dict) -> Storage:
    """How the vectors are stored, from the `storage` attribute ({} in a store from before it)."""
    if storage.get("dtype", "float32") not in DTYPES:
        raise ValueError(f"vectors stored as {storage.get('dtype')!r}")
    return Storage(storage.get("dtype", "float32"), str(storage.get("compression") or "none"))


ROW_COLUMNS = ("paths", "splits", "labels", "file_size", "file_mtime_ns")  # one value per stored vector
SKIPPED_COLUMNS = (*ROW_COLUMNS, "reasons")  # one value per skipped image, in the group `skipped`


def _check_column_lengths(h5, rows: int) -> None:
    """Every column as long as the vectors (`skipped/`'s as long as its paths)."""
    for group, names in ((h5, ROW_COLUMNS), (h5["skipped"], SKIPPED_COLUMNS)):
        lengths = {name: group[name].shape for name in names}
        expected = (rows,) if group is h5 else lengths["paths"]
        if any(shape != expected for shape in lengths.values()):
            raise ValueError(f"columns of different lengths ({lengths}) beside {rows} vectors")


def _checksums_of(h5, rows: int | None = None) -> Checksums | None:
    """The vectors' checksums (None in a store from before them); with `rows`, checked to be one
    per block of that many vectors."""
    if "checksums" not in h5:
        return None
    block_rows = int(h5.attrs["checksum_rows"])
    if block_rows < 1:
        raise ValueError(f"checksum_rows {block_rows}")
    checksums = Checksums(h5["checksums"][:], block_rows)
    if rows is not None and checksums.sums.shape != (-(-rows // block_rows),):
        raise ValueError(f"{checksums.sums.shape} checksums of {block_rows} rows for {rows} rows")
    return checksums


def _json_attr(attrs, name: str, kind: type, default: str | None = None):
    value = json.loads(_text(attrs[name] if default is None else attrs.get(name, default)))
    if not isinstance(value, kind):
        raise ValueError(f"attribute {name} is a {type(value).__name__}, not a {kind.__name__}")
    return value


def _text(value) -> str:
    """An attribute as text: a str, or the bytes of a name that is not UTF-8 (see _put_text)."""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", "surrogateescape")
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not text")
    return value


def _put_text(attrs, name: str, value) -> None:
    """Text attributes as UTF-8; a path that is not (surrogate escapes) as its raw bytes."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = np.bytes_(value.encode("utf-8", "surrogateescape"))
    attrs[name] = value


def _strings(dataset, start: int = 0, end: int | None = None):
    """Strings of a column as Python str, names that are not UTF-8 included (surrogate escapes)."""
    return dataset.asstr(errors="surrogateescape")[start:end]


# -- reading ---------------------------------------------------------------------------------------


def load_features(path: str | os.PathLike, lazy: bool = False) -> Features:
    """Read a complete feature store; refuse a missing, foreign, unfinished or damaged one. `lazy`: X
    is read by whoever slices it (the file stays open while it is referenced) - a million rows need
    not sit in memory twice, or at all. Every vector read is checked against its block's checksum."""
    path = Path(path)
    if path.is_dir():
        raise StoreError(f"{printable(path)}: a folder, not a feature file (`extract` writes OUT/features/*.h5)")
    if not path.is_file():
        raise StoreError(f"{printable(path)}: no such feature file (run `cnnfeat extract` first)")
    h5 = _open(path)
    try:
        features = _features_of(path, h5, lazy)
    except BaseException as error:
        h5.close()
        if isinstance(error, CnnfeatError) or not isinstance(error, DAMAGED_OR_FOREIGN):
            raise
        raise _damaged_file(path, error) from None
    if not lazy:
        h5.close()
    return features


def _features_of(path: Path, h5, lazy: bool) -> Features:
    header = read_header(path, h5)
    labels = h5["labels"][:].astype(np.int64)
    _check_column(path, header, "labels", block_checksum(labels))
    if len(labels) and (labels.min() < 0 or labels.max() >= len(header.class_names)):
        raise StoreError(
            f"{printable(path)}: labels outside its {len(header.class_names)} classes (a damaged "
            f"or crafted file); run `cnnfeat extract` on its data again to rebuild it"
        )
    X = CheckedRows(path, h5["features"], header.checksums)
    if not lazy:
        X = X[:]  # read a few MB at a time, each block checked
    return Features(
        path=path,
        X=X,
        y=labels,
        class_names=header.class_names,
        paths=_checked_strings(path, header, h5, "paths"),
        splits=_checked_strings(path, header, h5, "splits"),
        fingerprint=header.fingerprint,
        config=header.config,
        versions=header.versions,
        data_root=header.data_root,
        dataset=header.dataset,
        skipped=list(zip(*(_checked_strings(path, header, h5, f"skipped/{name}") for name in ("paths", "reasons")))),
        weights_source=header.weights_source,
        data_source=header.data_source,
    )


def _checked_strings(path: Path, header: Header, h5, name: str) -> np.ndarray:
    """A column of strings, checked against its checksum: names that are not UTF-8 as surrogates."""
    encoded = h5[name][:].tolist()
    _check_column(path, header, name, strings_checksum(encoded))
    return np.asarray([value.decode("utf-8", "surrogateescape") for value in encoded], dtype=object)


def _check_column(path: Path, header: Header, name: str, checksum: int) -> None:
    if name in header.columns and header.columns[name] != checksum:
        raise StoreError(
            f"{printable(path)}: its {name} column does not match its checksum (the file was damaged "
            f"on disk); run `cnnfeat extract` on its data again: it rewrites the columns"
        )


def _skipped_of(h5) -> list[tuple[str, str]]:
    return list(zip(_strings(h5["skipped/paths"]), _strings(h5["skipped/reasons"])))


def read_skipped(path: Path) -> list[tuple[str, str]]:
    """(path, reason) of the images a store could not read, without reading its vectors."""
    with _open(path) as h5:
        return _skipped_of(h5)


def _same_settings(header: Header, fp: str, data_root: str) -> bool:
    """A store of these settings, made from the images under this root."""
    return header.fingerprint == fp and header.data_root == data_root


def place_store_rows(placement: Placement, path: Path, expected_fingerprint: str, data_root: str) -> int | None:
    """Put the rows of the complete store at `path` into `placement` (their vectors stay in the
    file: IN_STORE), COPY_ROWS at a time; how many rows name no image of the list (dropped), or None
    where the store is absent, of other settings or damaged."""
    try:
        with _open(path) as h5:
            header = read_header(path, h5)
            if not _same_settings(header, expected_fingerprint, data_root):
                return None
            dropped = 0
            for group, kind in ((h5, IN_STORE), (h5["skipped"], SKIPPED)):
                rows = group["paths"].shape[0]
                for start in range(0, rows, COPY_ROWS):
                    end = min(rows, start + COPY_ROWS)
                    reasons = _strings(group["reasons"], start, end) if kind == SKIPPED else [""] * (end - start)
                    identities = np.stack([group["file_size"][start:end], group["file_mtime_ns"][start:end]], axis=1)
                    dropped += placement.put_paths(
                        _strings(group["paths"], start, end), identities, np.arange(start, end), reasons, IN_STORE
                    )
            return dropped
    except DAMAGED_OR_FOREIGN:
        return None


class VectorReader:
    """Reads vectors wherever they lie - the store being replaced (IN_STORE), the journal
    (IN_JOURNAL), or an array in memory (IN_MEMORY) - a chunk at a time, one read per run of
    neighbouring rows. Rows of the old store are checked against their checksums as they are read,
    so a damaged vector is never copied into the new store under a fresh checksum."""

    def __init__(
        self, dim: int, store: Path | None = None, journal: Path | None = None, memory: np.ndarray | None = None
    ):
        self.dim, self.store, self.journal, self.memory = dim, store, journal, memory

    def __enter__(self):
        import h5py

        self._h5 = h5py.File(self.store, "r") if self.store else None
        if self._h5 is not None:  # a store from before checksums is copied as it is, then has them
            self._rows = CheckedRows(self.store, self._h5["features"], _checksums_of(self._h5))
        self._journal = open(self.journal, "rb") if self.journal and self.journal.exists() else None
        return self

    def __exit__(self, *exc):
        for handle in (self._h5, self._journal):
            if handle is not None:
                handle.close()

    def read(self, kinds: np.ndarray, locators: np.ndarray) -> np.ndarray:
        """The vectors of rows placed as `kinds` at `locators` (a Placement's columns)."""
        out = np.empty((len(kinds), self.dim), np.float32)
        for kind, read in (
            (IN_STORE, self._store_rows),
            (IN_MEMORY, self._memory_rows),
            (IN_JOURNAL, self._journal_offsets),
        ):
            ks = np.flatnonzero(kinds == kind)
            if len(ks):
                out[ks] = read(locators[ks].tolist())
        return out

    def _store_rows(self, rows: list[int]) -> np.ndarray:
        return take_rows(self._rows, np.asarray(rows, np.int64))  # each block read and checked once

    def _memory_rows(self, rows: list[int]) -> np.ndarray:
        return self.memory[rows]

    def _journal_offsets(self, offsets: list[int]) -> np.ndarray:
        return read_vectors(self._journal, offsets, self.dim)


def store_matches(path: Path, fp: str, images, identities, storage: Storage = Storage()) -> bool:
    """True when the complete store at `path` already says exactly what a rebuild would write.

    Reads paths, labels, splits and file identities only, never the vectors, and those COPY_ROWS
    rows at a time, in the images' order (the order a rebuild writes): the "up to date" answer
    stays fast however large the store, and its memory is a chunk plus the skipped rows. A store
    from before checksums does not match (rewritten once, no image extracted again)."""
    try:
        with _open(path) as h5:
            header = read_header(path, h5)
            return _same_header(path, header, fp, images, storage) and _same_rows(h5, images, identities)
    except DAMAGED_OR_FOREIGN:
        return False


def _same_header(path: Path, header: Header, fp: str, images, storage: Storage) -> bool:
    """These settings, images and classes, checksums, the compression asked for, and what --data
    named (another: rewrite)."""
    return (
        _same_settings(header, fp, str(images.root))
        and header.data_source == images.source
        and header.checksums is not None
        and header.class_names == images.class_names
        and storage.resolved(path).compression == header.storage.compression
    )


def _same_rows(h5, images, identities) -> bool:
    """Every image in the store, as a vector's row or a skipped one, with its label, split and identity."""
    skipped = dict(zip(_strings(h5["skipped/paths"]), _row_facts(h5["skipped"], 0, None)))
    if h5["paths"].shape[0] + len(skipped) != len(images.paths):
        return False
    return _same_good_rows(h5, images, identities, skipped) and all(
        skipped[p] == (label, split, tuple(identity))
        for p, label, split, identity in zip(images.paths, images.labels, images.splits, identities)
        if p in skipped
    )


def _same_good_rows(h5, images, identities, skipped: dict) -> bool:
    """The store's rows of vectors are the images not skipped, in order, COPY_ROWS at a time."""
    good = (i for i, p in enumerate(images.paths) if p not in skipped)
    for start in range(0, h5["paths"].shape[0], COPY_ROWS):
        paths = _strings(h5["paths"], start, start + COPY_ROWS)
        for p, facts in zip(paths, _row_facts(h5, start, start + COPY_ROWS)):
            i = next(good)
            if images.paths[i] != p or facts != (images.labels[i], images.splits[i], tuple(identities[i])):
                return False
    return True


def store_damage(path: Path) -> np.ndarray:
    """Rows of the store at `path` whose vectors fail their checksums (`extract --verify`)."""
    with _open(path) as h5:
        header = read_header(path, h5)
        return header.checksums.damaged(h5["features"]) if header.checksums else np.zeros(0, np.int64)


def _row_facts(group, start: int, end: int | None):
    """(label, split, (size, mtime)) of the group's rows start..end, as Python values."""
    return zip(
        group["labels"][start:end].tolist(),
        _strings(group["splits"], start, end),
        zip(group["file_size"][start:end].tolist(), group["file_mtime_ns"][start:end].tolist()),
    )


# -- writing ---------------------------------------------------------------------------------------


def write_store(
    path: Path,
    images,
    identities: np.ndarray,
    placement: Placement,
    dim: int,
    attrs: dict,
    reader: VectorReader | None = None,
    storage: Storage = Storage(),
) -> tuple[int, int]:
    """Write the complete store for `images` (every one placed: a vector or a reason) atomically,
    COPY_ROWS rows at a time, each chunk's checksum beside it; (good, skipped). The space it needs
    is reserved first: a full disk or a file-size limit is one error before HDF5 writes a byte
    (HDF5 crashes the process when it cannot flush a file it is closing)."""
    import h5py

    if np.any(placement.kind == NOWHERE):
        raise StoreError(f"{path}: {int(np.sum(placement.kind == NOWHERE))} images have no vector and no reason")
    good, bad = np.flatnonzero(placement.kind != SKIPPED), placement.skipped()
    reasons = [placement.reasons[i] for i in bad.tolist()]
    with atomic_write(path) as tmp:
        _reserve(tmp, size_bound(images, len(good), dim, storage, reasons, attrs), path)
        with h5py.File(tmp, "r+") as h5, reader or VectorReader(dim) as vectors:
            for key, value in attrs.items():
                _put_text(h5.attrs, key, value)
            h5.attrs["storage"] = json.dumps({**asdict(storage), "compression": storage.compression or "none"})
            _write_vectors(h5, vectors, placement, good, storage)
            columns = _write_columns(h5, images, identities, good)
            skipped = h5.create_group("skipped")
            columns.update(
                {f"skipped/{name}": crc for name, crc in _write_columns(skipped, images, identities, bad).items()}
            )
            columns["skipped/reasons"] = _write_strings(skipped, "reasons", reasons)
            h5.attrs["sealed"] = json.dumps({"attributes": attributes_checksum(h5.attrs), "columns": columns})
            h5.attrs["complete"] = True  # last: a file without it is never read as a store
    return len(good), len(bad)


def _write_vectors(h5, vectors: VectorReader, placement: Placement, good: np.ndarray, storage: Storage) -> None:
    """The `good` rows' vectors, COPY_ROWS at a time, and each chunk's checksum (of the bytes stored)."""
    dim = vectors.dim
    features = h5.create_dataset("features", shape=(len(good), dim), **storage.dataset_options(len(good), dim))
    checksums = h5.create_dataset("checksums", shape=(-(-len(good) // COPY_ROWS),), dtype=np.uint32)
    h5.attrs["checksum_rows"] = COPY_ROWS
    for start in range(0, len(good), COPY_ROWS):
        part = good[start : start + COPY_ROWS]
        block = vectors.read(placement.kind[part], placement.locator[part]).astype(storage.dtype)
        features[start : start + len(part)] = block
        checksums[start // COPY_ROWS] = block_checksum(block)


STRING_OVERHEAD = 64  # bytes HDF5 spends on a variable-length string beside its own: a heap reference
# (16), the heap object's header (16), padding to 8, and a share of its heap collection


def size_bound(images, rows: int, dim: int, storage: Storage, reasons: list, attrs: dict) -> int:
    """More bytes than the store can take: the vectors in whole HDF5 chunks (the last one is
    allocated whole) and uncompressed, every string at 4 bytes a character (UTF-8's most) with
    HDF5's overhead, the number columns, the attributes; plus 5% and 1 MiB for HDF5's own indexes."""
    chunks = storage.dataset_options(rows, dim)["chunks"]
    padded = -(-rows // chunks[0]) * chunks[0] if chunks else rows
    vectors = padded * dim * np.dtype(storage.dtype).itemsize
    texts = [*images.paths, *images.splits, *reasons]
    strings = 4 * sum(map(len, texts)) + STRING_OVERHEAD * len(texts)
    numbers = 3 * 8 * len(images.paths) + 4 * (-(-rows // COPY_ROWS))  # labels, sizes, mtimes; checksums
    attributes = 4 * sum(len(str(value)) + len(key) for key, value in attrs.items()) + 4096
    return int((vectors + strings + numbers + attributes) * 1.05) + (1 << 20)


def _reserve(tmp: Path, size: int, path: Path) -> None:
    """Create the empty HDF5 file `tmp` with `size` bytes allocated to it (HDF5 trims it on close)."""
    import h5py

    probe = tmp.with_name(tmp.name + ".reserve")
    try:  # the space first, in a plain file: if it is not there, HDF5 never starts writing
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
        h5py.File(tmp, "w").close()
        fd = os.open(tmp, os.O_WRONLY)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
    except OSError as error:
        raise OutputError(
            f"cannot write {printable(path)}: {describe_os_error(error)}; it needs up to {size / 2**20:,.0f} MiB"
        ) from None


def _write_columns(group, images, identities: np.ndarray, rows: np.ndarray) -> dict:
    """Paths, splits, labels and file identities of `rows` (strings COPY_ROWS at a time: h5py
    makes an object per string it writes); each column's checksum."""
    columns = {
        name: _write_strings(group, name, (column[i] for i in rows.tolist()), len(rows))
        for name, column in (("paths", images.paths), ("splits", images.splits))
    }
    numbers = {
        "labels": np.asarray(images.labels, dtype=np.int64)[rows],
        "file_size": identities[rows, 0].astype(np.int64),
        "file_mtime_ns": identities[rows, 1].astype(np.int64),
    }
    for name, values in numbers.items():
        group.create_dataset(name, data=values)
        columns[name] = block_checksum(values)
    return columns


def _write_strings(group, name: str, strings, count: int | None = None) -> int:
    """A column of strings, written COPY_ROWS at a time; a name that is not UTF-8 as its own bytes;
    the column's checksum."""
    from itertools import islice

    import h5py

    count = len(strings) if count is None else count
    dataset = group.create_dataset(name, shape=(count,), dtype=h5py.string_dtype("utf-8"))
    strings, crc = iter(strings), 0
    for start in range(0, count, COPY_ROWS):
        part = [s.encode("utf-8", "surrogateescape") for s in islice(strings, COPY_ROWS)]
        dataset[start : start + len(part)] = part
        crc = strings_checksum(part, crc)
    return crc
