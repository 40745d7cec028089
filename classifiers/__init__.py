"""Heads on cached feature vectors: the head registry with default grids, the cross-validated
search, the saved model, ensembles and the ONNX export.

The names below are the package's public API: experiments, serving and the CLI import from
`classifiers` itself, never from its modules, so the modules can be rearranged without touching them.
"""

from .bundle import check_record, load_model, model_record, save_model
from .embedding import FeatureMismatch
from .ensemble import ensemble_model, parse_ensembles
from .export import export_onnx
from .grids import resolve_grid
from .heads import HEADS, Head, final_step, fused_head, get_head, power_head, register_head
from .linear import warmup_cosine
from .linear_form import linear_form, one_row_per_class
from .model import FeatureClassifier
from .search import NORMALIZE_MODES, SCORINGS, SearchResult, SearchSettings, cross_validation_backend, search_head

__all__ = [
    "HEADS",
    "Head",
    "fused_head",
    "power_head",
    "get_head",
    "register_head",
    "resolve_grid",
    "FeatureClassifier",
    "FeatureMismatch",
    "check_record",
    "load_model",
    "model_record",
    "save_model",
    "NORMALIZE_MODES",
    "SCORINGS",
    "SearchResult",
    "SearchSettings",
    "search_head",
    "cross_validation_backend",
    "ensemble_model",
    "parse_ensembles",
    "export_onnx",
    "warmup_cosine",
    "linear_form",
    "one_row_per_class",
    "final_step",
]
