"""report.html: compare's report as one page that opens offline - the table, notes and every
picture inlined (experiments.report makes the files; this writes the page)."""

from __future__ import annotations

import base64
import html

HTML_COLUMNS = (
    "rank",
    "backbone",
    "head",
    "accuracy",
    "ci_low",
    "ci_high",
    "balanced_accuracy",
    "f1_macro",
    "log_loss",
    "cv_mean",
    "mcnemar_p_vs_best",
    "fit_seconds",
    "best_params",
    "selected_by",
)


def report_page(files: dict, rows, recs, notes, failures, meta, sections: list[str]) -> str:
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
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell(r[c]))}</td>" for c in HTML_COLUMNS) + "</tr>" for r in recs
    )
    said = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    said += "".join(f"<li>not fitted: {html.escape(f'{b} {h}: {r}')}</li>" for b, h, r in failures)
    confusion = "".join(
        picture(f"confusion/{row.backbone}-{row.head}.png", f"{row.backbone} {row.head}") for row in rows
    )
    title = html.escape(f"{meta['dataset']}: which head wins")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px}} figure{{display:inline-block;margin:6px}} img{{max-width:100%}}</style>
</head><body><h1>{title}</h1>
<p>Ranked by held-out {html.escape(meta["scoring"].replace("_", " "))}; no row was chosen on the held-out images.
Feature files: {html.escape(", ".join(meta.get("feature_files", [])))}</p>
{"".join(sections)}
<table><tr>{head}</tr>{body}</table><ul>{said}</ul>
{picture("summary.png", "summary")}{picture("embedding.png", "embedding")}
<h2>Confusion matrices</h2>{confusion}
</body></html>
"""
