"""`cnnfeat audit`: what is wrong with the data before any score is trusted, found on the cached
vectors in seconds: leaks (a held-out image with a near-copy in train), duplicates inside a split,
likely wrong labels (cleanlab on out-of-fold probabilities) and outliers (far from every other
image). Writes OUT/audit/<feature file stem>/: issues.csv, audit.md, audit.json, audit.html."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from classifiers import SearchSettings
from common.errors import CnnfeatError
from common.files import ensure_writable
from featurize import load_features

from .audit_checks import NEIGHBOURS, OUTLIER_Z, duplicates, leaks, outliers
from .audit_report import ISSUES, write_audit
from .choices import AUDIT_NEAR
from .fit import chosen_features
from .label_issues import label_findings
from .layout import audit_dir
from .neighbours import nearest
from .splits import Split, train_eval_split


@dataclass(frozen=True)
class AuditSettings:
    clf: str = "logreg"  # the head whose out-of-fold probabilities the label check reads
    near: float = AUDIT_NEAR
    outlier_z: float = OUTLIER_Z
    search: SearchSettings = field(default_factory=lambda: SearchSettings(cv=5))  # its folds are the label check's

    def check(self) -> AuditSettings:
        if not 0 < self.near <= 1:
            raise CnnfeatError(f"--near {self.near}: a cosine similarity in (0, 1]")
        self.search.check()
        return self


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
    outcomes = []
    for path in paths:
        try:
            outcomes.append(audit_file(path, out, settings, log))
        except CnnfeatError as error:
            raise CnnfeatError(f"{path.name}: {error}" if len(paths) > 1 else str(error)) from None
    return outcomes


def audit_file(path: Path, out, settings: AuditSettings, log) -> AuditOutcome:
    data = load_features(path, lazy=True)  # read a block at a time: the neighbour index is the one copy in memory
    folder = ensure_writable(audit_dir(out, path.stem))
    split = audit_split(data, settings.search.seed)
    rows = np.arange(len(data.y))
    findings, alike = leaks(data, split, settings.near) if split.name != "holdout" else ([], 0.0)
    findings += duplicates(data, nearest(data.X, rows, rows, NEIGHBOURS), settings.near)
    findings += outliers(nearest(data.X, rows, rows, NEIGHBOURS, centred=False), settings.outlier_z)
    labels, probabilities, notes = label_findings(data, split, settings.clf, settings.search, log)
    findings += labels
    findings.sort(key=lambda f: (ISSUES.index(f.issue), -f.score, f.row))
    record = asdict(settings) | {"label_check": notes}
    markdown = write_audit(folder, data, split, findings, probabilities, record, alike)
    return AuditOutcome(folder, findings, markdown)


def audit_split(data, seed: int) -> Split:
    """Training rows, and every other split's (val and test) held out; with no split but train (or
    none), compare's seeded hold-out, whose images the leak check leaves alone (they are the
    store's training images)."""
    splits = np.asarray(data.splits)
    train, heldout = np.flatnonzero(splits == "train"), np.flatnonzero((splits != "train") & (splits != ""))
    if len(train) and len(heldout):
        return Split(train, heldout, "+".join(s for s in ("val", "test") if s in set(splits[heldout])), None)
    return train_eval_split(data, seed)


def _check_libraries() -> None:
    try:
        import cleanlab  # noqa: F401
        import faiss  # noqa: F401
    except ImportError as error:
        raise CnnfeatError(f"audit needs {error.name}: pip install -e '.[audit]'") from None
