"""The row of `compare`'s table to ship: the fastest to predict among the rows not significantly
worse than the best (McNemar on the same held-out images), or the best where every other row is.

Predicting an image costs its backbone's forward pass (each backbone's, for a fused row) and then
the head. Heads' times are measured when they are scored; backbones' are measured here, once per
backbone and only when the rows still in the running use different ones, on the CPU with random
weights of the same architecture (the time does not depend on the weights' values)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from common.errors import CnnfeatError

from .ranking import Row

SIGNIFICANT_P = 0.05  # McNemar p below this: significantly worse than the best row
TIMED_IMAGES = 8  # images per timed forward pass of a backbone
TIMED_PASSES = 3  # the fastest counts: a busy machine slows some passes, never speeds one up


@dataclass(frozen=True)
class Recommendation:
    row: Row  # the row to ship
    best: Row  # the most accurate row
    contenders: list  # the rows not significantly worse than the best (the best first)
    ms_per_image: dict  # id(row) -> estimated ms per image (backbone + head), of the contenders
    backbone_ms: dict  # backbone name -> ms per image, where measured

    @property
    def model_path(self) -> str | None:
        return self.row.model_path

    def text(self) -> str:
        """One paragraph: which row, why, and the commands that ship it."""
        row, best, n = self.row, self.best, self.best.metrics["n"]
        name = f"{row.backbone} {row.head}"
        score = f"accuracy {_score(row)}"
        if len(self.contenders) == 1:
            why = (
                f"the most accurate, and every other row is significantly worse on the same {n} held-out "
                f"images (McNemar p < {SIGNIFICANT_P})"
            )
        elif row is best:
            why = (
                f"the most accurate, and also the fastest to predict ({self._ms(row)}) of the "
                f"{len(self.contenders)} rows not significantly worse than it (McNemar p >= {SIGNIFICANT_P} on the "
                f"same {n} held-out images)"
            )
        else:
            why = (
                f"not significantly worse than the best row, {best.backbone} {best.head} ({_score(best)}; McNemar "
                f"p = {row.metrics['mcnemar_p_vs_best']:.3f} >= {SIGNIFICANT_P} on the same {n} held-out images), "
                f"and the fastest to predict ({self._ms(row)}, the best {self._ms(best)}) of the "
                f"{len(self.contenders)} rows that are not"
            )
        return f"Use {name} ({score}): {why}."

    def commands(self) -> list[str]:
        """The saved model, and the commands that export and serve it."""
        path = self.model_path
        if path is None:
            return []
        export_dir = str(Path(path).with_suffix("")) + "-onnx"
        return [
            f"model: {path}",
            f"export: python cli.py export --model {path} --out {export_dir}",
            f"serve: python cli.py serve --model {path}",
        ]

    def _ms(self, row: Row) -> str:
        ms = self.ms_per_image.get(id(row))
        return "time unmeasured" if ms is None else f"~{ms:.1f} ms/image"


def _score(row: Row) -> str:
    m = row.metrics
    return f"{m['accuracy']:.3f}, 95% CI {m['ci_low']:.3f}-{m['ci_high']:.3f}"


def recommend(rows: list[Row], backbones: dict, timer=None, log=print) -> Recommendation:
    """`rows` ranked best first (ranking.score_rows); `backbones`: feature label -> the forward
    passes its vectors need (forward_passes). `timer(name)` gives a backbone's ms per image
    (default: measured here)."""
    best = rows[0]
    contenders = [best, *(row for row in rows[1:] if _not_worse(row, best))]
    if len(contenders) == 1:
        return Recommendation(best, best, contenders, {}, {})
    names = {name for row in contenders for name in backbones.get(row.backbone, ())}
    backbone_ms = _backbone_times(names, timer or backbone_ms_per_image, log) if len(names) > 1 else {}
    ms = {id(row): _row_ms(row, backbones.get(row.backbone, ()), backbone_ms) for row in contenders}
    return Recommendation(_fastest(contenders, ms), best, contenders, ms, backbone_ms)


def _fastest(contenders: list[Row], ms: dict) -> Row:
    """The contender with the fewest ms per image (the first, most accurate, of equals); the best
    where none was timed."""
    timed = [row for row in contenders if ms[id(row)] is not None]
    return min(timed, key=lambda row: ms[id(row)]) if timed else contenders[0]


def _not_worse(row: Row, best: Row) -> bool:
    """Scored on the same images as the best row, and McNemar cannot tell them apart."""
    p = row.metrics.get("mcnemar_p_vs_best")
    return p is not None and p >= SIGNIFICANT_P and sorted(row.paths) == sorted(best.paths)


def _row_ms(row: Row, names, backbone_ms: dict) -> float | None:
    """A row's ms per image: its backbones' (0 where every contender shares them) plus its head's."""
    head = row.info.get("predict_seconds_per_image")
    if head is None and row.model is not None:
        return None
    return sum(backbone_ms.get(name, 0.0) for name in names) + 1000 * (head or 0.0)


def _backbone_times(names, timer, log) -> dict:
    """{backbone: ms per image} of those that can be timed here (one that cannot is said and counted 0)."""
    times = {}
    for name in sorted(names):
        try:
            times[name] = timer(name)
        except CnnfeatError as error:
            log(f"recommendation: {name}'s forward pass not timed ({error}); counted as free")
    if times:
        timed = ", ".join(f"{name} {ms:.1f} ms" for name, ms in times.items())
        log(f"recommendation: backbone forward pass per image: {timed}")
    return times


def backbone_ms_per_image(name: str) -> float:
    """ms per image of the backbone's forward pass on this machine's CPU (torch, batch TIMED_IMAGES,
    the best of TIMED_PASSES after a warm-up), with random weights of its architecture."""
    import torch

    from featurize import get_backbone

    extractor = get_backbone(name).load("random")
    size = extractor.preprocessing.crop_size
    images = torch.zeros((TIMED_IMAGES, 3, size, size), dtype=torch.uint8)
    seconds = []
    with torch.inference_mode():
        for _ in range(1 + TIMED_PASSES):
            started = time.perf_counter()
            extractor(images)
            seconds.append(time.perf_counter() - started)
    return 1000 * min(seconds[1:]) / TIMED_IMAGES


def forward_passes(data) -> tuple[str, ...]:
    """The backbone forward passes a feature file's vectors need per image: one per backbone (each
    part of a fused file), two where the vectors average the mirror image's in (--tta flip)."""
    parts = data.parts or (data,)
    return tuple(name for part in parts for name in [part.backbone] * (2 if part.config.get("tta") == "flip" else 1))
