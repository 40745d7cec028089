"""Where each image's vector lies while a store is brought up to date: numpy columns aligned with
the image list, a few dozen bytes a row, where a dict of tuples cost ~0.7 KB a row.

The old store's rows, an interrupted run's journal and this run's batches all land here by the
image's position (later ones win), and write_store reads it a chunk at a time.
"""

from __future__ import annotations

import numpy as np

# Each image's `kind`, and what its `locator` then is:
NOWHERE = 0  # no vector yet (the locator is unused)
IN_STORE = 1  # the vector is in the store being replaced: the locator is its row there
IN_JOURNAL = 2  # in the journal (`<store>.partial`): the locator is the vector's byte offset in that file
IN_MEMORY = 3  # in an array in memory (VectorReader's `memory`): the locator is its row there
SKIPPED = 4  # no vector: the image is unreadable, and `reasons` says why (the locator is unused)


class PathIndex:
    """Position of a path in `paths`, found by its sorted 64-bit hash (16 bytes a path); every hit
    is checked against the path itself, so a collision costs a comparison, never a wrong row."""

    def __init__(self, paths):
        self.paths = paths
        hashes = _hashes(paths)
        self.order = np.argsort(hashes, kind="stable")
        self.sorted = hashes[self.order]

    def positions(self, paths) -> np.ndarray:
        """Position of each of `paths` in the indexed list, -1 where it is not there."""
        hashes = _hashes(paths)
        at = np.searchsorted(self.sorted, hashes)
        found = np.full(len(paths), -1, np.int64)
        for k, (start, path) in enumerate(zip(at.tolist(), paths)):
            while start < len(self.sorted) and self.sorted[start] == hashes[k]:  # one step, bar a collision
                if self.paths[self.order[start]] == path:
                    found[k] = self.order[start]
                    break
                start += 1
        return found


def _hashes(paths) -> np.ndarray:
    return np.fromiter((hash(p) for p in paths), np.int64, count=len(paths))


class Placement:
    """For each image of a list: where its vector is (`kind`, and `locator`, whose meaning depends on
    the kind: see above), the identity (size, mtime) of the file it was made from, and why it is
    skipped where it is."""

    def __init__(self, paths):
        rows = len(paths)
        self.index = PathIndex(paths)
        self.kind = np.full(rows, NOWHERE, np.int8)
        self.locator = np.zeros(rows, np.int64)
        self.identity = np.full((rows, 2), -2, np.int64)  # -2: no file has that identity
        self.reasons: dict[int, str] = {}

    def put(self, positions, identities, locators, reasons, kind: int = IN_JOURNAL) -> int:
        """Record rows of `kind` (skipped where their reason is not ""); rows of paths not in the
        list are ignored and counted; of two rows of one image, the later wins."""
        positions = np.asarray(positions, np.int64)
        present = np.flatnonzero(positions >= 0)
        _, last = np.unique(positions[present][::-1], return_index=True)
        keep = np.sort(present[len(present) - 1 - last])
        reasons = [reasons[k] for k in keep.tolist()]
        rows = positions[keep]
        self.kind[rows] = np.where([bool(r) for r in reasons], SKIPPED, kind).astype(np.int8)
        self.locator[rows] = np.asarray(locators, np.int64)[keep]
        self.identity[rows] = np.asarray(identities, np.int64).reshape(-1, 2)[keep]
        for row, reason in zip(rows.tolist(), reasons):
            if reason:
                self.reasons[row] = reason
            else:
                self.reasons.pop(row, None)
        return len(positions) - len(present)

    def put_paths(self, paths, identities, locators, reasons, kind: int = IN_JOURNAL) -> int:
        """put() for rows named by path; how many name no image of the list."""
        return self.put(self.index.positions(paths), identities, locators, reasons, kind)

    def todo(self, identities: np.ndarray) -> np.ndarray:
        """Positions with no vector, or one made from a file that has changed since."""
        return np.flatnonzero((self.kind == NOWHERE) | (self.identity != identities).any(axis=1))

    def forget(self, kind: int, locators: np.ndarray) -> int:
        """Take back the rows of `kind` whose vectors lie at `locators` (damaged ones): extracted again; how many."""
        lost = (self.kind == kind) & np.isin(self.locator, locators)
        self.kind[lost] = NOWHERE
        return int(lost.sum())

    def skipped(self) -> np.ndarray:
        return np.flatnonzero(self.kind == SKIPPED)
