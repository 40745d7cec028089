"""Heads on cached feature vectors: the head registry with default grids, the cross-validated
search, and the saved model (`FeatureClassifier`, `save_model`, `load_model`)."""
from .heads import HEADS, Head, get_head, register_head, resolve_grid
from .model import FeatureClassifier, FeatureMismatch, load_model, save_model
from .search import SCORINGS, SearchResult, search_head

__all__ = ["HEADS", "Head", "get_head", "register_head", "resolve_grid", "FeatureClassifier", "FeatureMismatch",
           "load_model", "save_model", "SCORINGS", "SearchResult", "search_head"]
