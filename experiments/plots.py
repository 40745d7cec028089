"""Every picture cnnfeat draws, as PNG bytes: the report's confusion matrices, summary chart and
t-SNE of the held-out vectors, and explain's heatmaps and tile grids.

matplotlib draws off-screen (its Agg backend: no display needed), set up in one place (`pyplot`);
`png` turns a figure into bytes and closes it. Writing the bytes is the caller's: a report writes
its files together, explain one at a time."""

from __future__ import annotations

import io
from pathlib import Path
from typing import NamedTuple

import numpy as np

from common.names import printable

EMBEDDED_AT_MOST = 5000  # held-out rows in the t-SNE plot (a seeded sample above it)
LEGEND_AT_MOST = 30  # classes named in its legend


def pyplot():
    """matplotlib.pyplot, drawing off-screen. A class name in a script its font lacks (日本) is drawn
    as boxes without a warning per glyph on the user's screen: the report's captions and tables
    give the names whole."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
    return plt


def png(figure, tight: bool = False) -> bytes:
    """The figure as PNG bytes (100 dpi; `tight`: cropped to what is drawn); the figure is closed."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight" if tight else None)
    pyplot().close(figure)
    return buffer.getvalue()


# -- the report --------------------------------------------------------------------------------------


CONFUSION_ANNOTATED_AT_MOST = 25  # classes whose cells are written in; above, the colours alone
TITLE_CHARACTERS_PER_INCH = 13  # at fontsize 9: how much of a title fits a figure's width


def confusion_png(row) -> bytes:
    """A compare row's confusion matrix on its held-out images (its classes first, then any other
    label), each true class's row normalised to 1, with the counts; sized to the number of classes,
    the title wrapped to fit."""
    from .per_class import confusion

    labels = sorted(set(row.truth) | set(row.predicted), key=lambda c: (c not in row.classes, str(c)))
    counts, shares = confusion(row.truth, row.predicted, labels)
    side = min(3.0 + 0.45 * len(labels), 24.0)
    figure, axes = pyplot().subplots(figsize=(side + 1.0, side))
    shown = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
    names = [printable(label) for label in labels]
    axes.set_xticks(range(len(labels)), names, rotation=90 if len(labels) > 4 else 0, fontsize=8)
    axes.set_yticks(range(len(labels)), names, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if len(labels) <= CONFUSION_ANNOTATED_AT_MOST:
        for (i, j), share in np.ndenumerate(shares):
            colour = "white" if share > 0.5 else "black"
            axes.text(j, i, f"{share:.2f}\n{counts[i, j]}", ha="center", va="center", fontsize=7, color=colour)
    title = f"{row.backbone} {row.head}: accuracy {row.metrics['accuracy']:.3f}"
    axes.set_title(fitted_title(title, side), fontsize=9)
    figure.tight_layout()
    return png(figure)


def fitted_title(title: str, inches: float) -> str:
    """The title wrapped to the figure's width, at most 3 lines (then cut, with an ellipsis; a
    caption beside the picture gives it whole)."""
    import textwrap

    lines = textwrap.wrap(printable(title), max(12, int(inches * TITLE_CHARACTERS_PER_INCH)), break_on_hyphens=False)
    if len(lines) > 3:
        lines = lines[:3]
        lines[-1] = lines[-1][:-1] + "…"
    return "\n".join(lines)


def per_class_png(scores: dict) -> bytes:
    """F1 per class, one bar per row named (`scores`: {row name: per_class.class_scores}), the
    classes in the first row's order."""
    names = list(scores)
    classes = [s["class"] for s in scores[names[0]]]
    f1 = {name: {s["class"]: s["f1"] for s in rows} for name, rows in scores.items()}
    height = 0.8 / len(names)
    figure, axes = pyplot().subplots(figsize=(7, 1.5 + 0.25 * len(classes) * len(names)))
    places = np.arange(len(classes))
    for k, name in enumerate(names):
        axes.barh(places + k * height, [f1[name].get(c, 0.0) for c in classes], height, label=fitted_title(name, 4))
    axes.set_yticks(places + height * (len(names) - 1) / 2, [printable(c) for c in classes], fontsize=8)
    axes.invert_yaxis()
    axes.set_xlim(0, 1)
    axes.set_xlabel("F1 on the held-out images")
    axes.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(names), frameon=False)
    figure.tight_layout()
    return png(figure)


def summary_png(records: list[dict]) -> bytes:
    """Held-out accuracy with its bootstrap interval, one bar per row of the table (best on top)."""
    names = [f"{r['backbone']} {r['head']}" for r in records][::-1]
    accuracy = [r["accuracy"] for r in records][::-1]
    errors = [
        [r["accuracy"] - r["ci_low"] for r in records][::-1],
        [r["ci_high"] - r["accuracy"] for r in records][::-1],
    ]
    figure, axes = pyplot().subplots(figsize=(7, 1 + 0.4 * len(records)))
    axes.barh(names, accuracy, xerr=errors, color="#4c72b0", capsize=3)
    axes.set_xlim(max(0.0, min(r["ci_low"] for r in records) - 0.05), 1.0)
    axes.set_xlabel("held-out accuracy (95% bootstrap interval)")
    figure.tight_layout()
    return png(figure)


class Embedding(NamedTuple):
    """Held-out vectors to draw in 2-D, with their true and predicted classes."""

    vectors: np.ndarray
    truth: list
    predicted: list
    title: str  # whose vectors and whose predictions


def embedding_figure(embedding: Embedding, seed: int):
    """t-SNE of the held-out vectors, coloured by true class; the mistakes of the row named in the
    title ringed in red. Past LEGEND_AT_MOST classes the legend names the mistakes only (a legend
    of every class would cover the plot and name nothing readable)."""
    rows = np.arange(len(embedding.vectors))
    if len(rows) > EMBEDDED_AT_MOST:
        rows = np.sort(np.random.default_rng(seed).choice(rows, EMBEDDED_AT_MOST, replace=False))
    points = _tsne(np.asarray(embedding.vectors[rows], dtype=np.float32), seed)
    truth = np.asarray(embedding.truth, dtype=object)[rows]
    predicted = np.asarray(embedding.predicted, dtype=object)[rows]
    figure, axes = pyplot().subplots(figsize=(7, 6))
    classes = sorted(set(truth.tolist()), key=str)
    for name in classes:
        mine = truth == name
        axes.scatter(points[mine, 0], points[mine, 1], s=12, label=printable(name), alpha=0.8)
    wrong = truth != predicted
    mistakes = axes.scatter(
        points[wrong, 0],
        points[wrong, 1],
        s=60,
        facecolors="none",
        edgecolors="red",
        linewidths=1.2,
        label=f"mistakes ({int(wrong.sum())})",
    )
    sampled = f", {len(rows):,} of {len(embedding.vectors):,} sampled" if len(rows) < len(embedding.vectors) else ""
    unnamed = f", {len(classes)} classes, unnamed" if len(classes) > LEGEND_AT_MOST else ""
    axes.set_title(f"t-SNE of the held-out vectors ({embedding.title}{sampled}{unnamed})", fontsize=9)
    axes.legend(handles=[mistakes] if unnamed else None, fontsize=7, markerscale=1.2, loc="best")
    axes.set_xticks([])
    axes.set_yticks([])
    figure.tight_layout()
    return figure


def _tsne(vectors: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE
    from sklearn.preprocessing import StandardScaler

    X = StandardScaler().fit_transform(vectors)
    return TSNE(2, perplexity=min(30.0, (len(X) - 1) / 3), init="pca", random_state=seed).fit_transform(X)


# -- explain ---------------------------------------------------------------------------------------


# What a heatmap's numbers are, by method (experiments.heatmaps): its colour bar's label
HEAT_SCALES = {
    "class activation map": "the class's score at each place\n(their mean + the bias = its score)",
    "occlusion": "drop of the class's probability\nwhen the place is covered",
}


def heatmap_png(heatmap, source: str) -> bytes:
    """An explain heatmap over its image, with its colour bar (see heatmap_figure), as PNG bytes."""
    return png(heatmap_figure(heatmap, source), tight=True)


def heatmap_figure(heatmap, source: str):
    """An explain heatmap (experiments.heatmaps.Heatmap) over its image, titled with the class, its
    probability, the method and the image's file name; beside it a colour bar in the heat's own
    units (from its lowest to its highest value, as the colours are stretched)."""
    height, width = heatmap.image.shape[:2]
    figure, axis = pyplot().subplots(figsize=(6, 5 * height / width + 0.4))
    axis.imshow(heatmap.image)
    heat = axis.imshow(heatmap.heat, cmap="jet", alpha=0.45, extent=(0, width, height, 0), interpolation="bilinear")
    axis.set_title(
        f"{printable(heatmap.class_name)} (p={heatmap.probability:.2f}) - {heatmap.method}\n"
        f"{printable(Path(source).name)}",
        fontsize=9,
    )
    axis.axis("off")
    bar = figure.colorbar(heat, ax=axis, fraction=0.046, pad=0.03)
    bar.set_label(HEAT_SCALES.get(heatmap.method, "heat"), fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return figure


def tiles_png(tiles: np.ndarray, title: str) -> bytes:
    """Tiles (k, h, w) drawn in viridis, or (k, h, w, 3) as colour images, in a square-ish grid."""
    columns = int(np.ceil(np.sqrt(len(tiles))))
    rows = int(np.ceil(len(tiles) / columns))
    figure, axes = pyplot().subplots(rows, columns, figsize=(1.4 * columns, 1.4 * rows + 0.5), squeeze=False)
    for axis, tile in zip(axes.ravel(), tiles):
        axis.imshow(tile, cmap=None if tile.ndim == 3 else "viridis", interpolation="nearest")
    for axis in axes.ravel():
        axis.axis("off")
    figure.suptitle(title, fontsize=9)
    return png(figure, tight=True)
