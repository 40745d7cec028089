"""Cross-validated search of a head's grid on the training rows (scikit-learn's model selection)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from featurize.errors import CnnfeatError

from .heads import get_head, resolve_grid

SCORINGS = ("accuracy", "balanced_accuracy", "f1_macro")
HALVING_ABOVE = 10_000  # training rows past which `search="auto"` uses successive halving


@dataclass
class SearchResult:
    head: str
    best_params: dict  # short names (C, kernel, ...), JSON-friendly
    cv_mean: float
    cv_std: float
    folds: int
    scoring: str
    candidates: int
    method: str  # "grid" or "halving"
    seconds: float
    pipeline: object  # unfitted Pipeline with the best parameters set (calibrated where the head asks)
    notes: list


def check_folds(y, cv: int) -> tuple[int, list[str]]:
    """Folds to use for labels `y`: lowered, with a note, when a class has fewer rows than `cv`."""
    names, counts = np.unique(y, return_counts=True)
    if len(names) < 2:
        raise CnnfeatError(f"the training rows hold one class only ({names[0] if len(names) else 'none'}); "
                           f"a classifier needs at least two")
    smallest = int(counts.min())
    if smallest < 2:
        rare = ", ".join(str(n) for n, c in zip(names, counts) if c < 2)
        raise CnnfeatError(f"class {rare} has a single training image; cross-validation needs at least 2 "
                           f"per class (add images, or remove the class)")
    if smallest < cv:
        rare = names[counts.argmin()]
        return smallest, [f"class {rare} has only {smallest} training images: using {smallest}-fold "
                          f"cross-validation instead of {cv}"]
    return cv, []


def search_head(name: str, X: np.ndarray, y: np.ndarray, grid=None, cv: int = 5, scoring: str = "accuracy",
                jobs: int = 1, seed: int = 0, search: str = "auto", verbose: int = 0, progress: bool = False,
                log=print) -> SearchResult:
    """Search `name`'s grid by stratified K-fold CV on (X, y); nothing is refitted here."""
    from sklearn.model_selection import ParameterGrid, StratifiedKFold

    head = get_head(name)
    if scoring not in SCORINGS:
        raise CnnfeatError(f"--scoring {scoring!r}; valid: {', '.join(SCORINGS)}")
    grid = resolve_grid(head, grid)
    folds, notes = check_folds(y, cv)
    grid = _fit_neighbours_to_folds(grid, len(X) - -(-len(X) // folds), notes)
    candidates = len(ParameterGrid(grid))
    method = ("halving" if len(X) > HALVING_ABOVE else "grid") if search == "auto" else search
    if head.scales_badly_above and len(X) > head.scales_badly_above:
        notes.append(f"{head.name} with {len(X)} training rows: its default grid may take hours "
                     f"(its cost grows quickly with rows); consider --clf logreg, or narrow --grid")
    for note in notes:
        log(note)
    if head.validation == "slice":  # one validation slice of train, as the torch recipes do
        from sklearn.model_selection import StratifiedShuffleSplit
        splitter, folds = StratifiedShuffleSplit(1, test_size=0.2, random_state=seed), 1
    else:
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    log(f"{head.name}: {method} search over {candidates} candidates x "
        f"{'a 20% validation slice' if folds == 1 else f'{folds} folds'} on {len(X)} rows "
        f"({scoring}, {jobs} job{'s' if jobs != 1 else ''})")
    pipeline = head.build(seed)
    started = time.perf_counter()
    if method == "halving":
        from sklearn.experimental import enable_halving_search_cv  # noqa: F401
        from sklearn.model_selection import HalvingGridSearchCV
        searcher = HalvingGridSearchCV(pipeline, grid, scoring=scoring, cv=splitter, n_jobs=jobs, refit=False,
                                       random_state=seed, verbose=verbose)
    elif method == "grid":
        searcher = _grid_search_class()(pipeline, grid, scoring=scoring, cv=splitter, n_jobs=jobs, refit=False,
                                        verbose=verbose)
        searcher.progress = progress
    else:
        raise CnnfeatError(f"--search {search!r}; valid: auto, grid, halving")
    searcher.fit(X, y)
    best = searcher.best_index_
    results = searcher.cv_results_
    best_params = dict(searcher.best_params_)
    pipeline.set_params(**best_params)
    if head.calibrate:
        from sklearn.calibration import CalibratedClassifierCV
        pipeline.set_params(clf=CalibratedClassifierCV(pipeline.named_steps["clf"], ensemble=False, cv=folds))
    return SearchResult(
        head=head.name, best_params={k.split("__", 1)[1]: _plain(v) for k, v in best_params.items()},
        cv_mean=float(results["mean_test_score"][best]), cv_std=float(results["std_test_score"][best]),
        folds=folds, scoring=scoring, candidates=candidates, method=method,
        seconds=time.perf_counter() - started, pipeline=pipeline, notes=notes,
    )


def _grid_search_class():
    from sklearn.model_selection import GridSearchCV, ParameterGrid
    from tqdm import tqdm

    class GridSearchWithProgress(GridSearchCV):
        """GridSearchCV that evaluates its candidates in chunks (through `_run_search`, scikit-learn's
        hook for search strategies) to show a progress bar with an ETA."""

        progress = False

        def _run_search(self, evaluate_candidates):
            candidates = list(ParameterGrid(self.param_grid))
            chunk = max(1, abs(self.n_jobs or 1)) * 2
            with tqdm(total=len(candidates), unit="candidate", desc="search", disable=not self.progress) as bar:
                for start in range(0, len(candidates), chunk):
                    evaluate_candidates(candidates[start:start + chunk])
                    bar.update(len(candidates[start:start + chunk]))

    return GridSearchWithProgress


def _fit_neighbours_to_folds(grid, fold_rows: int, notes: list) -> list[dict]:
    """KNN cannot ask for more neighbours than a training fold has rows: drop those values."""
    key = "clf__n_neighbors"
    trimmed = [{**g, key: [k for k in g[key] if k <= fold_rows] or [1]} if key in g else g for g in grid]
    if trimmed != grid:
        notes.append(f"n_neighbors above {fold_rows} (the rows of a training fold) left out of the grid")
    return trimmed


def _plain(value):
    """numpy scalars and tuples -> JSON-friendly Python values."""
    if isinstance(value, tuple):
        return list(value)
    return value.item() if hasattr(value, "item") else value
