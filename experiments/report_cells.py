"""The cells of compare's table, as report.md and report.html both show them: the columns (header
and what it means) and each row's texts, with the number a numeric column sorts by."""

from __future__ import annotations

# The table's columns: (key for tests and scripts, header, what the header's tooltip says). The cells
# are made by table_cells, in this order; the header texts are report.md's.
TABLE_COLUMNS = (
    ("rank", "#", "rank by the held-out score"),
    ("backbone", "backbone", "the network the features came from"),
    ("head", "head", "the classifier fitted on the features; (reused): fitted by an earlier run, nothing changed"),
    ("accuracy", "accuracy (95% CI)", "held-out accuracy, with a percentile bootstrap interval over held-out images"),
    ("balanced_accuracy", "bal. acc.", "held-out balanced accuracy: the mean of the per-class recalls"),
    ("f1_macro", "macro-F1", "held-out F1, the mean over classes"),
    ("log_loss", "log-loss", "held-out log-loss, for heads that give probabilities (lower is better)"),
    ("cv", "CV (mean ± std)", "the cross-validated score on the training rows"),
    (
        "mcnemar_p_vs_best",
        "McNemar p vs best",
        "exact two-sided test on the images where this row and the best disagree",
    ),
    ("fit_seconds", "fit s", "seconds to fit (search included)"),
    ("predict_ms_per_image", "predict ms/img", "milliseconds to predict one held-out image's features"),
    ("best_params", "best params", "the parameters the search chose"),
    ("selected_by", "selected by", "how the parameters were chosen (never on the held-out images)"),
)


def table_cells(r: dict) -> list[tuple]:
    """One row's cells, in TABLE_COLUMNS' order: (text,) for a text column (sorted by its text), (text,
    number to sort by) for a numeric one, the number None where there is none. The texts are report.md's."""
    params = ", ".join(f"{k}={v}" for k, v in (r["best_params"] or {}).items())
    # McNemar's p of the best row against itself: no image where they disagree, p = 1
    p_best = 1.0 if r["rank"] == 1 else r["mcnemar_p_vs_best"]
    return [
        (str(r["rank"]), r["rank"]),
        (str(r["backbone"]),),
        (f"{r['head']}{' (reused)' if r['reused'] else ''}",),
        (f"{r['accuracy']:.3f} ({r['ci_low']:.3f}–{r['ci_high']:.3f})", r["accuracy"]),
        (fmt(r["balanced_accuracy"]), r["balanced_accuracy"]),
        (fmt(r["f1_macro"]), r["f1_macro"]),
        (fmt(r["log_loss"]), r["log_loss"]),
        (cv_cell(r), r["cv_mean"]),
        (mcnemar_cell(r), p_best),
        (fmt(r["fit_seconds"], 2), r["fit_seconds"]),
        (fmt(r["predict_ms_per_image"], 3), r["predict_ms_per_image"]),
        (params or "—",),
        (str(r["selected_by"] or "—"),),
    ]


def cv_cell(r: dict) -> str:
    if r["cv_mean"] is None:
        return "—"
    if r["cv_folds"] == 0:
        return f"{r['cv_mean']:.3f} (OOB)"
    if r["cv_folds"] == 1:
        return f"{r['cv_mean']:.3f} (1 slice)"
    return f"{r['cv_mean']:.3f} ± {r['cv_std']:.3f}"


def mcnemar_cell(r: dict) -> str:
    if r["rank"] == 1:
        return "best"
    return "—" if r["mcnemar_p_vs_best"] is None else f"{r['mcnemar_p_vs_best']:.3f}"


def fmt(value, digits=3):
    return "—" if value is None else f"{value:.{digits}f}"


def md_cell(text) -> str:
    """Text that stays inside one cell of a Markdown table (a '|' in a name would end it)."""
    return str(text).replace("|", "\\|")
