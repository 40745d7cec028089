"""`cnnfeat audit`: what is wrong with the data before any score is trusted, found on the cached
vectors in seconds: leaks (a held-out image with a near-copy in train), duplicates inside a split,
likely wrong labels (cleanlab on out-of-fold probabilities) and outliers (far from every other
image). Writes OUT/audit/<feature file stem>/: issues.csv, audit.md, audit.json, audit.html."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from classifiers import SearchSettings
from common.errors import CnnfeatError
from common.files import ensure_writable
from common.hashing import file_sha256
from featurize import load_features

from .audit_report import ISSUES, write_audit
from .choices import AUDIT_NEAR
from .fit import chosen_features
from .label_issues import out_of_fold, ranked_label_issues
from .layout import audit_dir
from .neighbours import Neighbours, nearest, unit_rows
from .splits import train_eval_split

NEAR = AUDIT_NEAR  # experiments/choices.py says where it comes from
EXACT = 0.9999  # at or above: compare the files' bytes (sha256): an exact copy scores 1
NEIGHBOURS = 10  # per image: its duplicates within a split, and the mean distance that scores outliers
OUTLIER_Z = 3.5  # robust z-score (median and MAD of the distances) past which an image is an outlier


@dataclass(frozen=True)
class AuditSettings:
    clf: str = "logreg"  # the head whose out-of-fold probabilities the label check reads
    near: float = NEAR
    outlier_z: float = OUTLIER_Z
    search: SearchSettings = field(default_factory=lambda: SearchSettings(cv=5))  # its folds are the label check's

    def check(self) -> AuditSettings:
        if not 0 < self.near <= 1:
            raise CnnfeatError(f"--near {self.near}: a cosine similarity in (0, 1]")
        self.search.check()
        return self


class Finding(NamedTuple):
    row: int
    issue: str  # one of ISSUES
    score: float  # in [0, 1], higher = more suspicious
    suggested: int | None = None  # label: the likely class
    other: int | None = None  # leak, duplicate: the other image's row


@dataclass
class AuditOutcome:
    folder: Path
    findings: list
    markdown: str


def audit(features=None, out="artifacts", settings: AuditSettings | None = None, log=print) -> list[AuditOutcome]:
    """Audit each feature file asked for (default: the newest under OUT/features)."""
    settings = (settings or AuditSettings()).check()
    _check_libraries()
    paths = [Path(p) for p in features] if features else [chosen_features(None, out, log)]
    return [audit_file(path, out, settings, log) for path in paths]


def audit_file(path: Path, out, settings: AuditSettings, log) -> AuditOutcome:
    data = load_features(path)
    folder = ensure_writable(audit_dir(out, path.stem))
    split = train_eval_split(data, settings.search.seed)
    unit = unit_rows(data.X)
    rows = np.arange(len(unit))
    found = nearest(unit, rows, rows, NEIGHBOURS)  # one search answers copies, leaks and outliers
    findings = leaks(data, split, found, settings.near) + duplicates(data, found, settings.near)
    labels, probabilities = label_findings(data, split, settings, log)
    findings += labels + outliers(found, settings.outlier_z)
    findings.sort(key=lambda f: (ISSUES.index(f.issue), -f.score, f.row))
    markdown = write_audit(folder, data, split, findings, probabilities, asdict(settings))
    return AuditOutcome(folder, findings, markdown)


def leaked_rows(data, split, near: float = NEAR) -> np.ndarray:
    """The held-out rows with a near-copy in train (compare's leak check, the same rule as audit's)."""
    if not len(split.heldout) or not len(split.train):
        return np.zeros(0, dtype=np.int64)
    found = nearest(unit_rows(data.X), split.train, split.heldout, 1)
    return split.heldout[found.similarity[:, 0] >= near]


def _check_libraries() -> None:
    try:
        import cleanlab  # noqa: F401
        import faiss  # noqa: F401
    except ImportError as error:
        raise CnnfeatError(f"audit needs {error.name}: pip install -e '.[audit]'") from None


def leaks(data, split, found: Neighbours, near: float) -> list[Finding]:
    """Each held-out image whose most similar training image (among its nearest) is at `near` or
    above. Not for a seeded hold-out: no held-out image of the store's own to leak into."""
    if split.name == "holdout":
        return []
    is_train = np.zeros(len(data.y), dtype=bool)
    is_train[split.train] = True
    findings = []
    for row in split.heldout:
        for score, other in zip(found.similarity[row], found.rows[row]):
            if other >= 0 and is_train[other] and score >= near:
                findings.append(Finding(int(row), "leak", _copy_score(data, row, other, score), other=int(other)))
                break
    return findings


def duplicates(data, found: Neighbours, near: float) -> list[Finding]:
    """Pairs of images in one split at `near` or above, each pair once."""
    splits = np.asarray(data.splits)
    findings = []
    for row, (scores, others) in enumerate(zip(found.similarity, found.rows)):
        for score, other in zip(scores, others):
            if other > row and score >= near and splits[other] == splits[row]:
                score = _copy_score(data, row, other, score)
                findings.append(Finding(row, "duplicate", score, other=int(other)))
    return findings


def _copy_score(data, row: int, other: int, similarity: float) -> float:
    """The similarity, or 1 for files with the same bytes (an exact copy)."""
    if similarity >= EXACT and _sha256(data, row) == _sha256(data, other):
        return 1.0
    return float(min(similarity, 1.0 - 1e-6))  # below an exact copy's 1, whatever the rounding


def _sha256(data, row: int) -> str | None:
    try:
        return file_sha256(Path(data.data_root, str(data.paths[row])))
    except OSError:
        return None  # gone since extraction: not called exact


def label_findings(data, split, settings: AuditSettings, log) -> tuple[list[Finding], np.ndarray]:
    """Likely wrong labels, training rows by out-of-fold probabilities and held-out rows by the
    model fitted on train; returns them and every row's probabilities (the report's typical images)."""
    classes = len(data.class_names)
    found = out_of_fold(data.X, data.y, split, classes, settings.clf, settings.search, log)
    probabilities = np.zeros((len(data.y), classes))
    probabilities[split.train], probabilities[split.heldout] = found.train, found.heldout
    findings = []
    for rows in (split.train, split.heldout):
        for row in rows[ranked_label_issues(data.y[rows], probabilities[rows])]:
            given = probabilities[row, data.y[row]]
            findings.append(Finding(int(row), "label", float(1 - given), suggested=int(probabilities[row].argmax())))
    return findings, probabilities


def outliers(found: Neighbours, z: float) -> list[Finding]:
    """Images far from every other: the mean cosine distance to their nearest NEIGHBOURS, a robust
    z-score above `z` (Iglewicz and Hoaglin's 3.5 by default); scored by the distance's rank."""
    if found.rows.shape[0] <= NEIGHBOURS:
        return []
    distance = 1 - found.similarity.mean(axis=1)
    median = np.median(distance)
    mad = np.median(np.abs(distance - median)) or 1e-12
    robust_z = 0.6745 * (distance - median) / mad
    rank = distance.argsort().argsort() / max(1, len(distance) - 1)
    return [Finding(int(row), "outlier", float(rank[row])) for row in np.flatnonzero(robust_z > z)]
