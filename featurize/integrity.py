"""Checksums of a store's vectors: one CRC-32 per block of rows (the store's write chunk, 1,024 rows),
of the bytes as stored, computed as the store is written and checked as it is read.

A flipped bit in a vector is otherwise silent: a NaN that scikit-learn reports with a traceback, or
a wrong exponent that a head trains on without a word. A reader that finds a block whose bytes do
not match its checksum stops with one line naming the store, and leaves a mark beside it
(`<store>.damaged`) so that the next `extract` checks every block and extracts the damaged rows'
images again.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import StoreError
from .files import printable


class DamagedStore(StoreError):
    """A store whose vectors no longer match their checksums."""

    def __init__(self, path: Path, rows: np.ndarray):
        self.path, self.rows = Path(path), rows
        mark_damaged(self.path)
        super().__init__(
            f"{printable(path)}: the vectors of {len(rows)} rows (from row {int(rows[0])}) do not match their "
            f"checksums: the file was damaged on disk. Run `cnnfeat extract` on its data again: it extracts "
            f"those images again (`cnnfeat extract --verify` checks every row)")


def block_checksum(block: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(block))


def damage_mark(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".damaged")


def mark_damaged(path: Path) -> None:
    """Leave the mark that makes the next extract check every block (best effort: a reader may not
    be allowed to write beside the store, and the error it raises says what to do anyway)."""
    try:
        damage_mark(path).touch()
    except OSError:
        pass


@dataclass(frozen=True)
class Checksums:
    """A store's checksums: `sums[k]` is that of rows k*rows .. (k+1)*rows - 1."""

    sums: np.ndarray
    rows: int

    def check(self, path: Path, first_row: int, block: np.ndarray) -> None:
        """Raise DamagedStore when the stored rows `block`, starting at `first_row` (a multiple of
        `rows`), do not match their checksums."""
        for start in range(0, len(block), self.rows):
            if block_checksum(block[start:start + self.rows]) != int(self.sums[(first_row + start) // self.rows]):
                first = first_row + start
                raise DamagedStore(path, np.arange(first, min(first + self.rows, first_row + len(block))))

    def damaged(self, dataset) -> np.ndarray:
        """Rows of every block of `dataset` that fails its checksum (reads them all, a block at a time)."""
        bad = []
        for first in range(0, dataset.shape[0], self.rows):
            block = dataset[first:first + self.rows]
            if block_checksum(block) != int(self.sums[first // self.rows]):
                bad.append(np.arange(first, first + len(block)))
        return np.concatenate(bad) if bad else np.zeros(0, np.int64)


class CheckedRows:
    """A store's vectors read lazily (`load_features(lazy=True).X`): slicing it reads the blocks that
    hold the rows asked for, checks each against its checksum (`checksums` None: a store from
    before them, read as it is), and gives float32 rows."""

    def __init__(self, path: Path, dataset, checksums: Checksums | None):
        self.path, self.dataset, self.checksums = Path(path), dataset, checksums
        self.shape, self.dtype, self.ndim = dataset.shape, dataset.dtype, 2
        self.block_rows = checksums.rows if checksums is not None else 1

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            index = range(self.shape[0])[key]
            return self[index:index + 1][0]
        if not isinstance(key, slice):  # row indices: fetched in spans of neighbours
            from .store import take_rows
            return take_rows(self, np.asarray(key))
        start, stop, step = key.indices(self.shape[0])
        if start >= stop:
            return np.zeros((0, self.shape[1]), np.float32)
        first = start - start % self.block_rows
        end = min(self.shape[0], -(-stop // self.block_rows) * self.block_rows)
        block = self.dataset[first:end]
        if self.checksums is not None:
            self.checksums.check(self.path, first, block)
        return block[start - first:stop - first:step].astype(np.float32, copy=False)
