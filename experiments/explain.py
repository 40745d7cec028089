"""`cnnfeat explain`: where in an image a saved model looks, one PNG heatmap per image.

- `cam` (linear heads: logreg, `linear`, a two-class linear SVM, on one backbone whose vector is
  the plain spatial mean of its last feature map): the exact class activation map. The head folded with its scaler is one
  linear layer on the pooled vector (classifiers.linear_form), so a class's score is the spatial
  mean of sum_c W[k, c] F[c] (+ b[k]): that sum, on the centre crop the backbone sees.
- `occlusion` (every head, fused and flip-averaged features included): a grey patch slid over the
  image, each occluded copy predicted by the model itself in one batch; the heat at a pixel is
  how much the class's probability drops when the patches covering it are hidden.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from classifiers import linear_form, load_model
from common.errors import CnnfeatError
from common.files import ensure_writable, write_bytes_atomic
from common.names import printable

from .predict import expand_inputs

METHODS = ("auto", "cam", "occlusion")


@dataclass(frozen=True)
class OcclusionGrid:
    """Patches of `patch` x the image's side, moved by half a patch: (2/patch - 1)^2 copies per image."""

    patch: float = 0.25

    def boxes(self, width: int, height: int) -> list[tuple[int, int, int, int]]:
        w, h = max(1, round(width * self.patch)), max(1, round(height * self.patch))
        xs = np.unique(np.linspace(0, width - w, round(2 / self.patch) - 1).round().astype(int))
        ys = np.unique(np.linspace(0, height - h, round(2 / self.patch) - 1).round().astype(int))
        return [(x, y, x + w, y + h) for y in ys.tolist() for x in xs.tolist()]


@dataclass(frozen=True)
class ExplainSettings:
    class_name: str | None = None  # explain this class; None: the predicted one
    method: str = "auto"  # METHODS
    device: str = "auto"
    feature_maps: str | None = None  # also a grid of a layer's strongest channels: a layer name, or "last"
    filters: bool = False  # also the first convolution's kernels (one PNG)
    grid: OcclusionGrid = OcclusionGrid()


class Heatmap(NamedTuple):
    image: np.ndarray  # (H, W, 3) uint8: what the heat is drawn on
    heat: np.ndarray  # (H', W') float, any scale; drawn stretched over the image
    class_name: str
    probability: float
    method: str


def explain_images(model_path, inputs, out, settings: ExplainSettings = ExplainSettings(),
                   log=print) -> tuple[list[Path], list[tuple[str, str]]]:
    """One PNG per readable image under `out` (and the grids `settings` asks for); returns (written
    files, [(image, reason)] of the unreadable ones)."""
    from featurize import UnreadableImage, load_image

    if settings.method not in METHODS:
        raise CnnfeatError(f"--method {settings.method!r}; valid: {', '.join(METHODS)}")
    model = load_model(model_path)
    class_name, out = settings.class_name, ensure_writable(out)
    if class_name is not None and class_name not in model.classes_.tolist():
        raise CnnfeatError(f"--class {printable(class_name)}: not a class of this model "
                           f"({', '.join(map(printable, model.classes_))})")
    chosen = _method_for(model, settings.method)
    if settings.feature_maps not in (None, "last"):
        _layers(*_first_backbone(model), settings.feature_maps)  # a wrong name fails before any work
    head = model.pipeline_.steps[-1][1] if hasattr(model.pipeline_, "steps") else model.pipeline_
    log(f"explain: {'the exact class activation map' if chosen == 'cam' else 'occlusion'} of a "
        f"{type(head).__name__} on {model.feature_config.get('backbone')} features")
    written, failures, names = [], [], set()
    if settings.filters:
        kernels, name = first_layer_filters(model)
        written.append(_grid_png(kernels, f"first-layer filters: {name} ({len(kernels)})", out / "filters.png"))
    paths = expand_inputs(inputs)
    for path in paths:
        try:
            image = load_image(Path(path))
        except (UnreadableImage, OSError) as error:
            failures.append((path, str(error)))
            log(f"  skipped {printable(path)}: {printable(error)}")
            continue
        written += _explain_one(model, image, path, chosen, settings, out / _unique_name(Path(path).stem, names))
    if len(failures) == len(paths):
        raise CnnfeatError(f"none of the {len(failures)} images could be read")
    return written, failures


def _explain_one(model, image, path: str, method: str, settings: ExplainSettings, stem: Path) -> list[Path]:
    """The heatmap of one image (and its feature-map grid when asked): `stem`.png (`stem`-maps.png)."""
    explain = class_activation_map if method == "cam" else occlusion_map
    written = [_save(explain(model, image, settings.class_name, settings.device, settings.grid), stem, path)]
    if settings.feature_maps is not None:
        maps, layer = feature_map_grid(model, image, None if settings.feature_maps == "last" else settings.feature_maps)
        written.append(_grid_png(maps, f"{Path(path).name}: the {len(maps)} strongest channels of {layer}",
                                 stem.with_name(f"{stem.name}-maps.png")))
    return written


def _method_for(model, method: str) -> str:
    cam_possible = linear_form(model.pipeline_) is not None and len(model.sources()) == 1
    if method == "cam" and not cam_possible:
        raise CnnfeatError("--method cam needs a linear head (logreg, linear, or a two-class linear SVM) on one "
                           "backbone's features; this model's head is not one: use --method occlusion (or auto)")
    return "cam" if method in ("cam", "auto") and cam_possible else "occlusion"


def class_activation_map(model, image, class_name, device="auto", grid=None) -> Heatmap:
    """The exact CAM of the class (default: the predicted one) on the backbone's centre crop."""
    import torch

    from featurize.network import last_feature_map

    W, _ = linear_form(model.pipeline_)
    extractor, record = _first_backbone(model)  # the torch module, also where features came from onnxruntime
    crop = record.preprocessing().transform()(image).unsqueeze(0)
    flip = model.sources()[0].config.get("tta", "none") == "flip"
    with torch.inference_mode():
        maps = last_feature_map(extractor, torch.cat([crop, crop.flip(3)]) if flip else crop)
    if maps is None:
        raise CnnfeatError(f"{record.name}: its pooled vector is not the plain mean of a feature map, so there "
                           f"is no exact class activation map: use --method occlusion")
    maps = maps.double().numpy()
    cams = np.einsum("kc,nchw->nkhw", W, maps)  # one map per class (and per mirror image)
    if flip:  # the vector was the mean of the image's and its mirror's: so is the map, mirrored back
        cams = (cams[:1] + cams[1:, :, :, ::-1]) / 2
    # The model's own probabilities of the pooled vector (the maps' mean, as the backbone pools them)
    pooled = maps.mean(axis=(2, 3)).mean(axis=0, keepdims=True)
    probabilities = model.pipeline_.predict_proba(pooled.astype(np.float32))[0]
    k = _class_index(model, class_name, probabilities)
    return Heatmap(crop[0].permute(1, 2, 0).numpy(), cams[0, k], str(model.classes_[k]), float(probabilities[k]),
                   "class activation map")


def occlusion_map(model, image, class_name, device="auto", grid: OcclusionGrid = OcclusionGrid()) -> Heatmap:
    """Probability drop of the class when each patch is greyed out (the image's mean colour),
    averaged per pixel."""
    from PIL import Image

    rgb = image.permute(1, 2, 0).numpy()
    height, width = rgb.shape[:2]
    boxes = grid.boxes(width, height)
    copies = [rgb]
    for x0, y0, x1, y1 in boxes:
        copy = rgb.copy()
        copy[y0:y1, x0:x1] = rgb.reshape(-1, 3).mean(axis=0).round()
        copies.append(copy)
    vectors, _ = model.embed_images([Image.fromarray(c) for c in copies], device)  # through the model's backbone(s)
    probabilities = model.predict_proba(vectors)
    k = _class_index(model, class_name, probabilities[0])
    drop, covered = np.zeros((height, width)), np.zeros((height, width))
    for (x0, y0, x1, y1), p in zip(boxes, probabilities[1:, k]):
        drop[y0:y1, x0:x1] += probabilities[0, k] - p
        covered[y0:y1, x0:x1] += 1
    return Heatmap(rgb, drop / np.maximum(covered, 1), str(model.classes_[k]), float(probabilities[0, k]), "occlusion")


STRONGEST = 16  # channels shown by --feature-maps


def feature_map_grid(model, image, layer: str | None) -> tuple[np.ndarray, str]:
    """(the STRONGEST channels (by mean activation) of `layer`'s output for the image, (k, H, W); the
    layer's name). `layer` None: the last feature map (the pooled one)."""
    import torch

    extractor, record = _first_backbone(model)
    crop = record.preprocessing().transform()(image).unsqueeze(0)
    modules = _layers(extractor, record, layer)
    captured = []
    with torch.inference_mode():
        if layer is None:
            from featurize.network import last_feature_map
            captured.append(last_feature_map(extractor, crop))
            layer = "the last feature map"
        else:
            handle = modules[layer].register_forward_hook(lambda module, args, output: captured.append(output))
            try:
                extractor(crop)
            finally:
                handle.remove()
    maps = captured[0] if captured and isinstance(captured[0], torch.Tensor) else None
    if maps is None or maps.dim() != 4:
        raise CnnfeatError(f"--feature-maps: {layer} of {record.name} gives no (channels, height, width) map")
    maps = maps[0].float().numpy()
    return maps[np.argsort(-maps.mean(axis=(1, 2)))[:STRONGEST]], layer


def _layers(extractor, record, layer: str | None) -> dict:
    """The trunk's modules by name; a clear error when `layer` is not one of them."""
    modules = dict(extractor.trunk.named_modules())
    if layer is not None and layer not in modules:
        shown = ", ".join(name for name, _ in extractor.trunk.named_children())
        raise CnnfeatError(f"--feature-maps {layer}: {record.name} has no such layer (its top-level ones: {shown}; "
                           f"deeper ones as 'layer4.1', '_blocks.15')")
    return modules


def first_layer_filters(model) -> tuple[np.ndarray, str]:
    """(the first convolution's kernels on the RGB input as (k, h, w, 3) images in [0, 1], its name)."""
    from torch import nn

    extractor, record = _first_backbone(model)
    name, conv = next(((n, m) for n, m in extractor.trunk.named_modules()
                       if isinstance(m, nn.Conv2d) and m.in_channels == 3), (None, None))
    if conv is None:
        raise CnnfeatError(f"--filters: {record.name} has no convolution on the RGB input")
    kernels = conv.weight.detach().float().numpy().transpose(0, 2, 3, 1)
    low = kernels.min(axis=(1, 2, 3), keepdims=True)
    span = kernels.max(axis=(1, 2, 3), keepdims=True) - low
    return (kernels - low) / np.where(span > 0, span, 1), f"{record.name} {name}"


def _first_backbone(model):
    """(the torch feature extractor, registry record) of the model's (first) backbone."""
    source = model.sources()[0]
    return source.network(), source.record()[0]


def _grid_png(tiles: np.ndarray, title: str, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = int(np.ceil(np.sqrt(len(tiles))))
    rows = int(np.ceil(len(tiles) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(1.4 * columns, 1.4 * rows + 0.5), squeeze=False)
    for axis, tile in zip(axes.ravel(), tiles):
        axis.imshow(tile, cmap=None if tile.ndim == 3 else "viridis", interpolation="nearest")
    for axis in axes.ravel():
        axis.axis("off")
    figure.suptitle(title, fontsize=9)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_bytes_atomic(path, buffer.getvalue())


def _class_index(model, class_name, probabilities) -> int:
    return int(np.argmax(probabilities)) if class_name is None else model.classes_.tolist().index(class_name)


def _save(heatmap: Heatmap, stem: Path, source: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height, width = heatmap.image.shape[:2]
    figure, axis = plt.subplots(figsize=(5, 5 * height / width + 0.4))
    axis.imshow(heatmap.image)
    axis.imshow(heatmap.heat, cmap="jet", alpha=0.45, extent=(0, width, height, 0), interpolation="bilinear")
    axis.set_title(f"{printable(heatmap.class_name)} (p={heatmap.probability:.2f}) - {heatmap.method}\n"
                   f"{printable(Path(source).name)}", fontsize=9)
    axis.axis("off")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    stem.parent.mkdir(parents=True, exist_ok=True)
    return write_bytes_atomic(stem.with_name(f"{stem.name}.png"), buffer.getvalue())


def _unique_name(stem: str, taken: set) -> str:
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    taken.add(name)
    return name
