"""The report of `compare`: report.md/.csv/.json/.html, predictions per row, and the pictures
(experiments.plots draws them).

The files are made in memory, then written as a set (common.files.written_together): a full disk
or a kill leaves the previous report or the new one, never half of one or a mix. Text is UTF-8; a
name that is not (a file name from another system) is written readably, with \\xNN escapes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from common.files import written_together
from common.names import printable

from .plots import Embedding, confusion_png, embedding_figure, per_class_png, png, summary_png
from .recommend import SIGNIFICANT_P, Recommendation, row_key
from .report_cells import TABLE_COLUMNS, md_cell, table_cells
from .report_html import report_page
from .report_sections import (
    per_class_html,
    per_class_markdown,
    per_class_records,
    recommendation_html,
    recommendation_markdown,
)

COLUMNS = [
    "rank",
    "backbone",
    "head",
    "n",
    "accuracy",
    "ci_low",
    "ci_high",
    "balanced_accuracy",
    "f1_macro",
    "log_loss",
    "cv_scoring",
    "cv_mean",
    "cv_std",
    "cv_folds",
    "mcnemar_p_vs_best",
    "fit_seconds",
    "predict_ms_per_image",
    "best_params",
    "selected_by",
    "reused",
]


def records(rows) -> list[dict]:
    """One flat, machine-readable record per row of the table (rows come sorted best first)."""
    out = []
    for rank, row in enumerate(rows, 1):
        cv = row.info.get("cv") or {}
        out.append(
            {
                "rank": rank,
                "backbone": row.backbone,
                "head": row.head,
                "n": row.metrics["n"],
                **{
                    k: row.metrics[k]
                    for k in (
                        "accuracy",
                        "ci_low",
                        "ci_high",
                        "balanced_accuracy",
                        "f1_macro",
                        "log_loss",
                        "mcnemar_p_vs_best",
                    )
                },
                "cv_scoring": cv.get("scoring"),
                "cv_mean": cv.get("mean"),
                "cv_std": cv.get("std"),
                "cv_folds": cv.get("folds"),
                "fit_seconds": row.info.get("fit_seconds"),
                "predict_ms_per_image": _ms(row.info.get("predict_seconds_per_image")),
                "best_params": row.info.get("best_params"),
                "selected_by": row.info.get("selection"),
                "reused": row.reused,
            }
        )
    return out


def _ms(seconds):
    return None if seconds is None else seconds * 1000


def markdown_table(recs, notes, failures, scoring="accuracy") -> str:
    """The table as Markdown (what `compare` prints), with how to read it, the notes and the failures."""
    header = "| " + " | ".join(title for _, title, _ in TABLE_COLUMNS) + " |"
    lines = [header, "|" + "---|" * len(TABLE_COLUMNS), *(_markdown_row(r) for r in recs), ""]
    lines.append(
        f"Ranked by held-out {scoring.replace('_', ' ')}. Held-out images: {recs[0]['n']}; no row was "
        f"chosen on them (see 'selected by'). CV: {scoring} on the training rows. "
        "95% CI: percentile bootstrap over held-out images. McNemar: exact two-sided test on the "
        "images where a row and the best row disagree."
    )
    lines += [f"- note: {n}" for n in notes] + [f"- not fitted: {b} {h}: {r}" for b, h, r in failures]
    return "\n".join(lines) + "\n"


def _markdown_row(r: dict) -> str:
    return "| " + " | ".join(md_cell(text) for text, *_ in table_cells(r)) + " |"


def write_report(
    report_dir: Path,
    rows,
    failures,
    notes,
    meta: dict,
    embedding: Embedding | None = None,
    recommendation: Recommendation | None = None,
) -> str:
    """Every file of the report, made in memory, then written together: each whole under a temporary
    name first, then all renamed into place - a full disk leaves the previous report, not a mix.
    Returns the text `compare` prints: report.md less its per-class part."""
    recs = records(rows)
    summary = summary_markdown(recs, notes, failures, meta, recommendation)
    markdown = summary if recommendation is None else summary + "\n" + per_class_markdown(recommendation, rows)
    files = {
        "report.md": _text(markdown),
        "report.json": _text(
            json.dumps(_json_report(recs, notes, failures, meta, recommendation), indent=2, default=str)
        ),
        "report.csv": _csv(
            [COLUMNS] + [[json.dumps(r[c]) if c == "best_params" else r[c] for c in COLUMNS] for r in recs]
        ),
    }
    for row in rows:
        files[f"predictions/{row.backbone}-{row.head}.csv"] = _predictions(row)
    files.update(_pictures(rows, recs, embedding, meta.get("seed", 0), recommendation))
    sections, details = [], []
    if recommendation is not None:
        chart = files.get("per_class.png")
        sections = [recommendation_html(recommendation)]
        details = [per_class_html(recommendation, rows, chart, meta["data_root"])]
    files["report.html"] = _text(report_page(files, rows, recs, notes, failures, meta, sections, details))
    with written_together() as put:
        for name, data in files.items():
            put(Path(report_dir) / name, data)
    _remove_stale(Path(report_dir), files)
    return summary


def summary_markdown(recs, notes, failures, meta: dict, recommendation: Recommendation | None) -> str:
    """The head of report.md: the title, the recommendation and the table (what `compare` prints);
    report.md goes on with where the rows fail, class by class."""
    parts = [f"# {meta['title']}: which head wins\n"]
    if recommendation is not None:
        parts.append(recommendation_markdown(recommendation))
    parts.append(markdown_table(recs, notes, failures, meta["scoring"]))
    return "\n".join(parts)


def _json_report(recs, notes, failures, meta: dict, recommendation: Recommendation | None) -> dict:
    report = {
        "meta": meta,
        "rows": recs,
        "notes": notes,
        "failures": [{"backbone": b, "head": h, "reason": r} for b, h, r in failures],
    }
    if recommendation is not None:
        rec = recommendation
        report["recommendation"] = {
            "backbone": rec.row.backbone,
            "head": rec.row.head,
            "model_path": rec.model_path,
            "text": rec.text(),
            "scoring": rec.scoring,
            "significant_p": SIGNIFICANT_P,
            "rows_scored_on_other_images": rec.elsewhere,
            "not_told_apart_from_the_best": [
                {"backbone": row.backbone, "head": row.head, "ms_per_image": rec.ms_per_image.get(row_key(row))}
                for row in rec.contenders
            ],
            "backbone_ms_per_image": rec.backbone_ms,
        }
        report["per_class"] = per_class_records(rec)
    return report


def _remove_stale(report_dir: Path, files: dict) -> None:
    """The pictures and predictions of rows an earlier compare here had and this one has not (a
    narrower --clf): left beside the new table, they would read as part of it. Fitted heads stay
    under models/, for reuse."""
    written = {report_dir / name for name in files}
    for path in [
        *report_dir.glob("predictions/*.csv"),
        *report_dir.glob("confusion/*.png"),
        report_dir / "embedding.png",
        report_dir / "per_class.png",
    ]:
        if path not in written:
            path.unlink(missing_ok=True)


def _text(text: str) -> bytes:
    return printable(text).encode()


def _csv(rows) -> bytes:
    table = io.StringIO(newline="")
    csv.writer(table).writerows(rows)
    return _text(table.getvalue())


def _predictions(row) -> bytes:
    lines = [["path", "true", "predicted", "probability"]]
    for i, (p, t, y) in enumerate(zip(row.paths, row.truth, row.predicted)):
        lines.append([p, t, y, "" if row.proba is None else f"{row.proba[i][row.classes.index(y)]:.6f}"])
    return _csv(lines)


def _pictures(rows, recs, embedding: Embedding | None, seed: int, recommendation: Recommendation | None) -> dict:
    """{file name: PNG bytes}: a confusion matrix per row, the summary chart, F1 per class of the
    recommended and the best row, the t-SNE plot (from 5 held-out vectors up)."""
    pictures = {f"confusion/{row.backbone}-{row.head}.png": confusion_png(row) for row in rows}
    pictures["summary.png"] = summary_png(recs)
    if recommendation is not None:
        pictures["per_class.png"] = per_class_png(per_class_records(recommendation))
    if embedding is not None and len(embedding.vectors) >= 5:
        pictures["embedding.png"] = png(embedding_figure(embedding, seed))
    return pictures
