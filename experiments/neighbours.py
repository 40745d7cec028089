"""Nearest neighbours of cached vectors by cosine similarity of centred rows (faiss, inner products
on L2-normalised rows less the indexed rows' mean), read from the table (an array or a lazy store) a
block at a time: memory is the index (one float32 copy of the rows it holds) and one block, never a
normalised copy of the table nor an N x N matrix. What `audit` finds near-duplicates, leaks and
outliers with.

Why centred: pooled CNN features are all positive, so every vector shares a large common part and
any two images look alike (on digits drawn at 8 x 8, lite0's raw cosine put distinct drawings at a
median 0.979 of their nearest other; centred, 0.748: benchmarks/audit_thresholds.py). Taking the mean out leaves what
tells images apart; copies stay near 1 (docs/audit.md has the measurements). Outliers are the
exception: what sets them apart is how far they lie from that common part, which centring and
normalising throw away, so their neighbours are found on the raw vectors."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from common.errors import CnnfeatError

BLOCK_ROWS = 8192  # rows read, normalised, added or asked at once
EXACT_ROWS = 50_000  # up to this many rows an exact index; past it an inverted file (faiss IVF)
PROBES = 16  # inverted lists an IVF query visits (benchmarks/audit_scale.py measures its recall)
CENTRED_ROWS = 8  # fewer indexed rows than this: raw vectors (their mean is mostly the rows themselves)


class Neighbours(NamedTuple):
    similarity: np.ndarray  # (n, k) float32 cosine similarity, most similar first (-1 where none)
    rows: np.ndarray  # (n, k) int64, the neighbours' rows in the table (-1 where none)


def mean_row(X, rows: np.ndarray) -> np.ndarray:
    """The mean of the rows `rows` of X (float64 sums, read a block at a time)."""
    total = np.zeros(X.shape[1])
    for start in range(0, len(rows), BLOCK_ROWS):
        total += np.asarray(X[rows[start : start + BLOCK_ROWS]], dtype=np.float64).sum(axis=0)
    return (total / max(1, len(rows))).astype(np.float32)


def unit_rows(X, rows: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """The rows `rows` of X (in that order) less `centre`, as float32 of length 1 (a zero row stays zero)."""
    block = np.asarray(X[rows], dtype=np.float32) - centre
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    return block / np.where(norms > 0, norms, 1)


def nearest(X, index_rows: np.ndarray, query_rows: np.ndarray, k: int, centred: bool = True) -> Neighbours:
    """For each of `query_rows`, its `k` most similar rows among `index_rows` (rows of X), both
    centred on the mean of `index_rows` (unless not `centred`); a row is never its own neighbour."""
    index_rows, query_rows = np.asarray(index_rows), np.asarray(query_rows)
    centred = centred and len(index_rows) >= CENTRED_ROWS
    centre = mean_row(X, index_rows) if centred else np.zeros(X.shape[1], np.float32)
    index = _index(X, index_rows, centre)
    asked = min(k + 1, len(index_rows))  # one more: the query row itself may be among them
    similarity = np.full((len(query_rows), k), -1.0, dtype=np.float32)
    found = np.full((len(query_rows), k), -1, dtype=np.int64)
    for start in range(0, len(query_rows), BLOCK_ROWS):
        chunk = query_rows[start : start + BLOCK_ROWS]
        scores, hits = index.search(unit_rows(X, chunk, centre), asked)
        rows = np.where(hits >= 0, index_rows[np.maximum(hits, 0)], -1)
        drop = (rows == chunk[:, None]) | (rows < 0)  # the query itself, and slots faiss left empty
        order = np.argsort(drop, axis=1, kind="stable")[:, :k]  # kept neighbours first, most similar first
        kept = ~np.take_along_axis(drop, order, axis=1)
        width = order.shape[1]
        similarity[start : start + len(chunk), :width] = np.where(kept, np.take_along_axis(scores, order, axis=1), -1)
        found[start : start + len(chunk), :width] = np.where(kept, np.take_along_axis(rows, order, axis=1), -1)
    return Neighbours(similarity, found)


def _index(X, rows: np.ndarray, centre: np.ndarray):
    """An inner-product index of the rows `rows` of X, centred and normalised, added a block at a time: exact up to
    EXACT_ROWS rows; past that, an inverted file of 4 sqrt(n) lists (trained on a sample of 64 rows
    a list), which compares each query with the rows of its PROBES nearest lists only - near-copies
    share a list, so they are still found."""
    faiss = _faiss()
    width = X.shape[1]
    if len(rows) <= EXACT_ROWS:
        index = faiss.IndexFlatIP(width)
    else:
        lists = int(4 * np.sqrt(len(rows)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(width), width, lists, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(len(rows), min(len(rows), 64 * lists), replace=False)
        index.train(unit_rows(X, rows[np.sort(sample)], centre))
        index.nprobe = PROBES
    for start in range(0, len(rows), BLOCK_ROWS):
        index.add(unit_rows(X, rows[start : start + BLOCK_ROWS], centre))  # faiss numbers them in order
    return index


def _faiss():
    try:
        import faiss
    except ImportError:
        raise CnnfeatError("audit needs faiss: pip install -e '.[audit]'") from None
    return faiss
