"""The append-only journal of an unfinished extraction (`<store>.partial`).

A plain binary log rather than HDF5, because it must survive a kill at any byte: HDF5 keeps
metadata that a kill mid-write can leave unreadable, losing every row. Here each batch is one
self-checking record (magic, row count, length, CRC-32, then the JSON of its paths, identities and
reasons, then its float32 vectors), appended with one write. Reading stops at the first record
that is short or fails its checksum - the batch a kill tore - so everything before it is salvaged,
and the next append truncates the torn tail first.
"""

from __future__ import annotations

import json
import os
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.errors import OutputError, describe_os_error
from common.names import printable

MAGIC = b"CNNFEAT-JOURNAL 1\n"
RECORD = struct.Struct("<4sIII")  # b"ROWS", rows, JSON bytes, CRC-32 of JSON + vectors
RECORD_MAGIC = b"ROWS"
FSYNC_EVERY_S = 2.0  # a kill -9 loses nothing already written; fsync bounds what power loss can take


@dataclass
class Rows:
    """Rows of a journal, in order: one per image, good (a vector) or skipped (a reason)."""

    paths: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)
    offsets: list = field(default_factory=list)  # each row's vector's byte offset in the journal, None where skipped
    reasons: list[str] = field(default_factory=list)  # "" where good

    def append(self, path, identity, offset: int | None, reason=""):
        self.paths.append(path)
        self.sizes.append(int(identity[0]))
        self.mtimes.append(int(identity[1]))
        self.offsets.append(offset)
        self.reasons.append(reason)

    def identities(self) -> np.ndarray:
        """(N, 2) int64: each row's file identity (size, mtime)."""
        return np.column_stack([self.sizes, self.mtimes]).astype(np.int64).reshape(-1, 2)

    def locators(self) -> list[int]:
        """Each row's locator in a Placement (placement.IN_JOURNAL): its vector's byte offset (0 where skipped)."""
        return [0 if offset is None else offset for offset in self.offsets]


@dataclass
class Salvage:
    """What a journal holds: its rows, where its last good record ends, and what was past it."""

    rows: Rows
    good_bytes: int
    torn_bytes: int  # bytes after the last good record (a batch a kill interrupted)
    fingerprint: str | None  # None: no readable header


def read_journal(path: Path, dim: int) -> Salvage:
    """The rows of the journal at `path`, read record by record (memory: one record); their
    vectors are left in the file (their byte offsets)."""
    rows = Rows()
    if not path.exists():
        return Salvage(rows, 0, 0, None)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        header, header_end = _read_header(f)
        if header is None:
            return Salvage(rows, 0, size, None)
        if header.get("dim") != dim:
            return Salvage(rows, header_end, size - header_end, None)
        end = header_end  # where the last whole record ends: the loop leaves it there
        for meta, first, end in _records(f, header_end, size, dim):  # noqa: B007
            for k, (p, (s, m), r) in enumerate(zip(meta["paths"], meta["identities"], meta["reasons"])):
                rows.append(p, (s, m), None if r else first + k * dim * 4, r)
    return Salvage(rows, end, size - end, header.get("fingerprint"))


def _read_header(f) -> tuple[dict | None, int]:
    """The journal's header (its fingerprint and dim) and where it ends; None where it is not one."""
    head = f.read(len(MAGIC) + 4096)
    header_end = head.find(b"\n", len(MAGIC)) + 1
    if not head.startswith(MAGIC) or header_end == 0:
        return None, 0
    try:
        return json.loads(head[len(MAGIC) : header_end]), header_end
    except ValueError:
        return None, 0


def _records(f, offset: int, size: int, dim: int):
    """(the JSON of its rows, the byte offset of its first vector, where it ends) of each whole record
    from `offset` on, up to the first one that is short or fails its checksum."""
    while offset + RECORD.size <= size:
        f.seek(offset)
        magic, count, meta_bytes, crc = RECORD.unpack(f.read(RECORD.size))
        body_end = offset + RECORD.size + meta_bytes + count * dim * 4
        if magic != RECORD_MAGIC or body_end > size:
            return
        body = f.read(body_end - offset - RECORD.size)
        if zlib.crc32(body) != crc:
            return
        yield json.loads(body[:meta_bytes]), offset + RECORD.size + meta_bytes, body_end
        offset = body_end


def read_vectors(f, offsets: list[int], dim: int) -> np.ndarray:
    """The vectors at byte `offsets` of the open journal `f`, (len(offsets), dim) float32; one read
    per run of vectors that lie back to back (a batch's rows do)."""
    out = np.empty((len(offsets), dim), np.float32)
    for first, end in runs(offsets, dim * 4):
        f.seek(offsets[first])
        out[first:end] = np.frombuffer(f.read((end - first) * dim * 4), np.float32).reshape(end - first, dim)
    return out


class Journal:
    """Appends batches of rows to `path` for the store whose fingerprint is `fp`."""

    def __init__(self, path: Path, fp: str, dim: int):
        self.path, self.fp, self.dim = path, fp, dim
        self._fd = None
        self._end = 0  # the file's length: where the next record starts
        self._synced = 0.0
        self._salvage = None  # what resume() read, so the first append need not read it again

    def resume(self) -> tuple[Rows | None, list[str]]:
        """Rows a killed run left for these settings (None if there are none), and notes to show."""
        if not self.path.exists():
            return None, []
        salvage = read_journal(self.path, self.dim)
        self._salvage = Salvage(Rows(), salvage.good_bytes, salvage.torn_bytes, salvage.fingerprint)  # for _open
        if salvage.fingerprint is None:
            return None, [f"{self.path.name}: no readable rows (a run killed while starting); starting afresh"]
        if salvage.fingerprint != self.fp:
            return None, [f"{self.path.name} was written with other settings; its rows are not used"]
        notes = []
        if salvage.torn_bytes:
            notes.append(
                f"{self.path.name}: dropped the last, torn batch ({salvage.torn_bytes} bytes) of an "
                f"interrupted run; the {len(salvage.rows.paths)} rows before it are kept"
            )
        return salvage.rows, notes

    def append(self, paths, identities, vectors, reasons) -> np.ndarray:
        """Append one batch as one record; the byte offset where each row's vector now lies. A write
        that fails (disk full, file-size limit) is an OutputError; the records before it stay whole."""
        try:
            return self._append(paths, identities, vectors, reasons)
        except OSError as error:
            raise OutputError(f"cannot write {printable(self.path)}: {describe_os_error(error)}") from None

    def _append(self, paths, identities, vectors, reasons) -> np.ndarray:
        if self._fd is None:
            self._open()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(paths), self.dim)
        meta = json.dumps(
            {"paths": list(paths), "identities": [[int(s), int(m)] for s, m in identities], "reasons": list(reasons)}
        ).encode()
        body = meta + vectors.tobytes()
        record = RECORD.pack(RECORD_MAGIC, len(paths), len(meta), zlib.crc32(body)) + body
        first = self._end + RECORD.size + len(meta)
        _write_all(self._fd, record)  # appended whole or torn at the end, never reordered
        self._end += len(record)
        if time.monotonic() - self._synced > FSYNC_EVERY_S:
            os.fsync(self._fd)
            self._synced = time.monotonic()
        return first + np.arange(len(paths), dtype=np.int64) * self.dim * 4

    def _open(self):
        salvage = self._salvage or (read_journal(self.path, self.dim) if self.path.exists() else None)
        if salvage is not None and salvage.fingerprint == self.fp:
            fd = os.open(self.path, os.O_WRONLY)
            os.ftruncate(fd, salvage.good_bytes)  # drop a torn tail before appending after it
            self._end = os.lseek(fd, salvage.good_bytes, os.SEEK_SET)
        else:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            header = MAGIC + json.dumps({"fingerprint": self.fp, "dim": self.dim}).encode() + b"\n"
            _write_all(fd, header)
            self._end = len(header)
        self._fd = fd
        self._synced = time.monotonic()

    def close(self, quiet: bool = False):
        """fsync and close; `quiet`: on the way out of a failed run, where a second error (fsync on a
        full disk) must not hide the first."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)
        except OSError:
            if not quiet:
                raise
        finally:
            os.close(fd)

    def remove(self):
        self.close()
        self.path.unlink(missing_ok=True)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def runs(starts: list[int], step: int):
    """(first, end) index ranges of `starts` whose values follow each other by `step`: the rows (or
    byte offsets) that one read can fetch together."""
    first = 0
    while first < len(starts):
        end = first + 1
        while end < len(starts) and starts[end] == starts[end - 1] + step:
            end += 1
        yield first, end
        first = end
