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
from pathlib import Path

import numpy as np

from featurize.errors import CnnfeatError
from featurize.files import atomic_write

from .model import load_model, model_record

ML_OPSET = 3  # ai.onnx.ml, for the tree, SVM, scaler and kNN operators
HEAD_INPUT, OUTPUTS = "features", ("label", "probabilities")


def export_onnx(model_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write OUT/model.onnx for the saved model at `model_path`; return its path."""
    import onnx

    from featurize.engines import ONNX_OPSET, export_backbone

    model = load_model(model_path)
    if not hasattr(model.pipeline_, "predict_proba"):
        raise CnnfeatError(f"--model {model_path}: its head gives no probabilities, so it cannot be exported")
    record, weights = model.backbone_record()
    backbone = onnx.load_from_string(export_backbone(record.load(weights)))
    head = head_graph(model.pipeline_, model.n_features_in_, ONNX_OPSET)
    head = onnx.compose.add_prefix(head, "head/", rename_inputs=False, rename_outputs=False)
    head.ir_version = backbone.ir_version = max(head.ir_version, backbone.ir_version)
    _align_opsets(backbone, head)
    merged = onnx.compose.merge_models(backbone, head, io_map=[(HEAD_INPUT, HEAD_INPUT)])
    preprocessing = record.preprocessing()
    metadata = {
        "class_names": json.dumps(model.classes_.tolist()),
        "preprocessing": json.dumps({"resize_size": preprocessing.resize_size, "crop_size": preprocessing.crop_size,
                                     "interpolation": preprocessing.interpolation, "input": "uint8 RGB NCHW",
                                     "normalisation": "inside the graph"}),
        "backbone": record.name,
        "feature_fingerprint": model.feature_fingerprint or "",
        "model_info": json.dumps(model_record(model_path)),
    }
    onnx.helper.set_model_props(merged, metadata)
    onnx.checker.check_model(merged)
    path = Path(out) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_bytes(merged.SerializeToString())
    return path


def head_graph(pipeline, n_features: int, opset: int):
    """The fitted pipeline as an ONNX graph: float `features` (N,D) -> `label`, `probabilities`."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    convertible = onnx_equivalent(pipeline)
    try:
        graph = to_onnx(convertible, initial_types=[(HEAD_INPUT, FloatTensorType([None, n_features]))],
                        options={"zipmap": False}, target_opset={"": opset, "ai.onnx.ml": ML_OPSET})
    except Exception as error:  # skl2onnx raises several kinds for an estimator it does not know
        final = pipeline.steps[-1][1] if hasattr(pipeline, "steps") else pipeline
        raise CnnfeatError(f"cannot export this head to ONNX: skl2onnx does not convert "
                           f"{type(final).__name__} ({type(error).__name__}: {str(error).splitlines()[0]})") from None
    names = [output.name for output in graph.graph.output]
    if names != list(OUTPUTS):
        raise CnnfeatError(f"cannot export this head to ONNX: skl2onnx gave outputs {names}, not {list(OUTPUTS)}")
    return graph


def onnx_equivalent(estimator):
    """A copy of `estimator` with our own estimators replaced by scikit-learn ones computing the same
    function (same decisions and probabilities), so that skl2onnx can convert it."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline

    from .kernel_svm import PrecomputedKernelSVC
    from .linear import TorchLinearClassifier

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
    if isinstance(estimator, KNeighborsClassifier) and estimator.weights != "uniform":
        # skl2onnx 1.20 gives uniform votes whatever the weights (measured: probabilities off by up
        # to 0.13 on held-out digits): refuse rather than ship other numbers.
        raise CnnfeatError("cannot export this head to ONNX faithfully: skl2onnx ignores a kNN's distance "
                           "weights; refit it with uniform weights (fit --clf knn --grid "
                           "'{\"weights\": [\"uniform\"]}')")
    if isinstance(estimator, PrecomputedKernelSVC):
        return estimator.as_svc()
    if isinstance(estimator, TorchLinearClassifier):
        return _as_logistic_regression(estimator)
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
