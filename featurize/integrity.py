"""Checksums of a store: one CRC-32 per block of vectors (the store's write chunk, 1,024 rows), of
the bytes as stored, and one per column (labels, splits, paths, ...) and for its attributes as a
whole (the store's "seal"), all computed as the store is written and checked as it is read.

A flipped bit in a vector is otherwise silent: a NaN that scikit-learn reports with a traceback, or
a wrong exponent that a head trains on without a word. A block that does not match its checksum,
or that HDF5 cannot read at all (a damaged compressed chunk), stops its reader with one line naming
the store, and leaves a mark beside it (`<store>.damaged`) so that the next `extract` checks every
block and extracts the damaged rows' images again.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.errors import StoreError
from common.names import printable

READ_BYTES = 4 << 20  # take_rows reads a lazy store in spans of about this many bytes


class DamagedStore(StoreError):
    """A store whose vectors no longer match their checksums, or cannot be read."""

    def __init__(self, path: Path, rows: np.ndarray):
        self.path, self.rows = Path(path), rows
        super().__init__(
            f"{printable(path)}: the vectors of {len(rows)} rows (from row {int(rows[0])}) cannot be read or do "
            f"not match their checksums: the file was damaged on disk. Run `cnnfeat extract` on its data again: it "
            f"extracts those images again (`cnnfeat extract --verify` checks every row)"
        )


def block_checksum(block: np.ndarray, crc: int = 0) -> int:
    return zlib.crc32(np.ascontiguousarray(block), crc)


def strings_checksum(encoded: list, crc: int = 0) -> int:
    """Of a column of strings, as the bytes stored (`crc`: of the strings before these)."""
    return zlib.crc32(b"".join(value + b"\0" for value in encoded), crc)


def attributes_checksum(attrs) -> int:
    """Of a store's attributes as stored (`complete` and the seal itself aside), in a canonical form:
    h5py gives back numpy scalars and, for a path that is not UTF-8, bytes."""

    def plain(value):
        if isinstance(value, (bytes, np.bytes_)):
            return bytes(value).decode("utf-8", "surrogateescape")
        return value.item() if hasattr(value, "item") else value

    canonical = {key: plain(attrs[key]) for key in sorted(attrs) if key not in ("complete", "sealed")}
    return zlib.crc32(json.dumps(canonical, sort_keys=True).encode())


def damage_mark(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".damaged")


def found_damage(path: Path, rows: np.ndarray) -> DamagedStore:
    """The error to raise for damaged `rows`, once the mark that makes the next extract check every
    block is left (best effort: a reader may not be allowed to write beside the store, and the
    error says what to do anyway)."""
    try:
        damage_mark(path).touch()
    except OSError:
        pass
    return DamagedStore(path, rows)


@dataclass(frozen=True)
class Checksums:
    """A store's checksums: `sums[k]` is that of rows k*rows .. (k+1)*rows - 1."""

    sums: np.ndarray
    rows: int

    def matches(self, first_row: int, block: np.ndarray) -> bool:
        """Whether the stored rows `block`, starting at `first_row` (a multiple of `rows`), match."""
        return all(
            block_checksum(block[start : start + self.rows]) == int(self.sums[(first_row + start) // self.rows])
            for start in range(0, len(block), self.rows)
        )

    def damaged(self, dataset) -> np.ndarray:
        """Rows of every block of `dataset` that fails its checksum or cannot be read (reads them all,
        a block at a time)."""
        bad = []
        for first in range(0, dataset.shape[0], self.rows):
            rows = np.arange(first, min(first + self.rows, dataset.shape[0]))
            block = _read(dataset, first, first + len(rows))
            if block is None or not self.matches(first, block):
                bad.append(rows)
        return np.concatenate(bad) if bad else np.zeros(0, np.int64)


def _read(dataset, start: int, stop: int) -> np.ndarray | None:
    """dataset[start:stop], or None where HDF5 cannot read it (a compressed chunk that fails to
    decompress raises OSError, not a checksum mismatch)."""
    try:
        return dataset[start:stop]
    except OSError:
        return None


class CheckedRows:
    """A store's vectors read lazily (`load_features(lazy=True).X`): slicing it reads the blocks that
    hold the rows asked for, checks each against its checksum (`checksums` None: a store from
    before them, read as it is), and gives float32 rows. `np.asarray` of it reads every row."""

    def __init__(self, path: Path, dataset, checksums: Checksums | None):
        self.path, self.dataset, self.checksums = Path(path), dataset, checksums
        self.shape, self.dtype, self.ndim = dataset.shape, dataset.dtype, 2
        self.block_rows = checksums.rows if checksums is not None else 1

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        rows = self[:]
        return rows if dtype is None else rows.astype(dtype, copy=False)

    def __iter__(self):
        span = max(
            self.block_rows, READ_BYTES // (self.shape[1] * self.dtype.itemsize) // self.block_rows * self.block_rows
        )
        for start in range(0, self.shape[0], span):
            yield from self[start : start + span]

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            index = range(self.shape[0])[key]
            return self[index : index + 1][0].copy()  # not a view that keeps its whole block alive
        if not isinstance(key, slice):  # row indices: fetched in spans of neighbours
            return take_rows(self, np.asarray(key))
        start, stop, step = key.indices(self.shape[0])
        if start >= stop:
            return np.zeros((0, self.shape[1]), np.float32)
        out = np.empty((stop - start, self.shape[1]), np.float32)
        first, last = start - start % self.block_rows, -(-stop // self.block_rows) * self.block_rows
        for begin in range(first, stop, self._span()):  # whole blocks, a few MB at a time
            end = min(self.shape[0], begin + self._span(), last)
            block = self._checked(begin, end)
            lo, hi = max(begin, start), min(end, stop)
            out[lo - start : hi - start] = block[lo - begin : hi - begin]
        return out[::step] if step != 1 else out

    def _span(self) -> int:
        rows = max(1, READ_BYTES // (self.shape[1] * self.dtype.itemsize))
        return -(-rows // self.block_rows) * self.block_rows

    def _checked(self, begin: int, end: int) -> np.ndarray:
        block = _read(self.dataset, begin, end)
        if block is None or (self.checksums is not None and not self.checksums.matches(begin, block)):
            raise found_damage(self.path, self._bad_rows(begin, end))
        return block

    def _bad_rows(self, begin: int, end: int) -> np.ndarray:
        """The rows of the blocks between `begin` and `end` that fail (each block read on its own)."""
        if self.checksums is None:
            return np.arange(begin, end)
        bad = [
            np.arange(b, min(b + self.block_rows, end))
            for b in range(begin, end, self.block_rows)
            if (block := _read(self.dataset, b, min(b + self.block_rows, end))) is None
            or not self.checksums.matches(b, block)
        ]
        return np.concatenate(bad) if bad else np.arange(begin, end)


def take_rows(X, rows: np.ndarray, block: int | None = None) -> np.ndarray:
    """X[rows] as float32, where X is an array or a lazily loaded store's vectors: those are read in
    spans of neighbouring rows (whole checksum blocks, each read and checked once), so only the rows
    asked for are ever held (a million-row `fit` needs its training rows in memory, not the whole
    matrix beside them)."""
    rows = np.asarray(rows, dtype=np.int64)
    if isinstance(X, np.ndarray):
        return X[rows].astype(np.float32, copy=False)
    align = getattr(X, "block_rows", 1)
    block = block or max(1, READ_BYTES // (X.shape[1] * X.dtype.itemsize))
    block = -(-block // align) * align
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    out = np.empty((len(rows), X.shape[1]), np.float32)
    first = int(ordered[0]) - int(ordered[0]) % align if len(rows) else 0
    for begin in range(first, int(ordered[-1]) + 1, block) if len(rows) else ():
        lo, hi = np.searchsorted(ordered, [begin, begin + block])
        if hi > lo:  # one read of the span holding these rows, then the rows asked for
            out[order[lo:hi]] = X[begin : int(ordered[hi - 1]) + 1][ordered[lo:hi] - begin]
    return out
