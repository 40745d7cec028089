"""The parts of `compare`'s report that answer "which model do I ship, and where does it fail?": the
recommendation, per-class scores of the recommended and the best row, the pairs of classes the rows
confuse most, and the recommended row's mistakes - each as Markdown and as an HTML fragment."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from common.names import printable

from .per_class import MISTAKES_PER_CLASS, class_scores, confused_pairs, mistakes, thumbnail
from .recommend import Recommendation
from .report_cells import md_cell


def named(row) -> str:
    return f"{row.backbone} {row.head}"


def scored_rows(recommendation: Recommendation) -> list:
    """The rows whose classes are shown: the recommended one, and the best when it is another."""
    rec = recommendation
    return [rec.row] if rec.row is rec.best else [rec.row, rec.best]


def per_class_records(recommendation: Recommendation) -> dict:
    """{row name: its class_scores}, for report.json and the chart."""
    return {named(row): class_scores(row) for row in scored_rows(recommendation)}


# -- Markdown ----------------------------------------------------------------------------------------


def recommendation_markdown(recommendation: Recommendation) -> str:
    lines = ["## Recommendation", "", recommendation.text(), ""]
    lines += [f"- {line}" for line in recommendation.commands()]
    return "\n".join(lines) + "\n"


def per_class_markdown(recommendation: Recommendation, rows) -> str:
    lines = ["## Per class", ""]
    for name, scores in per_class_records(recommendation).items():
        role = "recommended" if name == named(recommendation.row) else "best"
        lines += [f"{name} ({role}):", "", "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        lines += [
            f"| {md_cell(s['class'])} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | {s['support']} |"
            for s in scores
        ]
        lines.append("")
    lines += ["## Most confused classes", "", _pairs_intro(rows)]
    lines += [f"- {_pair_line(pair)}" for pair in confused_pairs(rows)] or ["- none: every row got every image right"]
    lines += ["", f"## Mistakes of {named(recommendation.row)}", ""]
    wrong = mistakes(recommendation.row)
    for true, found in wrong.items():
        lines += [f"- {m.path}: {true}, predicted {m.predicted}{_p(m.probability)}" for m in found]
    if not wrong:
        lines.append("- none")
    return "\n".join(lines) + "\n"


def _pairs_intro(rows) -> str:
    return f"Mistakes either way, summed over the table's {len(rows)} rows:"


def _pair_line(pair) -> str:
    return (
        f"{pair.first} <-> {pair.second}: {pair.total} ({pair.first} as {pair.second} {pair.first_as_second}, "
        f"{pair.second} as {pair.first} {pair.second_as_first}; by {pair.rows} rows)"
    )


def _p(probability) -> str:
    return "" if probability is None else f" (p={probability:.2f})"


# -- HTML ------------------------------------------------------------------------------------------


def _e(value) -> str:
    return html.escape(printable(str(value)))


def recommendation_html(recommendation: Recommendation) -> str:
    commands = "".join(f"<li><code>{_e(line)}</code></li>" for line in recommendation.commands())
    return (
        f'<section id="recommendation"><h2>Recommendation</h2><p><strong>{_e(recommendation.text())}</strong></p>'
        f"<ul>{commands}</ul></section>"
    )


def per_class_html(recommendation: Recommendation, rows, chart: bytes | None, data_root: str) -> str:
    tables = ""
    for name, scores in per_class_records(recommendation).items():
        role = "recommended" if name == named(recommendation.row) else "best"
        body = "".join(
            f"<tr><td>{_e(s['class'])}</td><td>{s['precision']:.3f}</td><td>{s['recall']:.3f}</td>"
            f"<td>{s['f1']:.3f}</td><td>{s['support']}</td></tr>"
            for s in scores
        )
        tables += (
            f'<table class="per-class"><caption>{_e(name)} ({role})</caption><tr><th>class</th><th>precision</th>'
            f"<th>recall</th><th>F1</th><th>support</th></tr>{body}</table>"
        )
    picture = _img(chart, "image/png", "per-class F1") if chart else ""
    pairs = "".join(f"<li>{_e(_pair_line(pair))}</li>" for pair in confused_pairs(rows)) or "<li>none</li>"
    return (
        f'<section id="per-class"><h2>Per class</h2>{tables}{picture}'
        f"<h2>Most confused classes</h2><p>{_e(_pairs_intro(rows))}</p><ul>{pairs}</ul>"
        f"{_mistakes_html(recommendation.row, data_root)}</section>"
    )


def _mistakes_html(row, data_root: str) -> str:
    wrong = mistakes(row)
    if not wrong:
        return f"<h2>Mistakes of {_e(named(row))}</h2><p>none</p>"
    groups = ""
    for true, found in wrong.items():
        figures = "".join(_mistake_figure(m, data_root) for m in found)
        groups += f'<div class="mistakes"><h3>{_e(true)}</h3>{figures}</div>'
    return (
        f"<h2>Mistakes of {_e(named(row))}</h2><p>Held-out images it got wrong, up to {MISTAKES_PER_CLASS} "
        f"per true class, the most confident first.</p>{groups}"
    )


def _mistake_figure(mistake, data_root: str) -> str:
    image = thumbnail(Path(data_root, mistake.path))
    shown = _img(image, "image/jpeg", mistake.path) if image else f"<div>{_e(mistake.path)}: not readable now</div>"
    caption = f"{_e(f'predicted {mistake.predicted}{_p(mistake.probability)}')}<br><small>{_e(mistake.path)}</small>"
    return f'<figure class="mistake">{shown}<figcaption>{caption}</figcaption></figure>'


def _img(data: bytes, mime: str, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:{mime};base64,{base64.b64encode(data).decode()}">'
