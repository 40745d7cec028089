"""Splits, metrics, and the runners behind `fit` and `predict` (and, next, `compare` and its reports)."""
