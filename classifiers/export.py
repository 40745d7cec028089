"""`export`: a saved model as one ONNX graph, the safe format to share (loading it runs no code).

The graph maps uint8 images (N,3,H,W), already resized and centre-cropped as its `preprocessing`
metadata says, to `label` (int64, an index into the `class_names` metadata) and `probabilities`
(N,C float32). It is the backbone (normalisation included, as `extract` exports it) followed by
the fitted head converted by skl2onnx. Two of our heads have no skl2onnx converter and are handed
to it as the scikit-learn estimator that computes the same function: `PrecomputedKernelSVC` as an
`SVC` holding its support vectors, the torch `linear` head as a `LogisticRegression` with its
weights.
"""
from __future__ import annotations

import copy
import json
import os
import warnings
from pathlib import Path

import numpy as np

from common.errors import CnnfeatError, error_line
from common.files import atomic_write, ensure_writable
from common.names import printable

from .bundle import load_model, model_record
from .ensemble import is_ensemble

ML_OPSET = 3  # ai.onnx.ml, for the tree, SVM, scaler and kNN operators
HEAD_INPUT, OUTPUTS = "features", ("label", "probabilities")


def export_onnx(model_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write OUT/model.onnx for the saved model at `model_path`; return its path."""
    import onnx

    from featurize import ONNX_OPSET, export_backbone

    model = load_model(model_path)
    out = ensure_writable(out)
    if is_ensemble(model.pipeline_):  # skl2onnx would convert a distance-weighted kNN inside it wrongly
        raise CnnfeatError(f"--model {model_path}: an ensemble of heads; export takes one head (serve and "
                           f"joblib.load take the ensemble)")
    if not hasattr(model.pipeline_, "predict_proba"):
        raise CnnfeatError(f"--model {model_path}: its head gives no probabilities, so it cannot be exported")
    record, weights = model.backbone_record()
    tta = model.feature_config.get("tta", "none")  # a flip-averaged backbone flips inside the graph too
    backbone = onnx.load_from_string(export_backbone(record.load(weights, tta=tta)))
    head = head_graph(model.pipeline_, model.n_features_in_, ONNX_OPSET)
    head = onnx.compose.add_prefix(head, "head/", rename_inputs=False, rename_outputs=False)
    head.ir_version = backbone.ir_version = max(head.ir_version, backbone.ir_version)
    _align_opsets(backbone, head)
    merged = onnx.compose.merge_models(backbone, head, io_map=[(HEAD_INPUT, HEAD_INPUT)])
    preprocessing = record.preprocessing()
    metadata = {
        "class_names": json.dumps([printable(c) for c in model.classes_.tolist()]),  # valid UTF-8 for any reader
        "preprocessing": json.dumps({"resize_size": preprocessing.resize_size, "crop_size": preprocessing.crop_size,
                                     "interpolation": preprocessing.interpolation, "input": "uint8 RGB NCHW",
                                     "normalisation": "inside the graph", "tta": tta}),
        "backbone": record.name,
        "feature_fingerprint": model.feature_fingerprint or "",
        "model_info": json.dumps(model_record(model_path)),
    }
    onnx.helper.set_model_props(merged, metadata)
    onnx.checker.check_model(merged)
    path = out / "model.onnx"
    with atomic_write(path) as tmp:
        tmp.write_bytes(merged.SerializeToString())
    return path


def head_graph(pipeline, n_features: int, opset: int):
    """The fitted pipeline as an ONNX graph: float `features` (N,D) -> `label`, `probabilities`."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    if _is_weighted_knn(pipeline):
        return weighted_knn_graph(pipeline, opset)
    convertible = onnx_equivalent(pipeline)
    try:
        with warnings.catch_warnings():  # skl2onnx's SVC converter reads probA_/probB_, deprecated in scikit-learn 1.9
            warnings.filterwarnings("ignore", "Attribute `prob[AB]_` was deprecated", FutureWarning)
            graph = to_onnx(convertible, initial_types=[(HEAD_INPUT, FloatTensorType([None, n_features]))],
                            options={"zipmap": False}, target_opset={"": opset, "ai.onnx.ml": ML_OPSET})
    except Exception as error:  # skl2onnx raises several kinds for an estimator it does not know
        final = pipeline.steps[-1][1] if hasattr(pipeline, "steps") else pipeline
        raise CnnfeatError(f"cannot export this head to ONNX: skl2onnx does not convert "
                           f"{type(final).__name__} ({type(error).__name__}: {error_line(error)})") from None
    names = [output.name for output in graph.graph.output]
    if names != list(OUTPUTS):
        raise CnnfeatError(f"cannot export this head to ONNX: skl2onnx gave outputs {names}, not {list(OUTPUTS)}")
    return graph


def onnx_equivalent(estimator):
    """A copy of `estimator` with our own estimators replaced by scikit-learn ones computing the same
    function (same decisions and probabilities), so that skl2onnx can convert it."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from .kernel_svm import PrecomputedKernelSVC
    from .linear import TorchLinearClassifier
    from .scaling import ChunkedStandardScaler

    if isinstance(estimator, Pipeline):
        copied = copy.copy(estimator)
        copied.steps = [(name, onnx_equivalent(step)) for name, step in estimator.steps
                        if step not in (None, "passthrough")]  # an identity step: skl2onnx wants none
        return copied
    if isinstance(estimator, CalibratedClassifierCV):
        copied = copy.deepcopy(estimator)
        for calibrated in copied.calibrated_classifiers_:
            calibrated.estimator = onnx_equivalent(calibrated.estimator)
        return copied
    if isinstance(estimator, PrecomputedKernelSVC):
        return estimator.as_svc()
    if isinstance(estimator, TorchLinearClassifier):
        return _as_logistic_regression(estimator)
    if isinstance(estimator, ChunkedStandardScaler):  # the same fitted statistics in the class skl2onnx knows
        plain = StandardScaler()
        plain.__dict__.update(estimator.__dict__)
        return plain
    return estimator


def _as_logistic_regression(layer):
    """The linear head's softmax(x W^T + b) as a fitted LogisticRegression. With two classes
    scikit-learn keeps one row and applies a sigmoid: sigmoid(z1 - z0) = softmax(z)[1]."""
    from sklearn.linear_model import LogisticRegression

    regression = LogisticRegression()
    coef, intercept = layer.coef_.astype(np.float64), layer.intercept_.astype(np.float64)
    if len(layer.classes_) == 2:
        coef, intercept = coef[1:] - coef[:1], intercept[1:] - intercept[:1]
    regression.coef_, regression.intercept_ = coef, intercept
    regression.classes_, regression.n_features_in_ = layer.classes_, layer.n_features_in_
    return regression


def _align_opsets(*models) -> None:
    """merge_models wants one version per operator domain in both graphs: take the higher."""
    versions = {}
    for model in models:
        for entry in model.opset_import:
            versions[entry.domain] = max(versions.get(entry.domain, 0), entry.version)
    for model in models:
        for entry in model.opset_import:
            entry.version = versions[entry.domain]


# -- the distance-weighted kNN, written out -----------------------------------------------------
# skl2onnx 1.20 converts KNeighborsClassifier(weights="distance") with uniform votes (measured:
# probabilities off by up to 0.13 on held-out digits), so our knn head gets its own graph.

def _is_weighted_knn(pipeline) -> bool:
    from sklearn.neighbors import KNeighborsClassifier
    final = pipeline.steps[-1][1] if hasattr(pipeline, "steps") else pipeline
    return isinstance(final, KNeighborsClassifier) and final.weights == "distance"


def weighted_knn_graph(pipeline, opset: int):
    """Our knn head (L2 Normalizer, then kNN with distance weights, euclidean or cosine) as ONNX
    operators, computing what scikit-learn computes: votes weighted 1/distance, or only the
    neighbours at distance 0 when there are any."""
    from onnx import TensorProto, helper, numpy_helper

    steps = [step for _, step in pipeline.steps if step not in (None, "passthrough")]
    knn, scalers = steps[-1], steps[:-1]
    metric = knn.effective_metric_
    if metric not in ("euclidean", "cosine") or any(_norm_of(s) != "l2" for s in scalers) or len(scalers) > 1:
        raise CnnfeatError(f"cannot export this head to ONNX: a distance-weighted kNN with metric {metric} "
                           f"after {[type(s).__name__ for s in scalers]} (supported: an L2 Normalizer, then "
                           f"euclidean or cosine)")
    fitted = knn._fit_X.astype(np.float32)
    constants = {"fit_t": fitted.T, "fit_sq": (fitted ** 2).sum(1)[None, :],
                 "fit_norm": np.linalg.norm(fitted, axis=1)[None, :].astype(np.float32),
                 "fit_labels": knn._y.astype(np.int64), "k": np.asarray([knn.n_neighbors], np.int64),
                 "one_axis": np.asarray([1], np.int64), "last_axis": np.asarray([-1], np.int64),
                 "zero": np.asarray(0, np.float32), "two": np.asarray(2, np.float32),
                 "one": np.asarray(1, np.float32), "tiny": np.asarray(1e-30, np.float32),
                 "depth": np.asarray(len(knn.classes_), np.int64), "off_on": np.asarray([0, 1], np.float32)}
    node = helper.make_node
    nodes = []
    x = HEAD_INPUT
    if scalers:  # x / ||x||, a zero row left as it is (as Normalizer does)
        nodes += [node("Mul", [x, x], ["x_sq"]), node("ReduceSum", ["x_sq", "one_axis"], ["x_sq_sum"], keepdims=1),
                  node("Sqrt", ["x_sq_sum"], ["x_norm"]), node("Max", ["x_norm", "tiny"], ["x_norm_safe"]),
                  node("Div", [x, "x_norm_safe"], ["x_unit"])]
        x = "x_unit"
    nodes += [node("MatMul", [x, "fit_t"], ["products"]), node("Mul", [x, x], ["q_sq"]),
              node("ReduceSum", ["q_sq", "one_axis"], ["q_sq_sum"], keepdims=1)]
    if metric == "euclidean":
        nodes += [node("Mul", ["products", "two"], ["products2"]), node("Add", ["q_sq_sum", "fit_sq"], ["sq_sum"]),
                  node("Sub", ["sq_sum", "products2"], ["d_sq"]), node("Max", ["d_sq", "zero"], ["d_sq_pos"]),
                  node("Sqrt", ["d_sq_pos"], ["distances"])]
    else:
        nodes += [node("Sqrt", ["q_sq_sum"], ["q_norm"]), node("Mul", ["q_norm", "fit_norm"], ["norms"]),
                  node("Max", ["norms", "tiny"], ["norms_safe"]), node("Div", ["products", "norms_safe"], ["cosines"]),
                  node("Sub", ["one", "cosines"], ["distances"])]
    nodes += [
        node("Neg", ["distances"], ["negated"]),
        node("TopK", ["negated", "k"], ["top_negated", "top_index"], axis=-1, largest=1, sorted=1),
        node("Neg", ["top_negated"], ["top_distances"]),
        node("Gather", ["fit_labels", "top_index"], ["top_labels"]),
        # weights 1/d; rows with a neighbour at distance 0 vote with those neighbours only
        node("Equal", ["top_distances", "zero"], ["at_zero"]), node("Cast", ["at_zero"], ["at_zero_f"], to=TensorProto.FLOAT),
        node("ReduceMax", ["at_zero_f"], ["row_has_zero_f"], axes=[1], keepdims=1),
        node("Cast", ["row_has_zero_f"], ["row_has_zero"], to=TensorProto.BOOL),
        node("Max", ["top_distances", "tiny"], ["top_safe"]), node("Reciprocal", ["top_safe"], ["inverse"]),
        node("Where", ["row_has_zero", "at_zero_f", "inverse"], ["weights"]),
        node("OneHot", ["top_labels", "depth", "off_on"], ["votes"], axis=-1),
        node("Unsqueeze", ["weights", "last_axis"], ["weights_3d"]), node("Mul", ["votes", "weights_3d"], ["weighted"]),
        node("ReduceSum", ["weighted", "one_axis"], ["totals"], keepdims=0),
        node("ReduceSum", ["totals", "one_axis"], ["total"], keepdims=1),
        node("Div", ["totals", "total"], [OUTPUTS[1]]),
        node("ArgMax", [OUTPUTS[1]], [OUTPUTS[0]], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "weighted_knn", [helper.make_tensor_value_info(HEAD_INPUT, TensorProto.FLOAT, [None, fitted.shape[1]])],
        [helper.make_tensor_value_info(OUTPUTS[0], TensorProto.INT64, [None]),
         helper.make_tensor_value_info(OUTPUTS[1], TensorProto.FLOAT, [None, len(knn.classes_)])],
        initializer=[numpy_helper.from_array(np.asarray(v), name) for name, v in constants.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _norm_of(step) -> str | None:
    from sklearn.preprocessing import Normalizer
    return step.norm if isinstance(step, Normalizer) else None
