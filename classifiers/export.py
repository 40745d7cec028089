"""`export`: a saved model as one ONNX graph, the safe format to share (loading it runs no code).

The graph maps uint8 images (N,3,H,W), already resized and centre-cropped as its `preprocessing`
metadata says, to `label` (int64, an index into the `class_names` metadata) and `probabilities`
(N,C float32). It is the backbone (normalisation included, as `extract` exports it) followed by
the fitted head converted by skl2onnx. Two of our heads have no skl2onnx converter and are handed
to it as the scikit-learn estimator that computes the same function: `PrecomputedKernelSVC` as an
`SVC` holding its support vectors, the torch `linear` head as a `LogisticRegression` with its
weights; the knn head with distance weights is written out by classifiers.knn_onnx.
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
from .heads import final_step
from .knn_onnx import HEAD_INPUT, OUTPUTS, is_weighted_knn, weighted_knn_graph

ML_OPSET = 3  # ai.onnx.ml, for the tree, SVM, scaler and kNN operators


def export_onnx(model_path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write OUT/model.onnx for the saved model at `model_path`; return its path."""
    import onnx

    from featurize import ONNX_OPSET, export_backbone, recipe_of

    model = load_model(model_path)
    _check_exportable(model, model_path)  # before the folder is made: a refusal leaves nothing behind
    record, weights = model.backbone_record()
    out = ensure_writable(out)
    recipe = recipe_of(model.feature_config)  # stages, pooling and views are computed inside the graph too
    backbone = onnx.load_from_string(export_backbone(record.load(weights, recipe=recipe)))
    head = head_graph(model.pipeline_, model.n_features_in_, ONNX_OPSET)
    head = onnx.compose.add_prefix(head, "head/", rename_inputs=False, rename_outputs=False)
    head.ir_version = backbone.ir_version = max(head.ir_version, backbone.ir_version)
    _align_opsets(backbone, head)
    merged = onnx.compose.merge_models(backbone, head, io_map=[(HEAD_INPUT, HEAD_INPUT)])
    metadata = _metadata(model, model_path, record, recipe)
    onnx.helper.set_model_props(merged, metadata)
    onnx.checker.check_model(merged)
    path = out / "model.onnx"
    with atomic_write(path) as tmp:
        tmp.write_bytes(merged.SerializeToString())
    return path


def _check_exportable(model, model_path) -> None:
    if is_ensemble(model.pipeline_):  # skl2onnx would convert a distance-weighted kNN inside it wrongly
        raise CnnfeatError(
            f"--model {model_path}: an ensemble of heads; export takes one head (serve and "
            f"joblib.load take the ensemble)"
        )
    if "power" in getattr(model.pipeline_, "named_steps", {}):
        raise CnnfeatError(
            f"--model {model_path}: a head fitted with --normalize power; export does not take it yet "
            f"(serve, predict and joblib.load do)"
        )
    if not hasattr(model.pipeline_, "predict_proba"):
        raise CnnfeatError(f"--model {model_path}: its head gives no probabilities, so it cannot be exported")


def _metadata(model, model_path, record, recipe) -> dict:
    """The graph's metadata: classes, what an input image must be, the backbone and the model's record."""
    preprocessing = recipe.input_preprocessing(record)
    return {
        "class_names": json.dumps([printable(c) for c in model.classes_.tolist()]),  # valid UTF-8 for any reader
        "preprocessing": json.dumps(
            {
                "resize_size": preprocessing.resize_size,
                "crop_size": preprocessing.crop_size,
                "interpolation": preprocessing.interpolation,
                "input": "uint8 RGB NCHW",
                "normalisation": "inside the graph",
                "tta": recipe.tta,
                "recipe": recipe.config(),
            }
        ),
        "backbone": record.name,
        "feature_fingerprint": model.feature_fingerprint or "",
        "model_info": json.dumps(model_record(model_path)),
    }


def head_graph(pipeline, n_features: int, opset: int):
    """The fitted pipeline as an ONNX graph: float `features` (N,D) -> `label`, `probabilities`."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    if is_weighted_knn(pipeline):  # skl2onnx would convert it wrongly
        return weighted_knn_graph(pipeline, opset)
    convertible = onnx_equivalent(pipeline)
    try:
        with warnings.catch_warnings():  # skl2onnx's SVC converter reads probA_/probB_, deprecated in scikit-learn 1.9
            warnings.filterwarnings("ignore", "Attribute `prob[AB]_` was deprecated", FutureWarning)
            graph = to_onnx(
                convertible,
                initial_types=[(HEAD_INPUT, FloatTensorType([None, n_features]))],
                options={"zipmap": False},
                target_opset={"": opset, "ai.onnx.ml": ML_OPSET},
            )
    except Exception as error:  # skl2onnx raises several kinds for an estimator it does not know
        raise CnnfeatError(
            f"cannot export this head to ONNX: skl2onnx does not convert "
            f"{type(final_step(pipeline)).__name__} ({type(error).__name__}: {error_line(error)})"
        ) from None
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
        copied.steps = [
            (name, onnx_equivalent(step)) for name, step in estimator.steps if step not in (None, "passthrough")
        ]  # an identity step: skl2onnx wants none
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
