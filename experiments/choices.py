"""The names the commands offer as choices, here where importing them costs nothing: `cnnfeat
--help` shows them without importing torch or scikit-learn.

Names the library keeps behind a heavy import are copied, names only, and
tests/experiments/test_choices.py pins every copy to the registry it comes from, so --help cannot
disagree with the code: the heads, scorings and search methods of `classifiers` (whose package
imports scikit-learn). What `featurize`'s root exports at no cost (DEFAULT_BACKBONE, ENGINES,
TTA_MODES, DTYPES, ...) the CLI reads from there."""

from typing import Literal, get_args

ExplainMethod = Literal["auto", "cam", "occlusion"]
EXPLAIN_METHODS = get_args(ExplainMethod)  # experiments.explain's own (it imports them from here)

# Copies (checked by tests/experiments/test_choices.py):
HEADS = ("logreg", "svm", "knn", "rf", "mlp", "linear")  # classifiers.HEADS, in the registry's order
SCORINGS = ("accuracy", "balanced_accuracy", "f1_macro")  # classifiers.SCORINGS
SEARCH_METHODS = ("auto", "grid", "halving", "coordinate", "path")  # what SearchSettings.check accepts

# Cosine similarity at and above which `audit` counts two images as copies. From
# benchmarks/audit_thresholds.py on hymenoptera (lite0): distinct photos reach at most 0.81 (0.83
# flip-averaged) to their nearest other one; re-encoded, resized, cropped and mirrored copies 0.84-1.0,
# 95% of them above 0.90.
AUDIT_NEAR = 0.85
