"""The report of `compare`: report.md/.csv/.json, predictions per head, confusion matrices, one chart.

Every file is written whole (files.write_bytes_atomic): a full disk or a kill leaves the previous
version or none, never half of one. Text is UTF-8; a name that is not (a file name from another
system) is written readably, with \\xNN escapes."""
from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from common.files import written_together
from common.names import printable

COLUMNS = ["rank", "backbone", "head", "n", "accuracy", "ci_low", "ci_high", "balanced_accuracy", "f1_macro",
           "log_loss", "cv_scoring", "cv_mean", "cv_std", "cv_folds", "mcnemar_p_vs_best", "fit_seconds",
           "predict_ms_per_image", "best_params", "selected_by", "reused"]


def records(rows) -> list[dict]:
    """One flat, machine-readable record per row of the table (rows come sorted best first)."""
    out = []
    for rank, row in enumerate(rows, 1):
        cv = row.info.get("cv") or {}
        out.append({
            "rank": rank, "backbone": row.backbone, "head": row.head, "n": row.metrics["n"],
            **{k: row.metrics[k] for k in ("accuracy", "ci_low", "ci_high", "balanced_accuracy", "f1_macro",
                                           "log_loss", "mcnemar_p_vs_best")},
            "cv_scoring": cv.get("scoring"), "cv_mean": cv.get("mean"), "cv_std": cv.get("std"),
            "cv_folds": cv.get("folds"), "fit_seconds": row.info.get("fit_seconds"),
            "predict_ms_per_image": _ms(row.info.get("predict_seconds_per_image")),
            "best_params": row.info.get("best_params"), "selected_by": row.info.get("selection"),
            "reused": row.reused,
        })
    return out


def _ms(seconds):
    return None if seconds is None else seconds * 1000


def markdown_table(recs, notes, failures, scoring="accuracy") -> str:
    header = ("| # | backbone | head | accuracy (95% CI) | bal. acc. | macro-F1 | log-loss | CV (mean ± std) "
              "| McNemar p vs best | fit s | predict ms/img | best params | selected by |")
    lines = [header, "|" + "---|" * 13]
    for r in recs:
        cv = "—" if r["cv_mean"] is None else {0: f"{r['cv_mean']:.3f} (OOB)", 1: f"{r['cv_mean']:.3f} (1 slice)"}.get(
            r["cv_folds"], f"{r['cv_mean']:.3f} ± {r['cv_std']:.3f}")
        p = "best" if r["rank"] == 1 else ("—" if r["mcnemar_p_vs_best"] is None else f"{r['mcnemar_p_vs_best']:.3f}")
        params = ", ".join(f"{k}={v}" for k, v in (r["best_params"] or {}).items())
        lines.append(
            f"| {r['rank']} | {r['backbone']} | {r['head']}{' (reused)' if r['reused'] else ''} "
            f"| {r['accuracy']:.3f} ({r['ci_low']:.3f}–{r['ci_high']:.3f}) | {r['balanced_accuracy']:.3f} "
            f"| {r['f1_macro']:.3f} | {_fmt(r['log_loss'])} | {cv} | {p} | {_fmt(r['fit_seconds'], 2)} "
            f"| {_fmt(r['predict_ms_per_image'], 3)} | {params} | {r['selected_by'] or '—'} |")
    lines.append("")
    lines.append(f"Ranked by held-out {scoring.replace('_', ' ')}. Held-out images: {recs[0]['n']}; no row was "
                 f"chosen on them (see 'selected by'). CV: {scoring} on the training rows. "
                 "95% CI: percentile bootstrap over held-out images. McNemar: exact two-sided test on the "
                 "images where a row and the best row disagree.")
    lines += [f"- note: {n}" for n in notes] + [f"- not fitted: {b} {h}: {r}" for b, h, r in failures]
    return "\n".join(lines) + "\n"


def _fmt(value, digits=3):
    return "—" if value is None else f"{value:.{digits}f}"


class Embedding(NamedTuple):
    """Held-out vectors to draw in 2-D, with their true and predicted classes."""

    vectors: np.ndarray
    truth: list
    predicted: list
    title: str  # whose vectors and whose predictions


EMBEDDED_AT_MOST = 5000  # held-out rows in the t-SNE plot (a seeded sample above it)
LEGEND_AT_MOST = 30  # classes named in its legend


def write_report(report_dir: Path, rows, failures, notes, meta: dict, embedding: Embedding | None = None) -> str:
    """Every file of the report, made in memory, then written together: each whole under a temporary
    name first, then all renamed into place - a full disk leaves the previous report, not a mix."""
    recs = records(rows)
    markdown = f"# {meta['dataset']}: which head wins\n\n" + markdown_table(recs, notes, failures, meta["scoring"])
    files = {"report.md": _text(markdown), "report.json": _text(json.dumps(
        {"meta": meta, "rows": recs, "notes": notes,
         "failures": [{"backbone": b, "head": h, "reason": r} for b, h, r in failures]}, indent=2, default=str)),
        "report.csv": _csv([COLUMNS] + [[json.dumps(r[c]) if c == "best_params" else r[c] for c in COLUMNS]
                                        for r in recs])}
    for row in rows:
        files[f"predictions/{row.backbone}-{row.head}.csv"] = _predictions(row)
    files.update(_plots(rows, recs))
    if embedding is not None and len(embedding.vectors) >= 5:
        files["embedding.png"] = _embedding_plot(embedding, meta.get("seed", 0))
    files["report.html"] = _text(_html(files, rows, recs, notes, failures, meta))
    with written_together() as put:
        for name, data in files.items():
            put(Path(report_dir) / name, data)
    return markdown


def _text(text: str) -> bytes:
    return printable(text).encode()


def _csv(rows) -> bytes:
    table = io.StringIO(newline="")
    csv.writer(table).writerows(rows)
    return _text(table.getvalue())


def _png(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def _predictions(row) -> bytes:
    lines = [["path", "true", "predicted", "probability"]]
    for i, (p, t, y) in enumerate(zip(row.paths, row.truth, row.predicted)):
        lines.append([p, t, y, "" if row.proba is None else f"{row.proba[i][row.classes.index(y)]:.6f}"])
    return _csv(lines)


def _plots(rows, recs) -> dict:
    """{file name: PNG bytes}: a confusion matrix per row, and the summary chart."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    pictures = {}
    for row in rows:
        labels = sorted(set(row.truth) | set(row.predicted), key=lambda c: (c not in row.classes, str(c)))
        figure, axes = plt.subplots(figsize=(2 + 0.5 * len(labels), 1.6 + 0.5 * len(labels)))
        ConfusionMatrixDisplay.from_predictions(row.truth, row.predicted, labels=labels, ax=axes, colorbar=False,
                                                display_labels=[printable(label) for label in labels])
        axes.set_title(f"{row.backbone} {row.head}: accuracy {row.metrics['accuracy']:.3f}", fontsize=9)
        figure.tight_layout()
        pictures[f"confusion/{row.backbone}-{row.head}.png"] = _png(figure)
    names = [f"{r['backbone']} {r['head']}" for r in recs][::-1]
    accuracy = [r["accuracy"] for r in recs][::-1]
    errors = [[r["accuracy"] - r["ci_low"] for r in recs][::-1], [r["ci_high"] - r["accuracy"] for r in recs][::-1]]
    figure, axes = plt.subplots(figsize=(7, 1 + 0.4 * len(recs)))
    axes.barh(names, accuracy, xerr=errors, color="#4c72b0", capsize=3)
    axes.set_xlim(max(0.0, min(r["ci_low"] for r in recs) - 0.05), 1.0)
    axes.set_xlabel("held-out accuracy (95% bootstrap interval)")
    figure.tight_layout()
    pictures["summary.png"] = _png(figure)
    return pictures


def _embedding_plot(embedding: Embedding, seed: int) -> bytes:
    """t-SNE of the held-out vectors, coloured by true class; the mistakes of the row named in the
    title ringed in red."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler

    rows = np.arange(len(embedding.vectors))
    if len(rows) > EMBEDDED_AT_MOST:
        rows = np.sort(np.random.default_rng(seed).choice(rows, EMBEDDED_AT_MOST, replace=False))
    X = StandardScaler().fit_transform(np.asarray(embedding.vectors[rows], dtype=np.float32))
    points = TSNE(2, perplexity=min(30.0, (len(rows) - 1) / 3), init="pca", random_state=seed).fit_transform(X)
    truth, predicted = np.asarray(embedding.truth, dtype=object)[rows], np.asarray(embedding.predicted, dtype=object)[rows]
    figure, axes = plt.subplots(figsize=(7, 6))
    classes = sorted(set(truth.tolist()), key=str)
    for name in classes:
        mine = truth == name
        axes.scatter(points[mine, 0], points[mine, 1], s=12, label=printable(name), alpha=0.8)
    wrong = truth != predicted
    mistakes = axes.scatter(points[wrong, 0], points[wrong, 1], s=60, facecolors="none", edgecolors="red",
                            linewidths=1.2, label=f"mistakes ({int(wrong.sum())})")
    sampled = f", {len(rows):,} of {len(embedding.vectors):,} sampled" if len(rows) < len(embedding.vectors) else ""
    unnamed = f", {len(classes)} classes, unnamed" if len(classes) > LEGEND_AT_MOST else ""
    axes.set_title(f"t-SNE of the held-out vectors ({embedding.title}{sampled}{unnamed})", fontsize=9)
    # past a few dozen classes a legend covers the plot and names nothing readable: the mistakes only
    axes.legend(handles=[mistakes] if unnamed else None, fontsize=7, markerscale=1.2, loc="best")
    axes.set_xticks([])
    axes.set_yticks([])
    figure.tight_layout()
    return _png(figure)


HTML_COLUMNS = ("rank", "backbone", "head", "accuracy", "ci_low", "ci_high", "balanced_accuracy", "f1_macro",
                "log_loss", "cv_mean", "mcnemar_p_vs_best", "fit_seconds", "best_params", "selected_by")


def _html(files: dict, rows, recs, notes, failures, meta) -> str:
    """report.html: the table, notes, summary, embedding and confusion matrices in one file, the
    pictures inlined, so it opens offline and can be mailed as it is."""
    def cell(value):
        if isinstance(value, float):
            return f"{value:.3f}"
        if isinstance(value, dict):
            return ", ".join(f"{k}={v}" for k, v in value.items())
        return "—" if value is None else str(value)

    def picture(name: str, alt: str) -> str:  # one of this report's own pictures, inlined
        if name not in files:
            return ""
        data = base64.b64encode(files[name]).decode()
        return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'

    head = "".join(f"<th>{html.escape(c)}</th>" for c in HTML_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell(r[c]))}</td>" for c in HTML_COLUMNS) + "</tr>"
                   for r in recs)
    said = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    said += "".join(f"<li>not fitted: {html.escape(f'{b} {h}: {r}')}</li>" for b, h, r in failures)
    confusion = "".join(picture(f"confusion/{row.backbone}-{row.head}.png", f"{row.backbone} {row.head}")
                        for row in rows)
    title = html.escape(f"{meta['dataset']}: which head wins")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px}} figure{{display:inline-block;margin:6px}} img{{max-width:100%}}</style>
</head><body><h1>{title}</h1>
<p>Ranked by held-out {html.escape(meta['scoring'].replace('_', ' '))}; no row was chosen on the held-out images.
Feature files: {html.escape(', '.join(meta.get('feature_files', [])))}</p>
<table><tr>{head}</tr>{body}</table><ul>{said}</ul>
{picture("summary.png", "summary")}{picture("embedding.png", "embedding")}
<h2>Confusion matrices</h2>{confusion}
</body></html>
"""
