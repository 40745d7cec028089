"""The ways a head's grid is searched, each offering the attributes `search_head` reads
(best_params_, best_index_, cv_results_, evaluated_ where it may stop early):

- `ChunkedGridSearch`: every candidate, a few at a time, so a time budget can stop it between them;
- `CoordinateSearch`: one parameter at a time, each from the best of the one before;
- `ProgressHalvingSearch`: scikit-learn's successive halving;
- `OutOfBagSearch`: a forest's candidates scored by their out-of-bag predictions;
- `PathSearch`: candidates that differ in one parameter trained side by side (the linear heads).

The first three are scikit-learn's searches with a progress bar whose total is known before the
first candidate; their scores are scikit-learn's own (tested). Imported when a search runs:
importing `classifiers` does not load scikit-learn's model selection.
"""

from __future__ import annotations

import copy
import os
import time

import numpy as np
from sklearn.base import clone
from sklearn.experimental import enable_halving_search_cv  # noqa: F401
from sklearn.metrics import check_scoring
from sklearn.model_selection import GridSearchCV, HalvingGridSearchCV, ParameterGrid

from .grids import candidate_key, coordinate_count


def make_searcher(plan, pipeline):
    """The searcher that runs `plan` (a search.SearchPlan) over `pipeline`."""
    settings, desc = plan.settings, f"search {plan.head.name}"
    if plan.method == "oob":
        return OutOfBagSearch(pipeline, plan.grid, settings.scoring, settings.jobs, settings.progress, desc)
    if plan.method == "path":
        return PathSearch(pipeline, plan.grid, plan.splitter, settings.scoring, settings.progress, desc)
    common = {
        "scoring": settings.scoring,
        "cv": plan.splitter,
        "n_jobs": settings.jobs,
        "refit": False,
        "verbose": settings.verbose,
        "progress": settings.progress,
        "desc": desc,
    }
    if plan.method == "halving":
        return ProgressHalvingSearch(pipeline, plan.grid, random_state=settings.seed, **common)
    if plan.method == "coordinate":
        return CoordinateSearch(pipeline, plan.grid, **common)
    return ChunkedGridSearch(pipeline, plan.grid, budget=settings.budget, **common)


class _ProgressBar:
    """For scikit-learn's searches: candidates evaluated through `_run_search` (scikit-learn's hook for
    search strategies) with a progress bar (head, candidates, ETA). A search class says how many
    evaluations it makes (`_planned`) and makes them (`_evaluate`)."""

    def _run_search(self, evaluate_candidates, *, callback_ctx=None):
        from tqdm import tqdm  # looked up at each search (the tests watch the bar)

        with tqdm(total=self._planned(), unit="candidate", desc=self.desc, disable=not self.progress) as bar:

            def evaluate(candidates, *args, **kwargs):
                results = evaluate_candidates(candidates, *args, **kwargs)
                bar.update(len(candidates))
                return results

            self._evaluate(evaluate, callback_ctx)


class _TrackedGridSearch(_ProgressBar, GridSearchCV):
    def __init__(
        self,
        estimator,
        param_grid,
        *,
        scoring=None,
        n_jobs=None,
        refit=True,
        cv=None,
        verbose=0,
        progress=False,
        desc="search",
    ):
        super().__init__(estimator, param_grid, scoring=scoring, n_jobs=n_jobs, refit=refit, cv=cv, verbose=verbose)
        self.progress = progress
        self.desc = desc


class ChunkedGridSearch(_TrackedGridSearch):
    """GridSearchCV over every candidate, a chunk of them at a time (two per job), stopping between
    chunks once `budget` seconds have passed (the best of those evaluated is kept)."""

    def __init__(
        self,
        estimator,
        param_grid,
        *,
        scoring=None,
        n_jobs=None,
        refit=True,
        cv=None,
        verbose=0,
        progress=False,
        desc="search",
        budget=None,
    ):
        super().__init__(
            estimator,
            param_grid,
            scoring=scoring,
            n_jobs=n_jobs,
            refit=refit,
            cv=cv,
            verbose=verbose,
            progress=progress,
            desc=desc,
        )
        self.budget = budget

    def _planned(self) -> int:
        return len(ParameterGrid(self.param_grid))

    def _evaluate(self, evaluate, callback_ctx=None):
        candidates = list(ParameterGrid(self.param_grid))
        started = time.perf_counter()
        jobs = self.n_jobs or 1
        chunk = 2 * ((os.cpu_count() or 1) if jobs < 0 else jobs)
        self.evaluated_ = 0
        while self.evaluated_ < len(candidates):
            if self.budget is not None and self.evaluated_ and time.perf_counter() - started > self.budget:
                break
            part = candidates[self.evaluated_ : self.evaluated_ + chunk]
            evaluate(part)
            self.evaluated_ += len(part)


class CoordinateSearch(_TrackedGridSearch):
    """GridSearchCV's scores for the candidates of a coordinate search (`coordinate_sweeps`) of each
    sub-grid: sum(len(values)) - (parameters - 1) fits instead of their product."""

    def _planned(self) -> int:
        return coordinate_count(self.param_grid)

    def _evaluate(self, evaluate, callback_ctx=None):
        self.evaluated_ = sum(len(coordinate_sweeps(evaluate, grid)) for grid in self.param_grid)


class ProgressHalvingSearch(_ProgressBar, HalvingGridSearchCV):
    """HalvingGridSearchCV, its bar's total (the candidates of every round) known before the first."""

    def __init__(
        self,
        estimator,
        param_grid,
        *,
        scoring=None,
        n_jobs=None,
        refit=True,
        cv=5,
        verbose=0,
        random_state=None,
        progress=False,
        desc="search",
    ):
        super().__init__(
            estimator,
            param_grid,
            scoring=scoring,
            n_jobs=n_jobs,
            refit=refit,
            cv=cv,
            verbose=verbose,
            random_state=random_state,
        )
        self.progress = progress
        self.desc = desc

    def _planned(self) -> int:
        return sum(halving_rounds(self, len(ParameterGrid(self.param_grid))))

    def _evaluate(self, evaluate, callback_ctx=None):
        HalvingGridSearchCV._run_search(self, evaluate, callback_ctx=callback_ctx)


def halving_rounds(search, candidates: int) -> list[int]:
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


def coordinate_sweeps(evaluate, grid: dict) -> list[dict]:
    """Coordinate search of one sub-grid: start at every parameter's first value, sweep the first
    parameter over all its values with the others held, keep the best, then sweep the next from
    there. Each candidate is cross-validated like any other (`evaluate` is scikit-learn's
    evaluate_candidates). Returns the candidates evaluated."""
    current, evaluated = {key: values[0] for key, values in grid.items()}, []
    for key, values in grid.items():
        sweep = [{**current, key: value} for value in values]
        new = [candidate for candidate in sweep if candidate not in evaluated]
        if not new:
            continue
        results = evaluate(new)
        evaluated += new
        scores = {candidate_key(p): s for p, s in zip(results["params"], results["mean_test_score"])}
        current = max(sweep, key=lambda candidate: scores[candidate_key(candidate)])
    return evaluated


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
        from tqdm import tqdm

        candidates = list(ParameterGrid(self.param_grid))
        order = sorted(
            range(len(candidates)), key=lambda i: (candidate_key(candidates[i], TREES), candidates[i].get(TREES, 100))
        )
        scores, model, grown, best = np.full(len(candidates), -np.inf), None, None, None
        for i in tqdm(order, unit="candidate", desc=self.desc, disable=not self.progress):
            params = candidates[i]
            if grown != candidate_key(params, TREES):  # another forest: start afresh
                model, grown = (
                    clone(self.pipeline).set_params(clf__warm_start=True, clf__oob_score=True, clf__n_jobs=self.n_jobs),
                    candidate_key(params, TREES),
                )
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
        from tqdm import tqdm

        X, y = np.asarray(X), np.asarray(y)
        candidates = list(ParameterGrid(self.param_grid))
        path = f"clf__{self.pipeline.named_steps['clf'].path_param}"
        groups: dict[str, list[int]] = {}  # candidates equal but for the path parameter share a run
        for i, candidate in enumerate(candidates):
            groups.setdefault(candidate_key(candidate, path), []).append(i)
        splits = list(self.splitter.split(X, y))
        scores = np.zeros((len(candidates), len(splits)))
        with tqdm(
            total=len(candidates) * len(splits),
            unit="candidate",
            desc=self.desc,
            unit_scale=True,
            disable=not self.progress,
        ) as bar:
            for s, (train, held_out) in enumerate(splits):
                for indices in groups.values():
                    group = [candidates[i] for i in indices]
                    scores[indices, s] = self._score_path(group, path, X, y, train, held_out, bar)
        self.cv_results_ = {
            "mean_test_score": scores.mean(axis=1),
            "std_test_score": scores.std(axis=1),
            "params": candidates,
        }
        self.best_index_ = int(np.argmax(self.cv_results_["mean_test_score"]))
        self.best_params_ = candidates[self.best_index_]
        self.evaluated_ = len(candidates)
        return self

    def _score_path(self, group: list[dict], path: str, X, y, train, held_out, bar) -> list[float]:
        """One fold's scores of candidates equal but for the path parameter: one run along the path."""
        shared = {k: v for k, v in group[0].items() if k != path}
        pipeline = clone(self.pipeline).set_params(**shared)
        scale, clf = _in_place(pipeline[:-1]), pipeline.named_steps["clf"]
        scaled = scale.fit_transform(X[train], y[train])  # scales its own copy of the rows
        values = [candidate.get(path, clf.get_params()[clf.path_param]) for candidate in group]
        before, n = bar.n, len(group)  # the bar moves every epoch: a million rows' path takes minutes
        models = clf.fit_path(scaled, y[train], values, report=lambda done: bar.update(before + done * n - bar.n))
        del scaled
        held = scale.transform(X[held_out])
        return [check_scoring(model, scoring=self.scoring)(model, held, y[held_out]) for model in models]


def _in_place(steps):
    """The scaling steps with StandardScaler's copy off: the path search hands them copies of rows
    (X[train]) it may overwrite, so a million rows are held twice, not three times."""
    if "scale__copy" in steps.get_params():
        steps.set_params(scale__copy=False)
    return steps


TREES = "clf__n_estimators"
OOB_METRICS = {"accuracy": "accuracy_score", "balanced_accuracy": "balanced_accuracy_score", "f1_macro": "f1_score"}


def _oob_score(forest, y, scoring: str) -> float:
    from sklearn import metrics

    votes = forest.oob_decision_function_
    seen = ~np.isnan(votes).any(axis=1)  # a row in every tree's bootstrap has no out-of-bag vote
    predicted = forest.classes_[votes[seen].argmax(axis=1)]
    extra = {"average": "macro"} if scoring == "f1_macro" else {}
    return float(getattr(metrics, OOB_METRICS[scoring])(np.asarray(y)[seen], predicted, **extra))
