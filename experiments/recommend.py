"""The row of `compare`'s table to ship: among the rows McNemar's test cannot tell apart from the
best (on the same held-out images), the most accurate of those within 10% of the fastest time to
predict an image; the best row where every other row is told apart.

Predicting an image costs its backbones' forward passes (each backbone of a fused row; two where
the vectors average the mirror image's in) and then the head. Heads' times are measured when they
are scored; backbones' are measured here, on the CPU with random weights of the same architecture
(the time does not depend on the weights' values). A row whose time cannot be known is not chosen
for speed. Only a one-backbone row can be exported or served, so a fused row is chosen only where no
such row is a contender."""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

from .ranking import Row

SIGNIFICANT_P = 0.05  # McNemar p below this: told apart from the best row
CLOSE_ENOUGH = 1.10  # within 10% of the fastest time: fast enough, and the most accurate of those wins
TIMED_IMAGES = 8  # images per timed forward pass of a backbone
TIMED_PASSES = 3  # the fastest counts: a busy machine slows some passes, never speeds one up


def row_key(row: Row) -> tuple[str, str]:
    return row.backbone, row.head


@dataclass(frozen=True)
class Recommendation:
    row: Row  # the row to ship
    best: Row  # the first row of the table (best by `scoring`)
    scoring: str  # what the table is ranked by
    contenders: list  # the best row and the rows McNemar cannot tell apart from it, on its images
    compared: int = 0  # other rows scored on the best row's images
    elsewhere: int = 0  # rows scored on other images than the best: not compared
    ms_per_image: dict = field(default_factory=dict)  # row_key -> ms per image (backbones + head), or None
    backbone_ms: dict = field(default_factory=dict)  # backbone name -> ms per image, where measured
    fused: frozenset = frozenset()  # row_keys of the rows joining several feature files: not shippable

    @property
    def model_path(self) -> str | None:
        return self.row.model_path

    def text(self) -> str:
        """One paragraph: which row, and why."""
        row, best = self.row, self.best
        ranked = f"held-out {self.scoring.replace('_', ' ')}"
        same = f"on the same {best.metrics['n']} held-out images"
        if row is best:
            why = [f"the best row by {ranked}"]
        else:
            why = [
                f"McNemar's test cannot tell it apart from the best row by {ranked}, {best.backbone} {best.head} "
                f"({_score(best, self.scoring)}; p = {row.metrics['mcnemar_p_vs_best']:.3f} >= {SIGNIFICANT_P} {same})"
            ]
        others = len(self.contenders) - 1
        if not self.compared:
            why.append("no other row was scored on the same images")
        elif not others:
            why.append(f"McNemar's test tells {_other_rows(self.compared)} apart from it (p < {SIGNIFICANT_P} {same})")
        else:
            if row is best:
                why.append(
                    f"McNemar's test cannot tell {_other_rows(others)} apart from it (p >= {SIGNIFICANT_P} {same})"
                )
            why.append(self._choice())
        if row_key(row) in self.fused and len(self.contenders) == 1:
            why.append("it joins several feature files, which export and serve do not take (predict and joblib do)")
        if self.elsewhere:
            were = "1 row was" if self.elsewhere == 1 else f"{self.elsewhere} rows were"
            why.append(f"{were} scored on other images, not compared")
        return f"Use {row.backbone} {row.head} ({_score(row, self.scoring)}): {'; '.join(why)}."

    def _choice(self) -> str:
        """How the row was chosen among the contenders."""
        row, best, ranked = self.row, self.best, self.scoring.replace("_", " ")
        if row_key(row) in self.fused:
            return "each of them joins several feature files, which export and serve do not take: the best is kept"
        skipped = " (the best joins several feature files, which export and serve do not take)"
        skipped = skipped if row_key(best) in self.fused else ""
        ms = self.ms_per_image.get(row_key(row))
        if ms is None:
            return f"no time to predict could be measured, so the best by {ranked} of those that ship{skipped}"
        return (
            f"of those that ship{skipped}, the best by {ranked} within 10% of the fastest to predict (~{ms:.1f} "
            f"ms/image; the best row {self._ms(best)})"
        )

    def commands(self) -> list[str]:
        """The saved model, and the commands that ship it (those that take it)."""
        path = self.model_path
        if path is None:
            return []
        model = shlex.quote(path)
        if row_key(self.row) in self.fused:
            return [
                f"model: {path}",
                f"predict: python cli.py predict --model {model} IMAGES (export and serve take one-backbone models)",
            ]
        export = "export: takes one head, not an ensemble (serve and joblib.load take it)"
        if self.row.info.get("normalize") == "power":
            export = "export: does not take a --normalize power head yet (serve and joblib.load do)"
        elif not self.row.info.get("members"):
            onnx_dir = shlex.quote(str(Path(path).with_suffix("")) + "-onnx")
            export = f"export: python cli.py export --model {model} --out {onnx_dir}"
        return [f"model: {path}", export, f"serve: python cli.py serve --model {model}"]

    def _ms(self, row: Row) -> str:
        ms = self.ms_per_image.get(row_key(row))
        return "time unknown" if ms is None else f"~{ms:.1f} ms/image"


def _other_rows(count: int) -> str:
    return "the other row" if count == 1 else f"{count} other rows"


def _score(row: Row, scoring: str) -> str:
    m = row.metrics
    accuracy = f"accuracy {m['accuracy']:.3f}, 95% CI {m['ci_low']:.3f}-{m['ci_high']:.3f}"
    return accuracy if scoring == "accuracy" else f"{scoring.replace('_', ' ')} {m[scoring]:.3f}, {accuracy}"


def recommend(
    rows: list[Row], passes: dict, scoring: str = "accuracy", fused=frozenset(), timer=None, log=print
) -> Recommendation:
    """`rows` ranked best first by `scoring` (ranking.score_rows); `passes`: feature label -> the
    forward passes its vectors need (forward_passes); `fused`: the labels of joined feature files.
    `timer(name)` gives a backbone's ms per image (default: measured here)."""
    best = rows[0]
    compared, contenders = _contenders(rows)
    ms, backbone_ms = {}, {}
    if len(contenders) > 1:
        ms, backbone_ms = _times(contenders, passes, timer or backbone_ms_per_image, log)
    shippable = [row for row in contenders if row.backbone not in fused]
    return Recommendation(
        _fastest(shippable, ms) if shippable else best,
        best,
        scoring,
        contenders,
        compared=len(compared),
        elsewhere=len(rows) - 1 - len(compared),
        ms_per_image=ms,
        backbone_ms=backbone_ms,
        fused=frozenset(row_key(row) for row in rows if row.backbone in fused),
    )


def _times(contenders: list[Row], passes: dict, timer, log) -> tuple[dict, dict]:
    """({row_key: ms per image or None}, {backbone: ms per image}) of the contenders."""
    names = sorted({name for row in contenders for name in passes.get(row.backbone, ())})
    backbone_ms = _backbone_times(names, timer, log)
    return {row_key(row): _row_ms(row, passes.get(row.backbone, ()), backbone_ms) for row in contenders}, backbone_ms


def _contenders(rows: list[Row]) -> tuple[list[Row], list[Row]]:
    """(the other rows scored on the best row's images, the best and those McNemar cannot tell apart from it)."""
    best = rows[0]
    images = sorted(best.paths)  # once, not once per row
    compared = [row for row in rows[1:] if sorted(row.paths) == images]
    return compared, [best, *(row for row in compared if _cannot_tell_apart(row))]


def _cannot_tell_apart(row: Row) -> bool:
    p = row.metrics.get("mcnemar_p_vs_best")
    return p is not None and p >= SIGNIFICANT_P


def _fastest(rows: list[Row], ms: dict) -> Row:
    """The first (most accurate) of `rows` within CLOSE_ENOUGH of the fewest ms per image; the first
    where its time, or every time, is unknown."""
    timed = [row for row in rows if ms.get(row_key(row)) is not None]
    if not timed or ms.get(row_key(rows[0])) is None:  # the best's time unknown: no speed to trade it for
        return rows[0]
    fastest = min(ms[row_key(row)] for row in timed)
    return next(row for row in timed if ms[row_key(row)] <= fastest * CLOSE_ENOUGH)


def _row_ms(row: Row, names, backbone_ms: dict) -> float | None:
    """A row's ms per image: its backbones' forward passes plus its head's; None where one of them is
    unknown. The fine-tuned network's own layer costs nothing beside its backbone."""
    head = row.info.get("predict_seconds_per_image")
    if row.model is None:  # the fine-tuned network: one pass of its backbone, whatever its file averaged
        names = tuple(dict.fromkeys(names))
    if not names or any(name not in backbone_ms for name in names) or (head is None and row.model is not None):
        return None
    return sum(backbone_ms[name] for name in names) + 1000 * (head or 0.0)


def _backbone_times(names, timer, log) -> dict:
    """{backbone: ms per image} of those that can be timed here; one that cannot is said, and the rows
    that need it are not chosen for speed."""
    times = {}
    for name in names:
        try:
            times[name] = timer(name)
        except Exception as error:  # an unknown backbone, or torch failing: the report is still written
            reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
            log(f"recommendation: {name}'s forward pass not timed ({reason})")
    if times:
        timed = ", ".join(f"{name} {ms:.1f} ms" for name, ms in times.items())
        log(f"recommendation: backbone forward pass per image: {timed}")
    return times


def backbone_ms_per_image(name: str) -> float:
    """ms per image of the backbone's forward pass on this machine's CPU (torch, batch TIMED_IMAGES,
    the best of TIMED_PASSES after a warm-up), with random weights of its architecture; "NAME@SIZE"
    at an input size of its own (extract --image-size)."""
    import torch

    from featurize import Recipe, get_backbone

    backbone, _, own_size = name.partition("@")
    extractor = get_backbone(backbone).load("random", recipe=Recipe(image_size=int(own_size) if own_size else None))
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
    part of a fused file), times the views its recipe averages (--tta flip: 2, crops: 10); "NAME@SIZE"
    where the recipe's input size is not the weights' own."""
    from featurize import recipe_of

    passes = []
    for part in data.parts or (data,):
        recipe = recipe_of(part.config)
        name = part.backbone if recipe.image_size is None else f"{part.backbone}@{recipe.image_size}"
        passes += [name] * recipe.views
    return tuple(passes)
