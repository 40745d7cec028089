"""Head registry: name -> a scikit-learn Pipeline (scaling + estimator) and its default grid, as data.

Every pipeline names its steps `scale` and `clf`, so a grid key may be written short (`C`) or in
full (`clf__C`; --grid is resolved in classifiers.grids). A head whose estimator gives no
probabilities (`calibrate`) gets them at the refit on all training rows, through
CalibratedClassifierCV: its extra fits are paid once, not for every candidate of the search.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

import numpy as np

from common.errors import CnnfeatError

C_DECADES = [float(c) for c in np.logspace(-4, 3, 8)]  # 1e-4 ... 1e3


class Bound(NamedTuple):
    """Parameters that keep a fitted model's size bounded on large data, and the note saying so."""

    params: dict  # full names, set on the pipeline before the search
    why: str


@dataclass(frozen=True)
class Head:
    name: str
    description: str
    build: Callable[[int], object]  # seed -> unfitted Pipeline
    grid: list[dict] = field(default_factory=list)
    calibrate: bool = False
    validation: str = "kfold"  # or "slice": one stratified 20% validation slice of the training rows
    scales_badly_above: int | None = None  # training rows past which the default grid takes hours:
    # `fit` warns, `compare --clf all` leaves the head out (naming it runs it)
    auto_search: str = "grid"  # what `--search auto` runs above 1,000 rows: "oob" (out-of-bag scores, one
    # fit per candidate) for a forest, "coordinate" (one parameter at a time) where fits are dear; "path"
    # (the estimator's fit_path trains the candidates side by side) at any size
    axes: tuple = ()  # the parameters a coordinate search sweeps first, in order (the rest follow in grid order)
    at_scale: Callable[[int], object] | None = None  # seed -> the pipeline past MINIBATCH_ABOVE training
    # rows: the same model trained on mini-batches, its grid one path (see for_rows)
    bound: Callable[[int, int], Bound | None] | None = None  # (training rows, classes) -> what keeps the
    # fitted model's memory bounded there (a forest's trees grown on fewer rows), None where nothing need

    def for_rows(self, rows: int) -> Head:
        """This head as it is searched on `rows` training rows: past MINIBATCH_ABOVE, a head with a
        mini-batch form trains that one, its whole grid side by side on one validation slice."""
        if self.at_scale is None or rows <= MINIBATCH_ABOVE:
            return self
        return dataclasses.replace(self, build=self.at_scale, at_scale=None, validation="slice", auto_search="path")

    def bounded(self, rows: int, classes: int) -> tuple[Head, str | None]:
        """This head with its `bound` for `rows` training rows of `classes` classes set on every
        pipeline it builds, and the note that says so (None where no bound is needed)."""
        bound = self.bound(rows, classes) if self.bound else None
        if bound is None:
            return self, None
        return dataclasses.replace(self, build=partial(_with_params, self.build, bound.params), bound=None), bound.why


MINIBATCH_ABOVE = 50_000  # training rows past which logreg trains on mini-batches (lbfgs on 100k x 1280 x 100
# classes takes minutes a fit, and a search makes dozens)


HEADS: dict[str, Head] = {}


def _with_params(build, params: dict, seed: int):
    return build(seed).set_params(**params)


def register_head(name: str, description: str, grid, **settings):
    """Decorator: register a pipeline builder under `name` (settings: the other Head fields); a name
    can be registered once only."""

    def decorate(build):
        if name in HEADS:
            raise ValueError(f"head {name!r} is already registered")
        HEADS[name] = Head(name, description, build, grid if isinstance(grid, list) else [grid], **settings)
        return build

    return decorate


def get_head(name: str) -> Head:
    try:
        return HEADS[name]
    except KeyError:
        raise CnnfeatError(f"unknown head {name!r}; valid: {', '.join(HEADS)}") from None


def _pipeline(scale, clf):
    from sklearn.pipeline import Pipeline

    return Pipeline([("scale", scale), ("clf", clf)])


# Each feature's scale at least the median feature's: measured by benchmarks/scale_floor.py on 4 feature
# files (digits and hymenoptera, lite0/1/2), this floor was better or equal for logreg and svm in 7 of 8
# (to +0.023 accuracy, log-loss always lower), and no floor let one dead channel reach |z| = 73,022
SMALLEST_SCALE = 1.0


def _standardise():
    from .scaling import ChunkedStandardScaler  # StandardScaler, fitted a chunk of rows at a time

    return ChunkedStandardScaler(smallest_scale=SMALLEST_SCALE)


def _minibatch_logreg(seed):
    from .linear import MiniBatchLogisticRegression

    return _pipeline(_standardise(), MiniBatchLogisticRegression(seed=seed))


@register_head(
    "logreg",
    "logistic regression (standardised; mini-batches past 50,000 rows)",
    {"C": C_DECADES},
    at_scale=_minibatch_logreg,
)
def _logreg(seed):
    from sklearn.linear_model import LogisticRegression

    return _pipeline(_standardise(), LogisticRegression(max_iter=5000, random_state=seed))


@register_head(
    "svm",
    "support vector machine, linear and RBF kernels (standardised)",
    [
        {"kernel": ["linear"], "C": C_DECADES},
        {"kernel": ["rbf"], "C": [0.1, 1.0, 10.0, 100.0, 1000.0], "gamma": ["scale", 1e-4, 1e-3, 1e-2]},
    ],
    calibrate=True,
    scales_badly_above=20_000,
)
def _svm(seed):
    from .kernel_svm import PrecomputedKernelSVC  # SVC, with its kernel matrix computed once per fold

    return _pipeline(_standardise(), PrecomputedKernelSVC(random_state=seed))


@register_head(
    "knn",
    "k nearest neighbours (L2-normalised)",
    {"n_neighbors": [1, 3, 5, 7, 11, 15, 21], "weights": ["uniform", "distance"], "metric": ["euclidean", "cosine"]},
    scales_badly_above=50_000,  # brute force: every held-out row against every training row, per candidate
)
def _knn(seed):
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import Normalizer

    return _pipeline(Normalizer(), KNeighborsClassifier())


FOREST_BYTES = 2 * 2**30  # the grid's largest forest (300 trees) is kept under this, in memory and on disk
FOREST_TREES = 300
NODES_PER_DRAW = 1.3  # a fully grown tree's nodes per row drawn for it: measured 0.95-1.28 on 1,280-wide
# vectors of 100 hard-to-split classes (more with fewer rows drawn, as fewer repeat)


def _forest_bound(rows: int, classes: int) -> Bound | None:
    """Each tree grown on at most as many rows as keep 300 trees under FOREST_BYTES. A fully grown
    tree has about a node per training row, and each node keeps a float64 per class: 300 trees on
    40,000 rows of 100 classes need ~11 GB, twice that while the search holds its best forest beside
    the one it grows (an out-of-memory kill here, at 24 GB)."""
    node_bytes = 128 + 8 * classes  # measured: 970 bytes a node pickled with 100 classes, 278 with 20, 90 with 2
    draws = int(FOREST_BYTES / FOREST_TREES / (NODES_PER_DRAW * node_bytes))
    if draws >= rows:
        return None
    return Bound(
        {"clf__max_samples": draws / rows},
        f"rf with {rows} training rows of {classes} classes: each tree grown on {draws} rows drawn "
        f"(max_samples {draws / rows:.3g}), so {FOREST_TREES} trees stay under "
        f"{FOREST_BYTES / 2**30:g} GiB in memory and on disk (grown on every row: up to "
        f"~{FOREST_TREES * NODES_PER_DRAW * node_bytes * rows / 2**30:.0f} GiB)",
    )


@register_head(
    "rf",
    "random forest (no scaling: trees do not need it)",
    {"n_estimators": [100, 300], "max_features": ["sqrt", "log2", 0.1]},
    scales_badly_above=200_000,
    auto_search="oob",
    bound=_forest_bound,
)
def _rf(seed):
    from sklearn.ensemble import RandomForestClassifier

    return _pipeline("passthrough", RandomForestClassifier(random_state=seed))


@register_head(
    "mlp",
    "multi-layer perceptron with early stopping (standardised)",
    # [512] and alpha 1e-3, 1e-2 were in this grid too: on three feature sets (benchmarks/compare_speed.py)
    # they trained the very nets 1e-4 did, and [512] never beat the others on val; alpha 3 and 10 did worse.
    {"hidden_layer_sizes": [[256], [256, 128]], "alpha": [1e-4, 1e-1, 1.0]},
    auto_search="coordinate",
    axes=("alpha",),  # regularisation on the smaller net, then the nets at the best alpha
)
def _mlp(seed):
    from sklearn.neural_network import MLPClassifier

    return _pipeline(
        _standardise(), MLPClassifier(early_stopping=True, max_iter=500, n_iter_no_change=20, random_state=seed)
    )


@register_head(
    "linear",
    "one linear layer trained in torch (AdamW, warm-up + cosine, label smoothing; standardised)",
    {"weight_decay": [1e-4, 1e-3, 1e-2, 1e-1, 1.0]},
    validation="slice",
    auto_search="path",
)
def _linear(seed):
    from .linear import TorchLinearClassifier

    return _pipeline(_standardise(), TorchLinearClassifier(seed=seed))


def fused_head(head: Head, widths: list[int]) -> Head:
    """`head` for joined vectors of several backbones (featurize.fuse): its pipeline starts by
    L2-normalising each backbone's part on its own, so none drowns the others by the size of its
    activations. Stateless, so it leaks nothing across folds; it travels with the saved model."""

    def each_part_normalised():
        from sklearn.compose import ColumnTransformer
        from sklearn.preprocessing import Normalizer

        edges = np.cumsum([0, *widths])
        parts = [
            (f"part{i}", Normalizer(), slice(start, end))
            for i, (start, end) in enumerate(zip(edges[:-1].tolist(), edges[1:].tolist()))
        ]
        return ColumnTransformer(parts)

    return prepend_step(head, "fuse", each_part_normalised)


def power_head(head: Head) -> Head:
    """`head` with `--normalize power`: its pipeline starts with a signed square root and an L2
    normalisation of each row (scaling.PowerNormalizer, stateless); it travels with the saved model."""

    def power():
        from .scaling import PowerNormalizer

        return PowerNormalizer()

    return prepend_step(dataclasses.replace(head, description=f"{head.description}, power-normalised"), "power", power)


def prepend_step(head: Head, name: str, make_step) -> Head:
    """`head` whose pipelines (its own and its at-scale form) start with step `name`, made by `make_step()`."""

    def prepended(build):
        def prepended_build(seed):
            from sklearn.pipeline import Pipeline

            return Pipeline([(name, make_step()), *build(seed).steps])

        return prepended_build

    return dataclasses.replace(head, build=prepended(head.build), at_scale=head.at_scale and prepended(head.at_scale))


def final_step(estimator):
    """The estimator at the end of a fitted head's pipeline (its `clf`, calibrated or not); the
    estimator itself where it is not a pipeline (an ensemble)."""
    return estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
