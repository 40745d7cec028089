import numpy as np
import pytest
from sklearn.base import clone

from classifiers import HEADS, get_head, register_head, resolve_grid
from classifiers.search import check_folds, search_head
from common.errors import CnnfeatError


def test_registry_has_the_five_heads_and_refuses_duplicates():
    assert set(HEADS) >= {"svm", "rf", "mlp", "knn", "logreg"}
    with pytest.raises(ValueError, match="already registered"):
        register_head("svm", "again", {"C": [1]})(lambda seed: None)
    with pytest.raises(CnnfeatError, match="unknown head 'tree'; valid: .*logreg"):
        get_head("tree")


# The default grids' sizes, counted by hand from heads.py: logreg 8 Cs; svm 8 linear Cs + 5 Cs x 4
# gammas; knn 7 n_neighbors x 2 weights x 2 metrics; rf 2 n_estimators x 3 max_features; mlp 2 nets x
# 3 alphas; linear 5 weight decays.
DEFAULT_CANDIDATES = {"logreg": 8, "svm": 8 + 5 * 4, "knn": 7 * 2 * 2, "rf": 2 * 3, "mlp": 2 * 3, "linear": 5}


@pytest.mark.parametrize("head", ["logreg", "svm", "knn", "rf", "mlp", "linear"])
def test_every_default_grid_searches_and_finds_a_good_head(head):
    """The default grids run as they are (valid values for every parameter) and reach a good model
    on a real, small problem: 300 handwritten digits, 3-fold CV, every candidate scored."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    result = search_head(head, X[:300], y[:300].astype(str), cv=3, seed=0, log=lambda _: None)
    print(f"{head}: {result.best_params} CV {result.cv_mean:.3f} over {result.candidates} candidates")
    assert result.cv_mean >= 0.85 and result.candidates == result.evaluated == DEFAULT_CANDIDATES[head]


def test_grid_override_narrows_and_validates():
    svm = get_head("svm")
    narrowed = resolve_grid(svm, {"C": [1, 10]})
    assert [g["clf__C"] for g in narrowed] == [[1, 10], [1, 10]] and narrowed[1]["clf__kernel"] == ["rbf"]
    only_rbf = resolve_grid(svm, {"kernel": ["rbf"], "C": [1], "gamma": ["scale"]})
    assert only_rbf == [{"clf__kernel": ["rbf"], "clf__C": [1], "clf__gamma": ["scale"]}]  # equal sub-grids merged
    assert resolve_grid(svm, [{"clf__C": [3]}]) == [{"clf__C": [3]}]
    assert resolve_grid(get_head("mlp"), {"hidden_layer_sizes": [[64, 32]]})[0]["clf__hidden_layer_sizes"] == [(64, 32)]
    with pytest.raises(CnnfeatError, match="svm has no parameter 'depth'; valid: .*C.*kernel"):
        resolve_grid(svm, {"depth": [3]})


def test_folds_are_checked_against_class_sizes():
    with pytest.raises(CnnfeatError, match="one class only"):
        check_folds(np.array(["a"] * 10), 5)
    with pytest.raises(CnnfeatError, match="class b has a single training image"):
        check_folds(np.array(["a"] * 10 + ["b"]), 5)
    folds, notes = check_folds(np.array(["a"] * 10 + ["b"] * 3), 5)
    assert folds == 3 and "class b has only 3 training images: using 3-fold" in notes[0]
    assert check_folds(np.array(["a", "b"] * 5), 5) == (5, [])


def test_search_finds_the_better_parameters_and_is_reproducible():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y = X[:400], y[:400].astype(str)
    logs = []
    first = search_head("logreg", X, y, grid={"C": [1e-4, 1.0]}, cv=3, seed=1, log=logs.append)
    again = search_head("logreg", X, y, grid={"C": [1e-4, 1.0]}, cv=3, seed=1, log=lambda _: None)
    assert first.best_params == {"C": 1.0} and first.cv_mean > 0.9 and first.folds == 3
    assert (first.cv_mean, first.cv_std) == (again.cv_mean, again.cv_std)
    assert "grid search over 2 candidates x 3 folds on 400 rows" in logs[-1]
    # Successive halving keeps the candidate that is clearly best, and says it halved: C=1e-7 is
    # near chance on digits, C=1 near perfect.
    halving = search_head(
        "logreg", X, y, grid={"C": [1e-7, 1e-6, 1e-5, 1.0]}, cv=3, search="halving", log=lambda _: None
    )
    assert halving.method == "halving" and halving.best_params == {"C": 1.0} and halving.cv_mean > 0.9


def test_progress_search_scores_exactly_like_gridsearchcv():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    X, y = load_digits(return_X_y=True)
    X, y = X[:300], y[:300].astype(str)
    ours = search_head("knn", X, y, cv=3, seed=2, progress=True, log=lambda _: None)
    head = get_head("knn")
    reference = GridSearchCV(
        head.build(2), resolve_grid(head), cv=StratifiedKFold(3, shuffle=True, random_state=2), refit=False
    ).fit(X, y)
    assert ours.cv_mean == reference.best_score_
    assert ours.best_params == {k.split("__", 1)[1]: v for k, v in reference.best_params_.items()}


def test_auto_search_picks_each_heads_method_by_size():
    from classifiers.search import SearchSettings

    auto, rf, logreg = SearchSettings(), get_head("rf"), get_head("logreg")
    assert [auto.method_for(rf, rows) for rows in (245, 2021, 50_000)] == ["grid", "oob", "oob"]
    assert [auto.method_for(logreg, rows) for rows in (245, 2021, 50_000)] == ["grid", "grid", "halving"]
    mlp, linear = get_head("mlp"), get_head("linear")
    assert [auto.method_for(mlp, rows) for rows in (245, 2021, 50_000)] == ["grid", "coordinate", "halving"]
    assert [auto.method_for(linear, rows) for rows in (245, 2021, 50_000)] == ["path", "path", "path"]
    assert SearchSettings(search="grid").method_for(rf, 50_000) == "grid"
    assert SearchSettings(budget=5).method_for(rf, 2021) == "grid"  # a budget stops a grid between candidates
    with pytest.raises(CnnfeatError, match="does not combine with --search halving"):
        SearchSettings(budget=5, search="halving").check()
    assert "jobs" not in auto.result_settings() and "budget" in auto.result_settings()  # what the reuse key is made of


def test_a_budget_stops_the_search_at_its_best_candidate_so_far():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    logs = []
    result = search_head("knn", X[:300], y[:300].astype(str), cv=3, jobs=1, budget=1e-6, log=logs.append)
    assert result.evaluated == 2 < result.candidates == 28  # one chunk (2 fits per job), then out of time
    assert result.best_params["n_neighbors"] == 1 and "budget ran out after 2 of 28 candidates" in logs[-1]
    whole = search_head("knn", X[:300], y[:300].astype(str), cv=3, jobs=1, log=lambda _: None)
    assert whole.evaluated == whole.candidates == 28


def test_every_core_gives_the_same_search_as_one(capsys):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    one = search_head("logreg", X[:300], y[:300].astype(str), cv=3, jobs=1, progress=True, log=lambda _: None)
    every = search_head("logreg", X[:300], y[:300].astype(str), cv=3, jobs=-1, log=lambda _: None)
    assert (one.best_params, one.cv_mean, one.cv_std) == (every.best_params, every.cv_mean, every.cv_std)
    assert "search logreg" in capsys.readouterr().err  # the progress bar names the head


def test_a_forest_on_many_rows_of_many_classes_stays_under_its_memory_bound(monkeypatch):
    """compare --clf all on 50,000 rows of 100 classes was killed for memory (24 GB): fully grown
    trees keep a node per row and a float64 per class in each. Here the bound is lowered so 2,400
    rows of 20 classes with nothing to learn (the trees split down to single rows) cross it."""
    import pickle

    from classifiers import heads

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((2400, 16)).astype(np.float32), np.arange(2400) % 20
    grid = {"n_estimators": [10, 30], "max_features": ["sqrt"]}

    def tree_bytes(result):
        forest = result.fitted.named_steps["clf"]
        return len(pickle.dumps(forest)) / len(forest.estimators_)

    notes = []
    unbounded = search_head("rf", X, y, grid=grid, jobs=1, log=notes.append)
    assert not any("max_samples" in n for n in notes)
    monkeypatch.setattr(heads, "FOREST_BYTES", 600 * heads.FOREST_TREES * heads.NODES_PER_DRAW * (128 + 8 * 20))
    bounded = search_head("rf", X, y, grid=grid, jobs=1, log=notes.append)
    assert bounded.method == "oob" and bounded.fitted.named_steps["clf"].max_samples == pytest.approx(600 / 2400)
    assert any("each tree grown on 600 rows drawn (max_samples 0.25)" in n for n in bounded.notes)
    limit = heads.FOREST_BYTES / heads.FOREST_TREES
    assert tree_bytes(bounded) <= limit < tree_bytes(unbounded)  # the bound holds, and was needed
    assert clone(bounded.pipeline).get_params()["clf__max_samples"] == pytest.approx(0.25)  # the refit keeps it


def test_forest_candidates_scored_out_of_bag_match_scikit_learns_own_oob_score():
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier

    X, y = load_digits(return_X_y=True)
    y = y.astype(str)
    result = search_head(
        "rf", X, y, grid={"n_estimators": [20, 60], "max_features": ["sqrt", 0.5]}, jobs=1, log=lambda _: None
    )  # 1,797 rows: auto scores a forest out of bag
    assert result.method == "oob" and result.folds == 0 and result.candidates == 4
    best = result.best_params
    reference = RandomForestClassifier(
        n_estimators=best["n_estimators"], max_features=best["max_features"], oob_score=True, random_state=0
    ).fit(X, y)
    assert result.cv_mean == pytest.approx(reference.oob_score_, abs=1e-12) and result.cv_mean > 0.9
    # The best forest, grown by warm start during the search, is handed back: the very model a refit gives.
    forest = result.fitted.named_steps["clf"]
    assert len(forest.estimators_) == best["n_estimators"] and not forest.warm_start
    np.testing.assert_array_equal(result.fitted.predict_proba(X), clone(result.pipeline).fit(X, y).predict_proba(X))


def test_the_svm_with_a_shared_kernel_matrix_decides_exactly_like_svc():
    from sklearn.datasets import load_digits
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from classifiers.kernel_svm import PrecomputedKernelSVC

    X, y = load_digits(return_X_y=True)
    X = StandardScaler().fit_transform(X).astype(np.float32)
    for kernel, C, gamma in (("linear", 0.01, "scale"), ("rbf", 10.0, "scale"), ("rbf", 1.0, 1e-3)):
        ours = PrecomputedKernelSVC(C=C, kernel=kernel, gamma=gamma).fit(X[:1200], y[:1200])
        theirs = SVC(C=C, kernel=kernel, gamma=gamma).fit(X[:1200], y[:1200])
        np.testing.assert_allclose(ours.decision_function(X[1200:]), theirs.decision_function(X[1200:]), atol=1e-9)
        assert (ours.predict(X[1200:]) == theirs.predict(X[1200:])).all()


def test_coordinate_search_sweeps_one_parameter_at_a_time_with_gridsearchcvs_scores():
    """Its choice, worked out by hand from the full grid's scores: from every parameter's first
    value, the best n_neighbors, then the best weights there, then the best metric."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    X, y = load_digits(return_X_y=True)
    X, y = X[:300], y[:300].astype(str)
    head = get_head("knn")
    grid = resolve_grid(head)[0]
    full = GridSearchCV(head.build(0), grid, cv=StratifiedKFold(3, shuffle=True, random_state=0)).fit(X, y)
    score = {
        repr(sorted(p.items())): s for p, s in zip(full.cv_results_["params"], full.cv_results_["mean_test_score"])
    }
    current = {key: values[0] for key, values in grid.items()}
    for key, values in grid.items():
        current = max(({**current, key: v} for v in values), key=lambda c: score[repr(sorted(c.items()))])
    logs = []
    ours = search_head("knn", X, y, cv=3, search="coordinate", jobs=1, log=logs.append)
    assert ours.best_params == {k.split("__", 1)[1]: v for k, v in current.items()}
    assert ours.cv_mean == score[repr(sorted(current.items()))]
    sizes = [len(v) for v in grid.values()]
    assert ours.evaluated == sizes[0] + sum(n - 1 for n in sizes[1:]) < ours.candidates == np.prod(sizes)
    assert f"one parameter at a time: {ours.evaluated} of them" in logs[-1]
    assert not any("budget" in note for note in ours.notes)


def test_path_search_scores_exactly_like_the_grid():
    """The linear head's weight decays trained side by side score as the grid's separate fits do."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y = X[:400], y[:400].astype(str)
    grid = {"weight_decay": [1e-4, 1e-1, 3.0, 30.0], "epochs": [3, 6]}
    path = search_head("linear", X, y, grid=grid, search="path", seed=4, log=lambda _: None)
    reference = search_head("linear", X, y, grid=grid, search="grid", seed=4, jobs=1, log=lambda _: None)
    assert path.method == "path" and path.candidates == reference.candidates == 8
    assert path.best_params == reference.best_params
    assert abs(path.cv_mean - reference.cv_mean) < 1e-9
    logs = []
    knn = search_head("knn", X, y, cv=3, search="path", log=logs.append)  # no path to train: the grid
    assert knn.method == "grid" and "grid search instead" in logs[0]


def test_logreg_past_its_size_trains_on_mini_batches_every_C_side_by_side(monkeypatch):
    """Past MINIBATCH_ABOVE rows (lowered here) logreg is the mini-batch form of the same objective,
    its Cs one path on a validation slice, scored exactly as the grid's separate fits would be."""
    from sklearn.datasets import load_digits

    from classifiers import heads
    from classifiers.heads import fused_head
    from classifiers.linear import MiniBatchLogisticRegression

    X, y = load_digits(return_X_y=True)
    X, y = X[:400], y[:400].astype(str)
    grid = {"C": [0.001, 0.1, 10.0]}
    small = search_head("logreg", X, y, grid=grid, cv=3, log=lambda _: None)
    assert small.method == "grid" and type(small.pipeline.named_steps["clf"]).__name__ == "LogisticRegression"
    monkeypatch.setattr(heads, "MINIBATCH_ABOVE", 300)
    logs = []
    path = search_head("logreg", X, y, grid=grid, seed=1, log=logs.append)
    reference = search_head("logreg", X, y, grid=grid, search="grid", seed=1, jobs=1, log=lambda _: None)
    assert isinstance(path.pipeline.named_steps["clf"], MiniBatchLogisticRegression)
    assert path.method == "path" and path.folds == 1 and "trained on mini-batches" in logs[0]
    assert path.best_params == reference.best_params and abs(path.cv_mean - reference.cv_mean) < 1e-9
    assert path.pipeline.fit(X, y).score(X, y) > 0.9
    fused = fused_head(get_head("logreg"), [32, 32]).for_rows(400).build(0)
    assert list(fused.named_steps) == ["fuse", "scale", "clf"] and isinstance(fused[-1], MiniBatchLogisticRegression)


def test_a_channel_that_fired_on_one_training_image_does_not_decide_a_linear_head(monkeypatch):
    """lite1 on digits: a pooled channel non-zero on one training image had a spread of 1e-6, so a val 9
    lighting it became z = 73,022 and was called a 1 at p = 1.000. Each feature's scale is now at
    least the median feature's (heads.SMALLEST_SCALE)."""
    import classifiers.heads as heads

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 50)
    X = rng.normal(0, 1, (100, 20)) + 3 * y[:, None] * (np.arange(20) < 5)
    X[:, 19] = 0.0
    X[7, 19] = 1e-5  # a class-0 image: the channel's only training value
    X[7, :5] += 6  # a 0 that looks like a 1: the head leans on the rare channel to fit it
    query = np.full((1, 20), 0.0)
    query[0, :5] = 3.0  # plainly class 1
    query[0, 19] = 0.08  # the dead channel lit
    fitted = heads.get_head("logreg").build(0).set_params(clf__C=1000.0).fit(X, y)
    assert fitted.predict(query)[0] == 1
    monkeypatch.setattr(heads, "SMALLEST_SCALE", 0.0)  # the old rule: the lit channel decides
    unfloored = heads.get_head("logreg").build(0).set_params(clf__C=1000.0).fit(X, y)
    assert unfloored.predict(query)[0] == 0 and unfloored.predict_proba(query)[0, 0] > 0.99
