"""Nearest neighbours of cached vectors by cosine similarity (faiss, exact inner products on
L2-normalised rows), queried a chunk at a time: memory is the normalised table, the index and one
chunk's answers, never an N x N matrix. What `audit` finds near-duplicates, leaks and outliers with."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from common.errors import CnnfeatError

QUERY_ROWS = 8192  # rows asked at once: their k answers are all that is held beside the index
EXACT_ROWS = 50_000  # up to this many rows an exact index; past it an inverted file (faiss IVF)
PROBES = 16  # inverted lists an IVF query visits (benchmarks/audit_scale.py measures its recall)
READ_ROWS = 65_536  # rows read from the store at once while normalising


class Neighbours(NamedTuple):
    similarity: np.ndarray  # (n, k) float32 cosine similarity, most similar first (-1 where none)
    rows: np.ndarray  # (n, k) int64, the neighbours' rows in the table (-1 where none)


def unit_rows(X) -> np.ndarray:
    """Every row of X (an array or a lazy store) as float32 of length 1 (a zero row stays zero)."""
    unit = np.empty(X.shape, dtype=np.float32)
    for start in range(0, X.shape[0], READ_ROWS):
        block = np.asarray(X[start : start + READ_ROWS], dtype=np.float32)
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        unit[start : start + len(block)] = block / np.where(norms > 0, norms, 1)
    return unit


def nearest(unit: np.ndarray, index_rows: np.ndarray, query_rows: np.ndarray, k: int) -> Neighbours:
    """For each of `query_rows`, its `k` most similar rows among `index_rows` (rows of `unit`); a
    row is never its own neighbour."""
    whole = len(index_rows) == len(unit) and np.array_equal(index_rows, np.arange(len(unit)))
    index = _index(np.ascontiguousarray(unit if whole else unit[index_rows]))  # no copy of the whole table
    asked = min(k + 1, len(index_rows))  # one more: the query row itself may be among them
    similarity = np.full((len(query_rows), k), -1.0, dtype=np.float32)
    found = np.full((len(query_rows), k), -1, dtype=np.int64)
    for start in range(0, len(query_rows), QUERY_ROWS):
        chunk = np.asarray(query_rows[start : start + QUERY_ROWS])
        scores, hits = index.search(np.ascontiguousarray(unit[chunk]), asked)
        rows = np.where(hits >= 0, np.asarray(index_rows)[np.maximum(hits, 0)], -1)
        drop = (rows == chunk[:, None]) | (rows < 0)  # the query itself, and slots faiss left empty
        order = np.argsort(drop, axis=1, kind="stable")[:, :k]  # kept neighbours first, most similar first
        kept = ~np.take_along_axis(drop, order, axis=1)
        width = order.shape[1]
        similarity[start : start + len(chunk), :width] = np.where(kept, np.take_along_axis(scores, order, axis=1), -1)
        found[start : start + len(chunk), :width] = np.where(kept, np.take_along_axis(rows, order, axis=1), -1)
    return Neighbours(similarity, found)


def _index(vectors: np.ndarray):
    """An inner-product index of `vectors`: exact up to EXACT_ROWS rows; past that, an inverted file
    of 4 sqrt(n) lists (trained on a sample of 64 rows a list), which compares each query with the
    rows of its PROBES nearest lists only - near-copies share a list, so they are still found."""
    faiss = _faiss()
    rows, width = vectors.shape
    if rows <= EXACT_ROWS:
        index = faiss.IndexFlatIP(width)
    else:
        lists = int(4 * np.sqrt(rows))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(width), width, lists, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(rows, min(rows, 64 * lists), replace=False)
        index.train(vectors[np.sort(sample)])
        index.nprobe = PROBES
    index.add(vectors)
    return index


def _faiss():
    try:
        import faiss
    except ImportError:
        raise CnnfeatError("audit needs faiss: pip install -e '.[audit]'") from None
    return faiss
