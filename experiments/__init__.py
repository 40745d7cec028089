"""Splits, metrics, and the runners behind `fit`, `predict`, `finetune` and `compare` (with its reports)."""
