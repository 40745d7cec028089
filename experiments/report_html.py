"""report.html: compare's report as one page that opens offline - the table (the columns of report.md's,
sortable by a click on a column's name), notes and every picture inlined (experiments.report makes the
files; this writes the page). No external asset: the few lines of script and style are in the page."""

from __future__ import annotations

import base64
import html
import math

from .report_cells import TABLE_COLUMNS, table_cells

# Click a header: sort by that column (ascending; again: descending). Numbers sort by the cell's
# data-sort, text by the cell's text; an empty data-sort or a "—" sorts last either way.
SORT_SCRIPT = """
document.querySelectorAll("#results thead th").forEach((th, col) => {
  th.querySelector("button").addEventListener("click", () => {
    const table = th.closest("table"), down = th.getAttribute("aria-sort") === "ascending";
    table.querySelectorAll("thead th").forEach((h) => h.setAttribute("aria-sort", "none"));
    th.setAttribute("aria-sort", down ? "descending" : "ascending");
    const key = (tr) => {
      const td = tr.cells[col], sort = td.dataset.sort;
      if (sort !== undefined) return sort === "" ? null : Number(sort);
      return td.textContent === "\\u2014" ? null : td.textContent;
    };
    const rows = [...table.tBodies[0].rows].sort((a, b) => {
      const x = key(a), y = key(b);
      if (x === null || y === null) return (x === null) - (y === null);
      const order = typeof x === "number" ? x - y : x.localeCompare(y, undefined, {numeric: true});
      return down ? -order : order;
    });
    table.tBodies[0].append(...rows);
  });
});
"""

STYLE = """body{font-family:sans-serif;margin:2em}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ccc;padding:3px 6px}
th{background:#f3f3f3;vertical-align:bottom}
th button{font:inherit;color:inherit;background:none;border:0;padding:0;cursor:pointer;text-align:left}
th[aria-sort=ascending] button::after{content:" \\25B2"} th[aria-sort=descending] button::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
figure{display:inline-block;margin:6px;vertical-align:top} figcaption{font-size:13px;text-align:center}
img{max-width:100%}"""


def report_page(files: dict, rows, recs, notes, failures, meta, sections: list[str], details: list[str] = ()) -> str:
    """report.html: the table, notes, summary, embedding and confusion matrices in one file, the
    pictures inlined, so it opens offline and can be mailed as it is. `sections` (HTML) go right
    after the title and intro, before the table; `details` after the table's pictures."""

    def picture(name: str, alt: str, caption: str = "") -> str:  # one of this report's own pictures, inlined
        if name not in files:
            return ""
        data = base64.b64encode(files[name]).decode()
        below = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">{below}</figure>'

    head = "".join(
        f'<th scope="col" data-column="{key}" title="{html.escape(tip)}"'
        f' aria-sort="{"ascending" if key == "rank" else "none"}">'
        f'<button type="button">{html.escape(label)}</button></th>'
        for key, label, tip in TABLE_COLUMNS
    )
    body = "".join("<tr>" + "".join(_td(*cell) for cell in table_cells(r)) + "</tr>" for r in recs)
    said = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    said += "".join(f"<li>not fitted: {html.escape(f'{b} {h}: {r}')}</li>" for b, h, r in failures)
    confusion = "".join(
        picture(f"confusion/{row.backbone}-{row.head}.png", f"{row.backbone} {row.head}", f"{row.backbone} {row.head}")
        for row in rows
    )
    title = html.escape(f"{meta.get('title', meta['dataset'])}: which head wins")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{STYLE}</style>
</head><body><h1>{title}</h1>
<p>Ranked by held-out {html.escape(meta["scoring"].replace("_", " "))}; no row was chosen on the held-out images.
Click a column's name to sort by it (again: the other way).
Feature files: {html.escape(", ".join(meta.get("feature_files", [])))}</p>
{"".join(sections)}
<table id="results"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table><ul>{said}</ul>
{picture("summary.png", "summary")}{picture("embedding.png", "embedding")}
{"".join(details)}
<section id="confusion"><h2>Confusion matrices</h2>{confusion}</section>
<script>{SORT_SCRIPT}</script>
</body></html>
"""


def _td(text: str, *sort) -> str:
    """A cell; a numeric one carries its raw number in data-sort ("" when there is none: sorts last)."""
    if not sort:
        return f"<td>{html.escape(text)}</td>"
    return f'<td class="num" data-sort="{_sort_key(sort[0])}">{html.escape(text)}</td>'


def _sort_key(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)
