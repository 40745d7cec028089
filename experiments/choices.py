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
# The default fine-tune recipe (experiments.finetune.FinetuneSettings), chosen by
# benchmarks/finetune_recipes.py on digits and hymenoptera (docs/finetune.md): every block unfrozen,
# batch-norm statistics kept, the new layer started as a linear probe, crops of half the image or more.
FINETUNE_EPOCHS = 5
FINETUNE_UNFREEZE = "all"
FINETUNE_CROP_SCALE = 0.5
HEAD_INITS = ("probe", "random")  # how a fine-tune's new linear layer starts; the first is the default
# Whether unfrozen batch-norm layers update their statistics; the first is the default:
BATCHNORM_MODES = ("frozen", "train")

# Copies (checked by tests/experiments/test_choices.py):
HEADS = ("logreg", "svm", "knn", "rf", "mlp", "linear")  # classifiers.HEADS, in the registry's order
SCORINGS = ("accuracy", "balanced_accuracy", "f1_macro")  # classifiers.SCORINGS
SEARCH_METHODS = ("auto", "grid", "halving", "coordinate", "path")  # what SearchSettings.check accepts
NORMALIZE_MODES = ("none", "power")  # classifiers.NORMALIZE_MODES

# Cosine similarity of centred vectors (experiments/neighbours.py) at and above which `audit` and
# `compare` count two images as copies. From benchmarks/audit_thresholds.py on hymenoptera (lite0):
# distinct photos reach at most 0.744 (0.744 flip-averaged) to their nearest other one; re-encoded
# (q70), resized, cropped and mirrored copies 0.79-1.0, 95% of each kind above 0.82.
AUDIT_NEAR = 0.80
