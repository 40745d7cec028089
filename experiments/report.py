"""The report of `compare`: report.md/.csv/.json, predictions per head, confusion matrices, one chart."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from featurize.files import write_bytes_atomic

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


def write_report(report_dir: Path, rows, failures, notes, meta: dict) -> str:
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    recs = records(rows)
    markdown = f"# {meta['dataset']}: which head wins\n\n" + markdown_table(recs, notes, failures, meta["scoring"])
    write_bytes_atomic(report_dir / "report.md", markdown.encode())
    write_bytes_atomic(report_dir / "report.json", json.dumps(
        {"meta": meta, "rows": recs, "notes": notes,
         "failures": [{"backbone": b, "head": h, "reason": r} for b, h, r in failures]}, indent=2,
        default=str).encode())
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows({**r, "best_params": json.dumps(r["best_params"])} for r in recs)
    write_bytes_atomic(report_dir / "report.csv", table.getvalue().encode())
    for row in rows:
        _write_predictions(report_dir / "predictions" / f"{row.backbone}-{row.head}.csv", row)
    _plots(report_dir, rows, recs)
    return markdown


def _write_predictions(path: Path, row):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "true", "predicted", "probability"])
        for i, (p, t, y) in enumerate(zip(row.paths, row.truth, row.predicted)):
            probability = "" if row.proba is None else f"{row.proba[i][row.classes.index(y)]:.6f}"
            writer.writerow([p, t, y, probability])


def _plots(report_dir: Path, rows, recs):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    (report_dir / "confusion").mkdir(exist_ok=True)
    for row in rows:
        labels = sorted(set(row.truth) | set(row.predicted), key=lambda c: (c not in row.classes, str(c)))
        figure, axes = plt.subplots(figsize=(2 + 0.5 * len(labels), 1.6 + 0.5 * len(labels)))
        ConfusionMatrixDisplay.from_predictions(row.truth, row.predicted, labels=labels, ax=axes, colorbar=False)
        axes.set_title(f"{row.backbone} {row.head}: accuracy {row.metrics['accuracy']:.3f}", fontsize=9)
        figure.tight_layout()
        figure.savefig(report_dir / "confusion" / f"{row.backbone}-{row.head}.png", dpi=100)
        plt.close(figure)
    names = [f"{r['backbone']} {r['head']}" for r in recs][::-1]
    accuracy = [r["accuracy"] for r in recs][::-1]
    errors = [[r["accuracy"] - r["ci_low"] for r in recs][::-1], [r["ci_high"] - r["accuracy"] for r in recs][::-1]]
    figure, axes = plt.subplots(figsize=(7, 1 + 0.4 * len(recs)))
    axes.barh(names, accuracy, xerr=errors, color="#4c72b0", capsize=3)
    axes.set_xlim(max(0.0, min(r["ci_low"] for r in recs) - 0.05), 1.0)
    axes.set_xlabel("held-out accuracy (95% bootstrap interval)")
    figure.tight_layout()
    figure.savefig(report_dir / "summary.png", dpi=100)
    plt.close(figure)
