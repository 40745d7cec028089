"""`cnnfeat explain`: where in an image a saved model looks, one PNG heatmap per image (under
OUT/explain/ unless given a folder).

The maps are computed in experiments.heatmaps and drawn in experiments.plots; this module checks
what was asked against the model before any work, runs every image, and writes the pictures."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from classifiers import final_step, linear_form, load_model
from common.errors import CnnfeatError
from common.files import ensure_writable, write_bytes_atomic
from common.names import printable

from .choices import EXPLAIN_METHODS, ExplainMethod
from .heatmaps import (
    OcclusionGrid,
    class_activation_map,
    feature_map_grid,
    first_backbone,
    first_layer_filters,
    layers,
    occlusion_map,
)
from .layout import explain_dir
from .plots import heatmap_png, tiles_png
from .predict import expand_inputs

METHODS = EXPLAIN_METHODS


@dataclass(frozen=True)
class ExplainSettings:
    class_name: str | None = None  # explain this class; None: the predicted one
    method: ExplainMethod = "auto"  # auto: cam where it exists, else occlusion
    device: str = "auto"
    feature_maps: str | None = None  # also a grid of a layer's strongest channels: a layer name, or "last"
    filters: bool = False  # also the first convolution's kernels (one PNG)
    grid: OcclusionGrid = OcclusionGrid()


class Explained(NamedTuple):
    folder: Path  # where the pictures went
    written: list[Path]
    failures: list[tuple[str, str]]  # (image, reason) of the images that could not be read


def explain_images(model_path, inputs, out=None, settings: ExplainSettings = ExplainSettings(), log=print) -> Explained:
    """One PNG per readable image in folder `out` (default: OUT/explain/ of the default output root),
    and the grids `settings` asks for."""
    if settings.method not in METHODS:
        raise CnnfeatError(f"--method {settings.method!r}; valid: {', '.join(METHODS)}")
    model = load_model(model_path)
    folder = ensure_writable(explain_dir() if out is None else out)
    method = _checked(model, settings)
    head = final_step(model.pipeline_)
    log(
        f"explain: {'the exact class activation map' if method == 'cam' else 'occlusion'} of a "
        f"{type(head).__name__} on {model.feature_config.get('backbone')} features"
    )
    written = []
    if settings.filters:
        kernels, name = first_layer_filters(model)
        written.append(_write_tiles(kernels, f"first-layer filters: {name} ({len(kernels)})", folder / "filters.png"))
    paths = expand_inputs(inputs)
    pictures, failures = _explain_each(model, paths, method, settings, folder, log)
    if len(failures) == len(paths):
        raise CnnfeatError(f"none of the {len(failures)} images could be read")
    return Explained(folder, written + pictures, failures)


def _checked(model, settings: ExplainSettings) -> str:
    """The method to use, once the class and layer asked for are known to be the model's (a wrong
    name fails before any work)."""
    if settings.class_name is not None and settings.class_name not in model.classes_.tolist():
        raise CnnfeatError(
            f"--class {printable(settings.class_name)}: not a class of this model "
            f"({', '.join(map(printable, model.classes_))})"
        )
    method = _method_for(model, settings.method)
    if settings.feature_maps not in (None, "last"):
        layers(*first_backbone(model), settings.feature_maps)
    return method


def _explain_each(model, paths: list[str], method: str, settings: ExplainSettings, folder: Path, log):
    """(the pictures written, [(image, reason)] of the images that could not be read)."""
    from featurize import UnreadableImage, load_image

    written, failures, names = [], [], set()
    for path in paths:
        try:
            image = load_image(Path(path))
        except (UnreadableImage, OSError) as error:
            failures.append((path, str(error)))
            log(f"  skipped {printable(path)}: {printable(error)}")
            continue
        written += _explain_one(model, image, path, method, settings, folder / _unique_name(Path(path).stem, names))
    return written, failures


def _method_for(model, method: str) -> str:
    refusal = _why_no_cam(model)
    if method == "cam" and refusal:
        raise CnnfeatError(f"--method cam needs {refusal}: use --method occlusion (or auto)")
    return "cam" if method in ("cam", "auto") and not refusal else "occlusion"


def _why_no_cam(model) -> str | None:
    """What an exact class activation map needs that `model` lacks (None: nothing)."""
    sources = model.sources()
    if len(sources) == 1 and not sources[0].recipe.one_map_mean:
        return "features that are the plain mean of one feature map (not --layers, --pool or --tta crops features)"
    if "power" in getattr(model.pipeline_, "named_steps", {}):
        return "a head linear in the vectors; one fitted with --normalize power is not"
    if len(sources) != 1 or linear_form(model.pipeline_) is None:
        return (
            "a linear head (logreg, linear, or a two-class linear SVM) on one backbone's features; "
            "this model's head is not one"
        )
    return None


def _explain_one(model, image, path: str, method: str, settings: ExplainSettings, stem: Path) -> list[Path]:
    """The heatmap of one image (and its feature-map grid when asked): `stem`.png (`stem`-maps.png)."""
    explain = class_activation_map if method == "cam" else occlusion_map
    heatmap = explain(model, image, settings.class_name, settings.device, settings.grid)
    written = [write_bytes_atomic(stem.with_name(f"{stem.name}.png"), heatmap_png(heatmap, path))]
    if settings.feature_maps is not None:
        maps, layer = feature_map_grid(model, image, None if settings.feature_maps == "last" else settings.feature_maps)
        written.append(
            _write_tiles(
                maps,
                f"{Path(path).name}: the {len(maps)} strongest channels of {layer}",
                stem.with_name(f"{stem.name}-maps.png"),
            )
        )
    return written


def _write_tiles(tiles, title: str, path: Path) -> Path:
    return write_bytes_atomic(path, tiles_png(tiles, title))


def _unique_name(stem: str, taken: set) -> str:
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    taken.add(name)
    return name
