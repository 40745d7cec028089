"""Our knn head with distance weights as ONNX operators, written out.

skl2onnx 1.20 converts KNeighborsClassifier(weights="distance") with uniform votes (measured:
probabilities off by up to 0.13 on held-out digits), so `export` hands this head to
`weighted_knn_graph` instead: float `features` (N,D) -> `label`, `probabilities`, computing what
scikit-learn computes.
"""

from __future__ import annotations

import numpy as np

from common.errors import CnnfeatError

from .heads import final_step

HEAD_INPUT, OUTPUTS = "features", ("label", "probabilities")


def is_weighted_knn(pipeline) -> bool:
    from sklearn.neighbors import KNeighborsClassifier

    final = final_step(pipeline)
    return isinstance(final, KNeighborsClassifier) and final.weights == "distance"


def weighted_knn_graph(pipeline, opset: int):
    """Our knn head (L2 Normalizer, then kNN with distance weights, euclidean or cosine) as ONNX
    operators: votes weighted 1/distance, or only the neighbours at distance 0 when there are any."""
    from onnx import TensorProto, helper, numpy_helper

    knn, normalised = _parts(pipeline)
    fitted = knn._fit_X.astype(np.float32)
    x = "x_unit" if normalised else HEAD_INPUT
    nodes = (_unit_rows(HEAD_INPUT, x) if normalised else []) + _distances(x, knn.effective_metric_) + _votes()
    graph = helper.make_graph(
        nodes,
        "weighted_knn",
        [helper.make_tensor_value_info(HEAD_INPUT, TensorProto.FLOAT, [None, fitted.shape[1]])],
        [
            helper.make_tensor_value_info(OUTPUTS[0], TensorProto.INT64, [None]),
            helper.make_tensor_value_info(OUTPUTS[1], TensorProto.FLOAT, [None, len(knn.classes_)]),
        ],
        initializer=[numpy_helper.from_array(np.asarray(v), name) for name, v in _constants(knn, fitted).items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _parts(pipeline):
    """(the fitted kNN, whether an L2 Normalizer comes before it); an error for any other pipeline."""
    steps = [step for _, step in pipeline.steps if step not in (None, "passthrough")]
    knn, scalers = steps[-1], steps[:-1]
    metric = knn.effective_metric_
    if metric not in ("euclidean", "cosine") or any(_norm_of(s) != "l2" for s in scalers) or len(scalers) > 1:
        raise CnnfeatError(
            f"cannot export this head to ONNX: a distance-weighted kNN with metric {metric} "
            f"after {[type(s).__name__ for s in scalers]} (supported: an L2 Normalizer, then "
            f"euclidean or cosine)"
        )
    return knn, bool(scalers)


def _constants(knn, fitted: np.ndarray) -> dict:
    return {
        "fit_t": fitted.T,
        "fit_sq": (fitted**2).sum(1)[None, :],
        "fit_norm": np.linalg.norm(fitted, axis=1)[None, :].astype(np.float32),
        "fit_labels": knn._y.astype(np.int64),
        "k": np.asarray([knn.n_neighbors], np.int64),
        "one_axis": np.asarray([1], np.int64),
        "last_axis": np.asarray([-1], np.int64),
        "zero": np.asarray(0, np.float32),
        "two": np.asarray(2, np.float32),
        "one": np.asarray(1, np.float32),
        "tiny": np.asarray(1e-30, np.float32),
        "depth": np.asarray(len(knn.classes_), np.int64),
        "off_on": np.asarray([0, 1], np.float32),
    }


def _unit_rows(x: str, out: str) -> list:
    """x / ||x||, a zero row left as it is (as Normalizer does)."""
    from onnx.helper import make_node as node

    return [
        node("Mul", [x, x], ["x_sq"]),
        node("ReduceSum", ["x_sq", "one_axis"], ["x_sq_sum"], keepdims=1),
        node("Sqrt", ["x_sq_sum"], ["x_norm"]),
        node("Max", ["x_norm", "tiny"], ["x_norm_safe"]),
        node("Div", [x, "x_norm_safe"], [out]),
    ]


def _distances(x: str, metric: str) -> list:
    """`distances` (N, fitted rows) of the rows of x to the fitted rows, euclidean or cosine."""
    from onnx.helper import make_node as node

    nodes = [
        node("MatMul", [x, "fit_t"], ["products"]),
        node("Mul", [x, x], ["q_sq"]),
        node("ReduceSum", ["q_sq", "one_axis"], ["q_sq_sum"], keepdims=1),
    ]
    if metric == "euclidean":
        return nodes + [
            node("Mul", ["products", "two"], ["products2"]),
            node("Add", ["q_sq_sum", "fit_sq"], ["sq_sum"]),
            node("Sub", ["sq_sum", "products2"], ["d_sq"]),
            node("Max", ["d_sq", "zero"], ["d_sq_pos"]),
            node("Sqrt", ["d_sq_pos"], ["distances"]),
        ]
    return nodes + [
        node("Sqrt", ["q_sq_sum"], ["q_norm"]),
        node("Mul", ["q_norm", "fit_norm"], ["norms"]),
        node("Max", ["norms", "tiny"], ["norms_safe"]),
        node("Div", ["products", "norms_safe"], ["cosines"]),
        node("Sub", ["one", "cosines"], ["distances"]),
    ]


def _votes() -> list:
    """From `distances`: the k nearest's votes weighted 1/d (rows with a neighbour at distance 0
    vote with those neighbours only), normalised to `probabilities`, and the `label`."""
    from onnx import TensorProto
    from onnx.helper import make_node as node

    return [
        node("Neg", ["distances"], ["negated"]),
        node("TopK", ["negated", "k"], ["top_negated", "top_index"], axis=-1, largest=1, sorted=1),
        node("Neg", ["top_negated"], ["top_distances"]),
        node("Gather", ["fit_labels", "top_index"], ["top_labels"]),
        node("Equal", ["top_distances", "zero"], ["at_zero"]),
        node("Cast", ["at_zero"], ["at_zero_f"], to=TensorProto.FLOAT),
        node("ReduceMax", ["at_zero_f"], ["row_has_zero_f"], axes=[1], keepdims=1),
        node("Cast", ["row_has_zero_f"], ["row_has_zero"], to=TensorProto.BOOL),
        node("Max", ["top_distances", "tiny"], ["top_safe"]),
        node("Reciprocal", ["top_safe"], ["inverse"]),
        node("Where", ["row_has_zero", "at_zero_f", "inverse"], ["weights"]),
        node("OneHot", ["top_labels", "depth", "off_on"], ["votes"], axis=-1),
        node("Unsqueeze", ["weights", "last_axis"], ["weights_3d"]),
        node("Mul", ["votes", "weights_3d"], ["weighted"]),
        node("ReduceSum", ["weighted", "one_axis"], ["totals"], keepdims=0),
        node("ReduceSum", ["totals", "one_axis"], ["total"], keepdims=1),
        node("Div", ["totals", "total"], [OUTPUTS[1]]),
        node("ArgMax", [OUTPUTS[1]], [OUTPUTS[0]], axis=1, keepdims=0),
    ]


def _norm_of(step) -> str | None:
    from sklearn.preprocessing import Normalizer

    return step.norm if isinstance(step, Normalizer) else None
