"""The search's progress bar and its notes on the best candidate."""

import numpy as np
import pytest
import tqdm
from sklearn.datasets import load_digits

from classifiers import get_head
from classifiers.edges import edge_notes
from classifiers.search import search_head


@pytest.mark.parametrize("rows,candidates,rounds", [(600, 9, [9, 3, 1]), (240, 9, [9, 3])])
def test_a_halving_search_bar_knows_its_total_before_the_first_round(monkeypatch, rows, candidates, rounds):
    """The bar's total grew as halving asked for each round (0, 4/4 100%, 4/8 50%, ...): no ETA. On
    240 rows the rows run out before the candidates do (2 rounds where 9 candidates need 3)."""
    bars = []

    class Recorded(tqdm.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.totals = [self.total]
            bars.append(self)

        def update(self, n=1):
            self.totals.append(self.total)
            return super().update(n)

    monkeypatch.setattr(tqdm, "tqdm", Recorded)
    X, y = load_digits(return_X_y=True)
    grid = {"C": np.logspace(-3, 1, candidates).tolist()}
    result = search_head(
        "logreg",
        X[:rows],
        y[:rows].astype(str),
        grid=grid,
        cv=3,
        search="halving",
        jobs=1,
        progress=True,
        log=lambda _: None,
    )
    assert result.method == "halving" and len(bars) == 1
    bar = bars[0]
    assert bar.totals == [sum(rounds)] * len(bar.totals) and len(bar.totals) == 1 + len(rounds)
    assert bar.n == sum(rounds)  # every evaluation it counted, and no more


def test_an_edge_note_only_where_a_wider_grid_can_go_past_the_edge():
    knn = get_head("knn")
    pipeline = knn.build(0)
    grid = [
        {
            "clf__n_neighbors": [1, 3, 5, 7, 11, 15, 21],
            "clf__weights": ["uniform", "distance"],
            "clf__metric": ["euclidean", "cosine", "manhattan"],
        }
    ]
    best = {"clf__n_neighbors": 21, "clf__weights": "distance", "clf__metric": "manhattan"}
    notes = edge_notes(knn, pipeline, grid, best)  # the metric, at the end of its list, is no scale
    assert len(notes) == 1 and "best n_neighbors=21 is the largest value of its grid (1 to 21)" in notes[0]
    assert """--grid '{"n_neighbors": [1, 3, 5, 7, 11, 15, 21, 29, 41]}'""" in notes[0]  # as its last two, integers
    assert edge_notes(knn, pipeline, grid, {**best, "clf__n_neighbors": 7}) == []
    assert edge_notes(knn, pipeline, grid, {**best, "clf__n_neighbors": 1}) == []  # none below 1
    two = [{**grid[0], "clf__n_neighbors": [3, 5]}]
    assert edge_notes(knn, pipeline, two, {**best, "clf__n_neighbors": 5}) == []  # two values: no scale to go on
    svm = get_head("svm")
    rbf = [{"clf__kernel": ["rbf"], "clf__C": [0.1, 1.0, 10.0], "clf__gamma": ["scale", 1e-4, 1e-3, 1e-2]}]
    notes = edge_notes(svm, svm.build(0), rbf, {"clf__kernel": "rbf", "clf__C": 1.0, "clf__gamma": 1e-2})
    assert len(notes) == 1 and """--grid '{"gamma": [0.0001, 0.001, 0.01, 0.1, 1, "scale"]}'""" in notes[0]
    logreg = get_head("logreg")
    notes = edge_notes(logreg, logreg.build(0), [{"clf__C": [1, 10, 100]}], {"clf__C": 1})  # as JSON writes them
    assert len(notes) == 1 and """--grid '{"C": [0.01, 0.1, 1, 10, 100]}'""" in notes[0]


def test_a_grid_override_goes_to_the_sub_grids_that_have_its_key():
    """--grid '{"gamma": [...]}' was added to the SVM's linear sub-grid too: 39 candidates instead of 23,
    16 of them fits of a parameter the linear kernel ignores."""
    from classifiers import resolve_grid

    linear, rbf = resolve_grid(get_head("svm"), {"gamma": [1e-6, 1e-5, 1e-4]})
    assert "clf__gamma" not in linear and rbf["clf__gamma"] == [1e-6, 1e-5, 1e-4]
    assert [grid["clf__C"] for grid in resolve_grid(get_head("svm"), {"C": [1.0]})] == [[1.0], [1.0]]


def test_a_search_is_planned_from_the_labels_before_any_fit():
    """plan_search decides the head's form, grid, method, folds and notes from the labels alone; a
    kNN grid loses the n_neighbors a training fold cannot give, and says so."""
    import dataclasses

    from classifiers.search import SearchSettings, plan_search
    from common.errors import CnnfeatError

    y = np.repeat(["a", "b"], 6)  # 12 rows in 3 folds: training folds of 8 rows
    plan = plan_search("knn", y, {"n_neighbors": [1, 5, 9, 15]}, SearchSettings(cv=3))
    assert plan.grid[0]["clf__n_neighbors"] == [1, 5] and plan.candidates == 2 * 2 * 2
    assert plan.notes == ("n_neighbors above 8 (the rows of a training fold) left out of the grid",)
    assert (plan.method, plan.folds, plan.rows) == ("grid", 3, 12)
    assert plan.describe() == "knn: grid search over 8 candidates x 3 folds on 12 rows (accuracy, all cores)"
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.method = "halving"
    with pytest.raises(CnnfeatError, match="n_neighbors 9, 15: more than the 8 rows of a training fold"):
        plan_search("knn", y, {"n_neighbors": [9, 15]}, SearchSettings(cv=3))
    forest = plan_search("rf", np.repeat(["a", "b"], 1000), settings=SearchSettings(jobs=1))
    assert (forest.method, forest.folds, forest.candidates) == ("oob", 0, 6)
    assert forest.describe().endswith("x out-of-bag scores on 2000 rows (accuracy, 1 job)")


@pytest.mark.parametrize("head, search", [("linear", "path"), ("logreg", "grid")])
def test_vectors_that_are_not_finite_are_one_line_naming_the_cause(head, search):
    """A vector with NaN (a store written by other code, a backbone that overflowed) reaches the
    search as scikit-learn's input check refusing it: one line, for every search method."""
    from classifiers.search import SearchSettings
    from common.errors import CnnfeatError

    X = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    X[3, 1] = np.nan
    settings = SearchSettings(cv=2, search=search, jobs=1)
    grid = {"epochs": [2]} if head == "linear" else {"C": [1.0]}
    with pytest.raises(CnnfeatError, match=f"^{head}: the feature vectors are not all finite"):
        search_head(head, X, np.repeat([0, 1], 20), grid, settings, log=lambda _: None)
