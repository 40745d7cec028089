"""Cross-validated search of a head's grid on the training rows (scikit-learn's model selection)."""
from __future__ import annotations

import copy
import json
import numbers
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np

from common.errors import CnnfeatError, error_line

from .heads import Head, get_head, refusal, resolve_grid

SCORINGS = ("accuracy", "balanced_accuracy", "f1_macro")
METHODS = ("auto", "grid", "halving", "coordinate", "path")
HALVING_ABOVE = 10_000  # training rows past which `search="auto"` uses successive halving for every head
# Training rows past which `search="auto"` uses a head's own cheaper method (Head.auto_search: out-of-bag
# scores for the forest). Below it the full grid is quick anyway.
OWN_METHOD_ABOVE = 1_000


@dataclass(frozen=True)
class SearchSettings:
    """How every head is searched: one object from the command line to the searcher, and the
    source of the reuse key (`numbers`), so the key cannot forget a setting that changes a number."""

    cv: int = 5
    scoring: str = "accuracy"
    search: str = "auto"  # one of METHODS; auto: see method_for
    seed: int = 0
    budget: float | None = None  # seconds per head; the search stops at its best candidate so far
    jobs: int = -1  # parallel fits; -1: every core (never changes a number)
    verbose: int = 0
    progress: bool = False
    ray: str | None = None  # "local" or a cluster's address: the CV fits run as Ray tasks (never changes a number)

    def numbers(self) -> dict:
        """The settings that change the fitted heads (not jobs, verbosity or progress)."""
        return {"cv": self.cv, "scoring": self.scoring, "search": self.search, "seed": self.seed,
                "budget": self.budget}

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

    def check(self) -> "SearchSettings":
        if self.scoring not in SCORINGS:
            raise CnnfeatError(f"--scoring {self.scoring!r}; valid: {', '.join(SCORINGS)}")
        if self.search not in METHODS:
            raise CnnfeatError(f"--search {self.search!r}; valid: {', '.join(METHODS)}")
        if self.budget is not None and self.search == "halving":
            raise CnnfeatError("--budget stops an exhaustive grid search between candidates; it does not "
                               "combine with --search halving")
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
    method: str  # "grid" or "halving"
    seconds: float
    pipeline: object  # unfitted Pipeline with the best parameters set (calibrated where the head asks)
    notes: list
    evaluated: int = 0  # candidates scored at full size (fewer than `candidates` when the budget ran out)
    fitted: object = None  # `pipeline` already fitted on all the searched rows, where the search made it


def check_folds(y, cv: int, label_names=None) -> tuple[int, list[str]]:
    """Folds to use for labels `y`: lowered, with a note, when a class has fewer rows than `cv`."""
    names, counts = np.unique(y, return_counts=True)
    if label_names is not None:
        names = np.asarray(label_names, dtype=object)[names]
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


def search_head(name, X: np.ndarray, y: np.ndarray, grid=None, settings: SearchSettings | None = None,
                log=print, label_names=None, **overrides) -> SearchResult:
    """Search head `name`'s grid (a registered name, or a Head, e.g. a fused_head) by stratified
    K-fold CV on (X, y) (`label_names[y]` names the classes in messages when y holds indices). Nothing is refitted here; a search that fits the best candidate
    on all of (X, y) anyway (out-of-bag) hands that model back as `fitted`."""
    from sklearn.model_selection import ParameterGrid

    settings = replace(settings or SearchSettings(), **overrides).check()
    named = name if isinstance(name, Head) else get_head(name)
    scaled = named.for_rows(len(X))
    head, bounded = scaled.bounded(len(X), len(np.unique(y)))
    grid = resolve_grid(head, grid)
    folds, notes = check_folds(y, settings.cv, label_names)
    if scaled is not named:
        notes.append(f"{head.name} with {len(X)} training rows: trained on mini-batches "
                     f"({type(head.build(0).named_steps['clf']).__name__}), every candidate side by side")
    if bounded:
        notes.append(bounded)
    grid = _fit_neighbours_to_folds(grid, len(X) - -(-len(X) // folds), notes)
    candidates = len(ParameterGrid(grid))
    method = settings.method_for(head, len(X))
    pipeline = head.build(settings.seed)
    if method == "path" and not hasattr(pipeline.named_steps["clf"], "fit_path"):
        notes.append(f"{head.name} trains no path of candidates side by side: grid search instead")
        method = "grid"
    if head.scales_badly_above and len(X) > head.scales_badly_above:
        notes.append(f"{head.name} with {len(X)} training rows: its default grid may take hours "
                     f"(its cost grows quickly with rows); consider --clf logreg, or narrow --grid")
    for note in notes:
        log(note)
    splitter, folds = _splitter(head.validation, folds, settings.seed)
    folds = OOB_FOLDS if method == "oob" else folds
    log(_describe(head.name, method, grid, folds, len(X), settings))
    started = time.perf_counter()
    if method == "coordinate":
        grid = [_axes_first(g, head.axes) for g in grid]
    searcher = _searcher(method, pipeline, grid, splitter, settings, head.name)
    with _cross_validation_backend(settings.ray if method in ("grid", "halving", "coordinate") else None):
        _fit_every_candidate(searcher, X, y, head.name)
    best = searcher.best_index_
    results = searcher.cv_results_
    best_params = dict(searcher.best_params_)
    evaluated = getattr(searcher, "evaluated_", candidates)
    if settings.budget is not None and evaluated < candidates:
        notes.append(f"{head.name}: the {settings.budget:g} s budget ran out after {evaluated} of {candidates} "
                     f"candidates; the best of those was kept")
        log(notes[-1])
    for note in edge_notes(head, pipeline, grid, best_params, results):
        notes.append(note)
        log(note)
    pipeline.set_params(**best_params)
    if method == "oob":
        pipeline.set_params(clf__n_jobs=settings.jobs)  # the refit too uses every core
    fitted = getattr(searcher, "best_fitted_", None)
    if head.calibrate:
        from sklearn.calibration import CalibratedClassifierCV
        pipeline.set_params(clf=CalibratedClassifierCV(pipeline.named_steps["clf"], ensemble=False, cv=folds,
                                                       n_jobs=settings.jobs))
    return SearchResult(
        head=head.name, best_params={k.split("__", 1)[1]: _plain(v) for k, v in best_params.items()},
        cv_mean=float(results["mean_test_score"][best]), cv_std=float(results["std_test_score"][best]),
        folds=folds, scoring=settings.scoring, candidates=candidates, method=method,
        seconds=time.perf_counter() - started, pipeline=pipeline, notes=notes, evaluated=evaluated,
        fitted=None if head.calibrate else fitted,
    )


def _fit_every_candidate(searcher, X, y, head: str) -> None:
    """searcher.fit, where a search whose every fit failed (a --grid value refused at fit time that no
    parameter check catches, e.g. an MLP layer of 0 units) is one line saying why, not a traceback."""
    try:
        searcher.fit(X, y)
    except ValueError as error:
        if "fits failed" not in str(error):
            raise
        raise CnnfeatError(f"{head}: its fits failed ({error_line(error, last=True)}); check --grid") from None


def edge_notes(head: Head, pipeline, grid: list[dict], best: dict, results: dict | None = None) -> list[str]:
    """A note for each numeric parameter (3 or more values) whose best value is the smallest or the
    largest of its grid: the best may lie past it. Not where the estimator refuses every value past
    it (n_neighbors=1), so the note's wider grid always runs, nor where the next value inward scored
    the same (`results`: the search's cv_results_), so the grid is not at fault."""
    searched = next((g for g in grid if set(g) == set(best) and all(best[k] in g[k] for k in g)), {})
    notes = []
    for key, values in searched.items():
        ordered = sorted({v for v in values if _is_number(v)})
        if len(ordered) < 3 or not _is_number(best[key]) or best[key] not in (ordered[0], ordered[-1]):
            continue
        low = best[key] == ordered[0]
        past = [v for v in _past(ordered, low) if not refusal(head, pipeline, key, v)]
        if not past or _tied_inward(results, best, key, ordered[1] if low else ordered[-2]):
            continue
        name = key.split("__", 1)[1] if key.startswith("clf__") else key
        # the grid's own values and those past its edge: a search of it cannot send the user back
        wider = ", ".join(_shown(v) for v in [*sorted({*ordered, *past}), *(v for v in values if not _is_number(v))])
        notes.append(f"{head.name}: best {name}={_shown(best[key])} is the {'smallest' if low else 'largest'} value "
                     f"of its grid ({_shown(ordered[0])} to {_shown(ordered[-1])}): the best may lie past it; widen "
                     f"the grid, e.g. --grid '{{\"{name}\": [{wider}]}}'")
    return notes


def _tied_inward(results: dict | None, best: dict, key: str, inward) -> bool:
    """Whether the candidate that is `best` but for `key` = `inward` scored as well as the best."""
    if not results or "params" not in results:
        return False
    scores = {_without(p): s for p, s in zip(results["params"], results["mean_test_score"]) if not np.isnan(s)}
    neighbour = scores.get(_without({**best, key: inward}))
    return neighbour is not None and neighbour >= scores.get(_without(best), np.inf)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _past(ordered: list, low: bool) -> list:
    """Two values past the end of `ordered` numbers (its smallest end when `low`), spaced as its last
    two: by their ratio where they have one sign (decades stay decades), else by their difference.
    Integers stay integers where rounding keeps the values apart (n_neighbors 21 -> 29, 41)."""
    edge, inner = (ordered[0], ordered[1]) if low else (ordered[-1], ordered[-2])
    if edge * inner <= 0:
        return [edge + (edge - inner), edge + 2 * (edge - inner)]
    past = [edge * (edge / inner), edge * (edge / inner) ** 2]
    rounded = [round(v) for v in past]
    if all(isinstance(v, numbers.Integral) for v in ordered) and len({edge, *rounded}) == 3:
        return rounded
    return past


def _shown(value) -> str:
    """A grid value as --grid's JSON writes it."""
    return f"{value:g}" if isinstance(value, float) else json.dumps(value)


@contextmanager
def _cross_validation_backend(ray_address: str | None):
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


def _describe(head: str, method: str, grid: list[dict], folds: int, rows: int, settings: SearchSettings) -> str:
    """The line that says how a head is searched."""
    from sklearn.model_selection import ParameterGrid

    jobs = settings.jobs
    scheme = {OOB_FOLDS: "out-of-bag scores", 1: "a 20% validation slice"}.get(folds, f"{folds} folds")
    swept = f" (one parameter at a time: {_coordinate_count(grid)} of them)" if method == "coordinate" else ""
    return (f"{head}: {method} search over {len(ParameterGrid(grid))} candidates{swept} x {scheme} on {rows} rows "
            f"({settings.scoring}, {'all cores' if jobs == -1 else f'{jobs} job' + ('s' if jobs != 1 else '')}"
            f"{f', budget {settings.budget:g} s' if settings.budget is not None else ''})")


def _splitter(validation: str, folds: int, seed: int):
    from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit

    if validation == "slice":  # one validation slice of train, as the torch recipes do
        return StratifiedShuffleSplit(1, test_size=0.2, random_state=seed), 1
    return StratifiedKFold(folds, shuffle=True, random_state=seed), folds


def _searcher(method, pipeline, grid, splitter, settings: SearchSettings, head_name: str):
    common = {"scoring": settings.scoring, "cv": splitter, "n_jobs": settings.jobs, "refit": False,
              "verbose": settings.verbose}
    if method == "oob":
        return OutOfBagSearch(pipeline, grid, settings.scoring, settings.jobs, settings.progress, f"search {head_name}")
    if method == "path":
        return PathSearch(pipeline, grid, splitter, settings.scoring, settings.progress, f"search {head_name}")
    if method == "halving":
        from sklearn.experimental import enable_halving_search_cv  # noqa: F401
        from sklearn.model_selection import HalvingGridSearchCV
        searcher = _tracked(HalvingGridSearchCV)(pipeline, grid, random_state=settings.seed, **common)
    else:
        from sklearn.model_selection import GridSearchCV
        searcher = _tracked(GridSearchCV)(pipeline, grid, **common)
    searcher.progress, searcher.budget, searcher.desc = settings.progress, settings.budget, f"search {head_name}"
    searcher.coordinate = method == "coordinate"
    return searcher


def _tracked(search_class):
    """`search_class` evaluating its candidates through `_run_search` (scikit-learn's hook for search
    strategies), with a progress bar (head, candidates, ETA); an exhaustive grid goes in chunks, so
    it can stop at a time budget between them. The scores are scikit-learn's own (tested)."""
    from sklearn.model_selection import GridSearchCV, ParameterGrid
    from tqdm import tqdm

    class Tracked(search_class):
        progress, budget, desc, coordinate = False, None, "search", False

        def _run_search(self, evaluate_candidates, *, callback_ctx=None):
            with tqdm(total=self._planned(), unit="candidate", desc=self.desc, disable=not self.progress) as bar:
                def evaluate(candidates, *args, **kwargs):
                    results = evaluate_candidates(candidates, *args, **kwargs)
                    bar.update(len(candidates))
                    return results

                if self.coordinate:
                    self.evaluated_ = sum(len(_coordinate_sweeps(evaluate, grid)) for grid in self.param_grid)
                elif search_class is GridSearchCV:
                    self._run_grid(evaluate, list(ParameterGrid(self.param_grid)))
                else:
                    super()._run_search(evaluate, callback_ctx=callback_ctx)

        def _planned(self) -> int:
            """Candidate evaluations this search makes, known before the first: the bar's ETA holds."""
            if self.coordinate:
                return _coordinate_count(self.param_grid)
            candidates = len(ParameterGrid(self.param_grid))
            return candidates if search_class is GridSearchCV else sum(_halving_rounds(self, candidates))

        def _run_grid(self, evaluate, candidates):
            started = time.perf_counter()
            jobs = self.n_jobs or 1
            chunk = 2 * ((os.cpu_count() or 1) if jobs < 0 else jobs)
            self.evaluated_ = 0
            while self.evaluated_ < len(candidates):
                if self.budget is not None and self.evaluated_ and time.perf_counter() - started > self.budget:
                    break
                part = candidates[self.evaluated_:self.evaluated_ + chunk]
                evaluate(part)
                self.evaluated_ += len(part)

    return Tracked


def _halving_rounds(search, candidates: int) -> list[int]:
    """The candidates of each round a HalvingGridSearchCV (its fit under way: min_resources_ and
    max_resources_ set) evaluates, by scikit-learn's rules in BaseSuccessiveHalving._run_search."""
    from math import ceil, floor, log

    factor = search.factor
    required = 1 + floor(log(candidates, factor))  # rounds until fewer than `factor` candidates are left
    smallest = search.min_resources_
    if search.min_resources == "exhaust":  # the last round uses (nearly) every row
        smallest = max(smallest, search.max_resources_ // factor ** (required - 1))
    possible = 1 + floor(log(search.max_resources_ // smallest, factor))  # rounds the rows allow
    rounds = required if search.aggressive_elimination else min(possible, required)
    schedule = [candidates]
    for _ in range(rounds - 1):
        schedule.append(ceil(schedule[-1] / factor))
    return schedule


def _coordinate_sweeps(evaluate, grid: dict) -> list[dict]:
    """Coordinate search of one sub-grid: start at every parameter's first value, sweep the first
    parameter over all its values with the others held, keep the best, then sweep the next from
    there. Each candidate is cross-validated like any other (`evaluate` is scikit-learn's
    evaluate_candidates); sum(len(values)) - (parameters - 1) fits instead of their product.
    Returns the candidates evaluated."""
    current, evaluated = {key: values[0] for key, values in grid.items()}, []
    for key, values in grid.items():
        sweep = [{**current, key: value} for value in values]
        new = [candidate for candidate in sweep if candidate not in evaluated]
        if not new:
            continue
        results = evaluate(new)
        evaluated += new
        scores = {_without(p): s for p, s in zip(results["params"], results["mean_test_score"])}
        current = max(sweep, key=lambda candidate: scores[_without(candidate)])
    return evaluated


def _coordinate_count(grids: list[dict]) -> int:
    return sum(1 + sum(len(values) - 1 for values in grid.values()) for grid in grids)


def _axes_first(grid: dict, axes: tuple) -> dict:
    """`grid` with the parameters named in `axes` first (the order a coordinate search sweeps them)."""
    first = [f"clf__{axis}" for axis in axes if f"clf__{axis}" in grid]
    return {**{key: grid[key] for key in first}, **{k: v for k, v in grid.items() if k not in first}}


class OutOfBagSearch:
    """A forest's grid scored by its out-of-bag predictions: each candidate is fitted once on all the
    rows, and each row is predicted only by the trees whose bootstrap sample left it out - an
    honest held-out estimate at a fifth of the fits of 5-fold CV (Breiman's own recipe). Candidates
    that differ only in their number of trees share one forest, grown with warm_start (scikit-learn
    draws the same trees as a fresh fit). Offers the attributes of the searches `search_head` reads."""

    def __init__(self, pipeline, param_grid, scoring, n_jobs, progress=False, desc="search"):
        self.pipeline, self.param_grid, self.scoring, self.n_jobs = pipeline, param_grid, scoring, n_jobs
        self.progress, self.desc = progress, desc

    def fit(self, X, y):
        from sklearn.base import clone
        from sklearn.model_selection import ParameterGrid
        from tqdm import tqdm

        candidates = list(ParameterGrid(self.param_grid))
        order = sorted(range(len(candidates)), key=lambda i: (_without(candidates[i], TREES),
                                                              candidates[i].get(TREES, 100)))
        scores, model, grown, best = np.full(len(candidates), -np.inf), None, None, None
        for i in tqdm(order, unit="candidate", desc=self.desc, disable=not self.progress):
            params = candidates[i]
            if grown != _without(params, TREES):  # another forest: start afresh
                model, grown = clone(self.pipeline).set_params(clf__warm_start=True, clf__oob_score=True,
                                                               clf__n_jobs=self.n_jobs), _without(params, TREES)
            model.set_params(**params).fit(X, y)  # adds trees to the forest grown so far
            scores[i] = _oob_score(model.named_steps["clf"], y, self.scoring)
            if best is None or (scores[i], -i) > (scores[best], -best):  # argmax's choice among ties
                self.best_fitted_ = None  # two forests at a time, not three
                best, self.best_fitted_ = i, copy.deepcopy(model).set_params(clf__warm_start=False)
        self.best_index_ = int(np.argmax(scores))
        self.best_params_ = candidates[self.best_index_]
        self.cv_results_ = {"mean_test_score": scores, "std_test_score": np.zeros(len(scores))}
        self.evaluated_ = len(candidates)
        return self


class PathSearch:
    """A grid whose candidates differ in the estimator's `path_param` (the linear head's weight
    decay), trained side by side by its `fit_path` on each split: the scaler is fitted once per
    split on its training rows, each candidate is scored on the split's held-out rows with the
    search's scorer. The same models and scores as a grid search (tested), for about one
    candidate's fits. Offers the attributes of the searches `search_head` reads."""

    def __init__(self, pipeline, param_grid, splitter, scoring, progress=False, desc="search"):
        self.pipeline, self.param_grid, self.splitter, self.scoring = pipeline, param_grid, splitter, scoring
        self.progress, self.desc = progress, desc

    def fit(self, X, y):
        from sklearn.base import clone
        from sklearn.metrics import check_scoring
        from sklearn.model_selection import ParameterGrid
        from tqdm import tqdm

        X, y = np.asarray(X), np.asarray(y)
        candidates = list(ParameterGrid(self.param_grid))
        path = f"clf__{self.pipeline.named_steps['clf'].path_param}"
        groups: dict[str, list[int]] = {}  # candidates equal but for the path parameter share a run
        for i, candidate in enumerate(candidates):
            groups.setdefault(_without(candidate, path), []).append(i)
        splits = list(self.splitter.split(X, y))
        scores = np.zeros((len(candidates), len(splits)))
        with tqdm(total=len(candidates) * len(splits), unit="candidate", desc=self.desc, unit_scale=True,
                  disable=not self.progress) as bar:
            for s, (train, held_out) in enumerate(splits):
                for indices in groups.values():
                    shared = {k: v for k, v in candidates[indices[0]].items() if k != path}
                    pipeline = clone(self.pipeline).set_params(**shared)
                    scale, clf = _in_place(pipeline[:-1]), pipeline.named_steps["clf"]
                    scaled = scale.fit_transform(X[train], y[train])  # scales its own copy of the rows
                    values = [candidates[i].get(path, clf.get_params()[clf.path_param]) for i in indices]
                    before = bar.n  # the bar moves every epoch: a path on a million rows takes minutes
                    models = clf.fit_path(scaled, y[train], values,
                                          report=lambda done: bar.update(before + done * len(indices) - bar.n))
                    del scaled
                    held = scale.transform(X[held_out])
                    for i, model in zip(indices, models):
                        scores[i, s] = check_scoring(model, scoring=self.scoring)(model, held, y[held_out])
        self.cv_results_ = {"mean_test_score": scores.mean(axis=1), "std_test_score": scores.std(axis=1),
                            "params": candidates}
        self.best_index_ = int(np.argmax(self.cv_results_["mean_test_score"]))
        self.best_params_ = candidates[self.best_index_]
        self.evaluated_ = len(candidates)
        return self


def _in_place(steps):
    """The scaling steps with StandardScaler's copy off: the path search hands them copies of rows
    (X[train]) it may overwrite, so a million rows are held twice, not three times."""
    if "scale__copy" in steps.get_params():
        steps.set_params(scale__copy=False)
    return steps


def _without(params: dict, key: str | None = None) -> str:
    """A candidate's parameters but `key`, as a hashable, order-free key."""
    return repr(sorted((k, v) for k, v in params.items() if k != key))


TREES = "clf__n_estimators"
OOB_FOLDS = 0  # what SearchResult.folds says for out-of-bag scores
OOB_METRICS = {"accuracy": "accuracy_score", "balanced_accuracy": "balanced_accuracy_score", "f1_macro": "f1_score"}


def _oob_score(forest, y, scoring: str) -> float:
    from sklearn import metrics

    votes = forest.oob_decision_function_
    seen = ~np.isnan(votes).any(axis=1)  # a row in every tree's bootstrap has no out-of-bag vote
    predicted = forest.classes_[votes[seen].argmax(axis=1)]
    extra = {"average": "macro"} if scoring == "f1_macro" else {}
    return float(getattr(metrics, OOB_METRICS[scoring])(np.asarray(y)[seen], predicted, **extra))


def _fit_neighbours_to_folds(grid, fold_rows: int, notes: list) -> list[dict]:
    """KNN cannot ask for more neighbours than a training fold has rows: drop those values (and
    refuse a grid with none left: fitting a value nobody asked for would be a silent change)."""
    key = "clf__n_neighbors"
    trimmed = [{**g, key: [k for k in g[key] if k <= fold_rows]} if key in g else g for g in grid]
    if any(key in g and not g[key] for g in trimmed):
        asked = ", ".join(str(k) for g in grid if key in g for k in g[key])
        raise CnnfeatError(f"n_neighbors {asked}: more than the {fold_rows} rows of a training fold; ask for at "
                           f"most {fold_rows} (--grid)")
    if trimmed != grid:
        notes.append(f"n_neighbors above {fold_rows} (the rows of a training fold) left out of the grid")
    return trimmed


def _plain(value):
    """numpy scalars and tuples -> JSON-friendly Python values."""
    if isinstance(value, tuple):
        return list(value)
    return value.item() if hasattr(value, "item") else value
