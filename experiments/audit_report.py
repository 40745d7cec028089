"""What `audit` writes: issues.csv (one row per finding), audit.md (counts, and the held-out score
with and without the leaked images), audit.json (settings and counts) and audit.html (each finding
beside its copy or beside typical images of the class it likely belongs to), written together."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path

import numpy as np

from common.files import written_together
from common.names import printable
from featurize import display_name

from .audit_checks import untellable

CSV_COLUMNS = ("path", "split", "label", "issue", "score", "suggested_label", "other_path")
ISSUES = ("leak", "duplicate", "label", "outlier")
SHOWN = 48  # findings per issue drawn in audit.html (issues.csv has them all)
TYPICAL = 3  # images of the suggested class shown beside a likely wrong label
THUMB = 128  # thumbnail side, pixels


def write_audit(
    folder: Path, data, split, findings: list, probabilities: np.ndarray, settings: dict, alike: float = 0.0
) -> str:
    """Every file of one audit, written together; returns audit.md's text. `alike`: the share of
    training images with a copy in train (audit_checks.NearestTrain)."""
    counts = {issue: sum(f.issue == issue for f in findings) for issue in ISSUES}
    scores = heldout_scores(data, split, findings, probabilities)
    markdown = _markdown(data, split, findings, counts, scores, alike) + "".join(
        f"\nLabel check: {note}." for note in settings.get("label_check", [])
    )
    record = {"feature_file": str(data.path), "feature_fingerprint": data.fingerprint, "settings": settings}
    record |= {"counts": counts, "heldout": scores, "split": split.describe(), "train_alike": alike}
    files = {
        "issues.csv": _csv(data, findings),
        "audit.md": printable(markdown).encode(),
        "audit.json": json.dumps(record, indent=2, default=str).encode(),
        "audit.html": _html(data, findings, counts, _typical_rows(data, split, probabilities), markdown).encode(),
    }
    with written_together() as put:
        for name, content in files.items():
            put(folder / name, content)
    return markdown


def heldout_scores(data, split, findings: list, probabilities: np.ndarray) -> dict:
    """The head's held-out accuracy (fitted on train), on every held-out image and without the leaked ones."""
    rows = np.asarray(split.heldout)
    if not len(rows):
        return {}
    correct = probabilities[rows].argmax(axis=1) == data.y[rows]
    scores = {"evaluated_on": split.name, "n": int(len(rows)), "accuracy": float(correct.mean())}
    if split.name == "holdout":  # no leak check: its images are the store's training images
        return scores
    leaked = {f.row for f in findings if f.issue == "leak"}
    clean = np.array([row not in leaked for row in rows])
    scores["n_without_leaks"] = int(clean.sum())
    scores["accuracy_without_leaks"] = float(correct[clean].mean()) if clean.any() else None
    return scores


def _csv(data, findings: list) -> bytes:
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(CSV_COLUMNS)
    for f in findings:
        writer.writerow(
            [
                _path(data, f.row),
                data.splits[f.row],
                data.class_names[data.y[f.row]],
                f.issue,
                f"{f.score:.4f}",
                "" if f.suggested is None else data.class_names[f.suggested],
                "" if f.other is None else _path(data, f.other),
            ]
        )
    return printable(table.getvalue()).encode()


def _path(data, row: int) -> str:
    return printable(str(data.paths[row]))


def _markdown(data, split, findings: list, counts: dict, scores: dict, alike: float) -> str:
    lines = [f"# audit: {display_name(data.dataset)} ({Path(data.path).name})", ""]
    lines += [f"{len(data.y)} images; " + ", ".join(f"{counts[i]} {i}" for i in ISSUES), ""]
    if split.name == "holdout":
        lines += ["No val/ or test/ split: leaks are not checked (no held-out images of the store's own).", ""]
    elif untellable(counts["leak"], len(split.heldout), alike):
        lines += [
            f"{counts['leak']} of {len(split.heldout)} held-out images came out as copies of training images, "
            f"and {alike:.0%} of training images as copies of another: the threshold (--near) cannot tell "
            "copies from neighbours in these vectors; read the leaks and duplicates with care, or raise --near.",
            "",
        ]
    lines += ["| class | " + " | ".join(ISSUES) + " |", "|---" * (len(ISSUES) + 1) + "|"]
    for index, name in enumerate(data.class_names):
        per_issue = [sum(f.issue == i and data.y[f.row] == index for f in findings) for i in ISSUES]
        lines.append(f"| {name} | " + " | ".join(map(str, per_issue)) + " |")
    if scores:
        lines += ["", _scores_line(scores)]
    return "\n".join(lines) + "\n"


def _scores_line(scores: dict) -> str:
    """The held-out accuracy of the head fitted on train, with and without the leaked images."""
    said = (
        f"Held-out ({scores['evaluated_on']}) accuracy of the head fitted on train: {scores['accuracy']:.4f} on "
        f"{scores['n']} images"
    )
    if "n_without_leaks" in scores:
        without = scores["accuracy_without_leaks"]
        said += f"; without the {scores['n'] - scores['n_without_leaks']} leaked ones: " + (
            "-" if without is None else f"{without:.4f} on {scores['n_without_leaks']}"
        )
    return said


def _html(data, findings: list, counts: dict, typical: dict, markdown: str) -> str:
    """One page, pictures inlined (opens offline): the counts, then each issue's most suspicious
    findings beside their copy or beside typical images of the suggested class (`typical`)."""
    sections = []
    for issue in ISSUES:
        shown = [f for f in findings if f.issue == issue][:SHOWN]
        if not shown:
            continue
        items = "".join(_finding_html(data, f, typical) for f in shown)
        more = f" (the {SHOWN} most suspicious; issues.csv lists all)" if counts[issue] > SHOWN else ""
        sections.append(f'<h2 id="{issue}">{issue}: {counts[issue]}{more}</h2>{items}')
    jumps = " · ".join(f'<a href="#{i}">{i}: {counts[i]}</a>' if counts[i] else f"{i}: 0" for i in ISSUES)
    title = html.escape(printable(f"audit: {display_name(data.dataset)}"))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}} .f{{display:inline-block;margin:6px;padding:4px;
border:1px solid #ccc;vertical-align:top;font-size:12px;max-width:{4 * THUMB + 40}px}}
figure{{display:inline-block;margin:2px}} figcaption{{max-width:{THUMB}px;overflow-wrap:anywhere}}</style>
</head><body><p>{jumps}</p><pre>{html.escape(printable(markdown))}</pre>{"".join(sections)}</body></html>
"""


def _finding_html(data, finding, typical: dict) -> str:
    label = data.class_names[data.y[finding.row]]
    pictures = [_figure(data, finding.row, f"{label}")]
    if finding.other is not None:
        pictures.append(_figure(data, finding.other, data.class_names[data.y[finding.other]]))
    if finding.suggested is not None:
        suggested = data.class_names[finding.suggested]
        pictures += [_figure(data, row, f"typical {suggested}") for row in typical.get(finding.suggested, [])]
    caption = f"{finding.issue} {finding.score:.3f}" + (
        f" → {data.class_names[finding.suggested]}" if finding.suggested is not None else ""
    )
    return f'<div class="f"><b>{html.escape(printable(caption))}</b><br>{"".join(pictures)}</div>'


def _typical_rows(data, split, probabilities: np.ndarray) -> dict:
    """Per class, the TYPICAL training images the head is surest belong to it (and labelled so)."""
    train = np.asarray(split.train)
    typical = {}
    for index in range(len(data.class_names)):
        rows = train[data.y[train] == index]
        typical[index] = rows[np.argsort(-probabilities[rows, index])[:TYPICAL]].tolist()
    return typical


def _figure(data, row: int, caption: str) -> str:
    path = Path(data.data_root, str(data.paths[row]))
    return (
        f"<figure>{_thumbnail(path)}<figcaption>{html.escape(printable(caption))}<br>"
        f"{html.escape(_path(data, row))}</figcaption></figure>"
    )


def _thumbnail(path: Path) -> str:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((THUMB, THUMB))
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=80)
    except (OSError, ValueError) as error:
        return f"<i>cannot show it: {html.escape(printable(str(error)))}</i>"
    return f'<img alt="" src="data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()}">'
