"""Cross-validated search of a head's grid on the training rows (scikit-learn's model selection).

`search_head` is two steps: `plan_search` decides what is searched and how (a SearchPlan, with the
notes that say why where it is not the obvious way), before any fit; `run_search` fits the plan's
searcher (classifiers.searchers) and takes its best candidate, with notes on it (classifiers.edges).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Literal, get_args

import numpy as np

from common.errors import CnnfeatError, error_line

from .edges import edge_notes
from .grids import axes_first, coordinate_count, resolve_grid
from .heads import Head, final_step, get_head, power_head

Scoring = Literal["accuracy", "balanced_accuracy", "f1_macro"]
SCORINGS = get_args(Scoring)
SearchMethod = Literal["auto", "grid", "halving", "coordinate", "path"]
METHODS = get_args(SearchMethod)
Normalize = Literal["none", "power"]  # power: signed square root then L2 before the head (scaling.PowerNormalizer)
NORMALIZE_MODES = get_args(Normalize)
HALVING_ABOVE = 10_000  # training rows past which `search="auto"` uses successive halving for every head
# Training rows past which `search="auto"` uses a head's own cheaper method (Head.auto_search: out-of-bag
# scores for the forest). Below it the full grid is quick anyway.
OWN_METHOD_ABOVE = 1_000
CV_METHODS = ("grid", "halving", "coordinate")  # the methods whose fits are scikit-learn's cross-validation
OOB_FOLDS = 0  # what SearchResult.folds says for out-of-bag scores
NEIGHBOURS = "clf__n_neighbors"


@dataclass(frozen=True)
class SearchSettings:
    """How every head is searched: one object from the command line to the searcher, and the
    source of the reuse key (`result_settings`), so the key cannot forget a setting that changes a number."""

    cv: int = 5
    scoring: Scoring = "accuracy"
    search: SearchMethod = "auto"  # auto: see method_for
    seed: int = 0
    budget: float | None = None  # seconds per head; the search stops at its best candidate so far
    jobs: int = -1  # parallel fits; -1: every core (never changes a number)
    verbose: int = 0
    progress: bool = False
    ray: str | None = None  # "local" or a cluster's address: the CV fits run as Ray tasks (never changes a number)
    normalize: Normalize = "none"

    def result_settings(self) -> dict:
        """The settings that change the fitted heads (not jobs, verbosity or progress)."""
        settings = {
            "cv": self.cv,
            "scoring": self.scoring,
            "search": self.search,
            "seed": self.seed,
            "budget": self.budget,
        }
        if self.normalize != "none":  # absent by default: results saved before it keep their keys
            settings["normalize"] = self.normalize
        return settings

    def method_for(self, head, rows: int) -> str:
        if self.budget is not None:
            return "grid"  # a budget stops an exhaustive search between candidates
        if self.search != "auto":
            return self.search
        if head.auto_search == "path":
            return "path"  # the same scores as the grid at any size, for about one candidate's fits
        if rows > HALVING_ABOVE:
            return "oob" if head.auto_search == "oob" else "halving"
        return head.auto_search if rows > OWN_METHOD_ABOVE else "grid"

    def check(self) -> SearchSettings:
        if self.scoring not in SCORINGS:
            raise CnnfeatError(f"--scoring {self.scoring!r}; valid: {', '.join(SCORINGS)}")
        if self.search not in METHODS:
            raise CnnfeatError(f"--search {self.search!r}; valid: {', '.join(METHODS)}")
        if self.normalize not in NORMALIZE_MODES:
            raise CnnfeatError(f"--normalize {self.normalize!r}; valid: {', '.join(NORMALIZE_MODES)}")
        if self.budget is not None and self.search == "halving":
            raise CnnfeatError(
                "--budget stops an exhaustive grid search between candidates; it does not combine with --search halving"
            )
        return self


@dataclass
class SearchResult:
    head: str
    best_params: dict  # short names (C, kernel, ...), JSON-friendly
    cv_mean: float
    cv_std: float
    folds: int
    scoring: str
    candidates: int
    method: str  # one of METHODS but "auto", or "oob"
    seconds: float
    pipeline: object  # unfitted Pipeline with the best parameters set (calibrated where the head asks)
    notes: list
    evaluated: int = 0  # candidates scored at full size (fewer than `candidates` when the budget ran out)
    fitted: object = None  # `pipeline` already fitted on all the searched rows, where the search made it


@dataclass(frozen=True)
class SearchPlan:
    """What a search will do, all decided before its first fit (`plan_search`)."""

    head: Head  # as searched on these rows: its mini-batch form past MINIBATCH_ABOVE, its memory bound set
    grid: list  # of sub-grids in full names, checked; a coordinate search's axes first
    method: str  # one of METHODS but "auto", or "oob"
    splitter: object  # scikit-learn's CV splitter (unused by out-of-bag scores)
    folds: int  # as SearchResult.folds says it: OOB_FOLDS for out-of-bag scores, 1 for a validation slice
    rows: int
    candidates: int
    settings: SearchSettings
    notes: tuple = ()  # why the plan is not the obvious one (fewer folds, a trimmed grid, ...)

    def describe(self) -> str:
        """The line that says how the head is searched."""
        settings, jobs = self.settings, self.settings.jobs
        scheme = {OOB_FOLDS: "out-of-bag scores", 1: "a 20% validation slice"}.get(self.folds, f"{self.folds} folds")
        swept = (
            f" (one parameter at a time: {coordinate_count(self.grid)} of them)" if self.method == "coordinate" else ""
        )
        cores = "all cores" if jobs == -1 else f"{jobs} job" + ("s" if jobs != 1 else "")
        budget = f", budget {settings.budget:g} s" if settings.budget is not None else ""
        return (
            f"{self.head.name}: {self.method} search over {self.candidates} candidates{swept} x {scheme} on "
            f"{self.rows} rows ({settings.scoring}, {cores}{budget})"
        )


def check_folds(y, cv: int, label_names=None) -> tuple[int, list[str]]:
    """Folds to use for labels `y`: lowered, with a note, when a class has fewer rows than `cv`."""
    names, counts = np.unique(y, return_counts=True)
    if label_names is not None:
        names = np.asarray(label_names, dtype=object)[names]
    if len(names) < 2:
        raise CnnfeatError(
            f"the training rows hold one class only ({names[0] if len(names) else 'none'}); "
            f"a classifier needs at least two"
        )
    smallest = int(counts.min())
    if smallest < 2:
        rare = ", ".join(str(n) for n, c in zip(names, counts) if c < 2)
        raise CnnfeatError(
            f"class {rare} has a single training image; cross-validation needs at least 2 "
            f"per class (add images, or remove the class)"
        )
    if smallest < cv:
        rare = names[counts.argmin()]
        return smallest, [
            f"class {rare} has only {smallest} training images: using {smallest}-fold cross-validation instead of {cv}"
        ]
    return cv, []


def search_head(
    name,
    X: np.ndarray,
    y: np.ndarray,
    grid=None,
    settings: SearchSettings | None = None,
    log=print,
    label_names=None,
    **overrides,
) -> SearchResult:
    """Search head `name`'s grid (a registered name, or a Head, e.g. a fused_head) by stratified
    K-fold CV on (X, y) (`label_names[y]` names the classes in messages when y holds indices).
    Nothing is refitted here; a search that fits the best candidate on all of (X, y) anyway
    (out-of-bag) hands that model back as `fitted`."""
    plan = plan_search(name, y, grid, replace(settings or SearchSettings(), **overrides), label_names)
    check_finite(X, plan.head.name)
    for note in plan.notes:
        log(note)
    log(plan.describe())
    return run_search(plan, X, y, log)


def check_finite(X, head: str, rows_at_once: int = 65_536) -> None:
    """One line, before any fit, where a training vector holds NaN or infinity (a store written by
    other code, a backbone that overflowed): scikit-learn would refuse it inside some folds only."""
    for start in range(0, len(X), rows_at_once):
        bad = np.flatnonzero(~np.isfinite(np.asarray(X[start : start + rows_at_once])).all(axis=1))
        if bad.size:
            raise CnnfeatError(
                f"{head}: the feature vectors are not all finite (training row {start + bad[0]} holds NaN or "
                "infinity); extract them again, or drop those rows"
            )


def plan_search(name, y: np.ndarray, grid=None, settings: SearchSettings | None = None, label_names=None) -> SearchPlan:
    """The SearchPlan for head `name` on training labels `y`; `grid`: --grid (see resolve_grid)."""
    from sklearn.model_selection import ParameterGrid

    settings = (settings or SearchSettings()).check()
    rows = len(y)
    head, head_notes = _head_for_rows(name, rows, len(np.unique(y)))
    if settings.normalize == "power":
        head = power_head(head)
    grid = resolve_grid(head, grid)
    folds, notes = check_folds(y, settings.cv, label_names)
    grid, trimmed = _neighbours_within(grid, rows - -(-rows // folds))
    method, fallback = _method(head, settings, rows)
    notes += head_notes + [note for note in (trimmed, fallback, _slow_note(head, rows)) if note]
    splitter, folds = _splitter(head.validation, folds, settings.seed)
    candidates = len(ParameterGrid(grid))
    if method == "coordinate":
        grid = [axes_first(g, head.axes) for g in grid]
    return SearchPlan(
        head, grid, method, splitter, OOB_FOLDS if method == "oob" else folds, rows, candidates, settings, tuple(notes)
    )


def _head_for_rows(name, rows: int, classes: int) -> tuple[Head, list[str]]:
    """Head `name` as it is searched on `rows` training rows of `classes` classes (its mini-batch
    form, its memory bound), and the notes that say so."""
    named = name if isinstance(name, Head) else get_head(name)
    scaled = named.for_rows(rows)
    head, bound = scaled.bounded(rows, classes)
    notes = [bound] if bound else []
    if scaled is not named:
        notes.insert(
            0,
            f"{head.name} with {rows} training rows: trained on mini-batches "
            f"({type(final_step(head.build(0))).__name__}), every candidate side by side",
        )
    return head, notes


def _neighbours_within(grid: list[dict], fold_rows: int) -> tuple[list[dict], str | None]:
    """KNN cannot ask for more neighbours than a training fold has rows: `grid` without those values,
    and the note that says so (a grid with none left is refused: fitting a value nobody asked for
    would be a silent change)."""
    trimmed = [{**g, NEIGHBOURS: [k for k in g[NEIGHBOURS] if k <= fold_rows]} if NEIGHBOURS in g else g for g in grid]
    if any(g.get(NEIGHBOURS) == [] for g in trimmed):
        asked = ", ".join(str(k) for g in grid for k in g.get(NEIGHBOURS, []))
        raise CnnfeatError(
            f"n_neighbors {asked}: more than the {fold_rows} rows of a training fold; ask for at "
            f"most {fold_rows} (--grid)"
        )
    if trimmed == grid:
        return trimmed, None
    return trimmed, f"n_neighbors above {fold_rows} (the rows of a training fold) left out of the grid"


def _method(head: Head, settings: SearchSettings, rows: int) -> tuple[str, str | None]:
    """How `head` is searched on `rows` rows, and a note where it cannot be searched as asked."""
    method = settings.method_for(head, rows)
    if method == "path" and not hasattr(final_step(head.build(0)), "fit_path"):
        return "grid", f"{head.name} trains no path of candidates side by side: grid search instead"
    return method, None


def _slow_note(head: Head, rows: int) -> str | None:
    if head.scales_badly_above and rows > head.scales_badly_above:
        return (
            f"{head.name} with {rows} training rows: its default grid may take hours "
            f"(its cost grows quickly with rows); consider --clf logreg, or narrow --grid"
        )
    return None


def _splitter(validation: str, folds: int, seed: int):
    from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit

    if validation == "slice":  # one validation slice of train, as the torch recipes do
        return StratifiedShuffleSplit(1, test_size=0.2, random_state=seed), 1
    return StratifiedKFold(folds, shuffle=True, random_state=seed), folds


def run_search(plan: SearchPlan, X, y, log=print) -> SearchResult:
    """Fit `plan`'s searcher on (X, y) and take its best candidate (nothing refitted), with notes on
    it (a budget that ran out, a best value at the edge of its grid), each logged."""
    from .searchers import make_searcher

    started = time.perf_counter()
    pipeline = plan.head.build(plan.settings.seed)
    searcher = make_searcher(plan, pipeline)
    with cross_validation_backend(plan.settings.ray if plan.method in CV_METHODS else None):
        _fit_every_candidate(searcher, X, y, plan.head.name)
    best_params, results, best = dict(searcher.best_params_), searcher.cv_results_, searcher.best_index_
    evaluated = getattr(searcher, "evaluated_", plan.candidates)
    notes = _budget_notes(plan, evaluated) + edge_notes(plan.head, pipeline, plan.grid, best_params, results)
    for note in notes:
        log(note)
    fitted = None if plan.head.calibrate else getattr(searcher, "best_fitted_", None)
    return SearchResult(
        head=plan.head.name,
        best_params={k.split("__", 1)[1]: _json_value(v) for k, v in best_params.items()},
        cv_mean=float(results["mean_test_score"][best]),
        cv_std=float(results["std_test_score"][best]),
        folds=plan.folds,
        scoring=plan.settings.scoring,
        candidates=plan.candidates,
        method=plan.method,
        seconds=time.perf_counter() - started,
        pipeline=_best_pipeline(plan, pipeline, best_params),
        notes=[*plan.notes, *notes],
        evaluated=evaluated,
        fitted=fitted,
    )


def _budget_notes(plan: SearchPlan, evaluated: int) -> list[str]:
    if plan.settings.budget is None or evaluated >= plan.candidates:
        return []
    return [
        f"{plan.head.name}: the {plan.settings.budget:g} s budget ran out after {evaluated} of "
        f"{plan.candidates} candidates; the best of those was kept"
    ]


def _best_pipeline(plan: SearchPlan, pipeline, best_params: dict):
    """`pipeline` (unfitted) with the best parameters, as it is refitted: calibrated where the head
    asks, a forest on every core."""
    pipeline.set_params(**best_params)
    if plan.method == "oob":
        pipeline.set_params(clf__n_jobs=plan.settings.jobs)  # the refit too uses every core
    if plan.head.calibrate:
        from sklearn.calibration import CalibratedClassifierCV

        pipeline.set_params(
            clf=CalibratedClassifierCV(
                pipeline.named_steps["clf"], ensemble=False, cv=plan.folds, n_jobs=plan.settings.jobs
            )
        )
    return pipeline


def _fit_every_candidate(searcher, X, y, head: str) -> None:
    """searcher.fit, where a search whose every fit failed (a --grid value refused at fit time that no
    parameter check catches, e.g. an MLP layer of 0 units) is one line saying why, not a traceback."""
    try:
        searcher.fit(X, y)
    except ValueError as error:
        if "fits failed" not in str(error):
            raise
        raise CnnfeatError(f"{head}: its fits failed ({error_line(error, last=True)}); check --grid") from None


@contextmanager
def cross_validation_backend(ray_address: str | None):
    """With --ray, scikit-learn's cross-validation fits run as tasks on a Ray cluster (Ray's joblib
    backend): the same fits, the same scores, on more cores. The out-of-bag and path searches have
    no CV fits to spread and stay here."""
    if not ray_address:
        yield
        return
    import joblib

    from featurize import connect_ray

    connect_ray(ray_address, "cpu")
    from ray.util.joblib import register_ray

    register_ray()
    with joblib.parallel_backend("ray"):
        yield


def _json_value(value):
    """numpy scalars and tuples -> JSON-friendly Python values."""
    if isinstance(value, tuple):
        return list(value)
    return value.item() if hasattr(value, "item") else value
