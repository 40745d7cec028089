"""`cnnfeat explain`: where in an image a saved model looks, one PNG heatmap per image.

- `cam` (linear heads: logreg, `linear`, on one backbone whose vector is the plain spatial mean of
  its last feature map): the exact class activation map. The head folded with its scaler is one
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

from classifiers import load_model
from classifiers.linear_form import linear_form
from featurize.errors import CnnfeatError
from featurize.files import write_bytes_atomic

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


class Heatmap(NamedTuple):
    image: np.ndarray  # (H, W, 3) uint8: what the heat is drawn on
    heat: np.ndarray  # (H', W') float, any scale; drawn stretched over the image
    class_name: str
    probability: float
    method: str


def explain_images(model_path, inputs, out, class_name=None, method="auto", device="auto",
                   grid: OcclusionGrid = OcclusionGrid(), log=print) -> tuple[list[Path], list[tuple[str, str]]]:
    """One PNG per readable image under `out` (each image a uint8 tensor from load_image); returns
    (written files, [(image, reason)] of the others)."""
    from featurize import load_image
    from featurize.images import UnreadableImage

    if method not in METHODS:
        raise CnnfeatError(f"--method {method!r}; valid: {', '.join(METHODS)}")
    model = load_model(model_path)
    if class_name is not None and class_name not in model.classes_.tolist():
        raise CnnfeatError(f"--class {class_name}: not a class of this model ({', '.join(map(str, model.classes_))})")
    chosen = _method_for(model, method)
    head = model.pipeline_.steps[-1][1] if hasattr(model.pipeline_, "steps") else model.pipeline_
    log(f"explain: {'the exact class activation map' if chosen == 'cam' else 'occlusion'} of a "
        f"{type(head).__name__} on {model.feature_config.get('backbone')} features")
    written, failures, names = [], [], set()
    for path in expand_inputs(inputs):
        try:
            image = load_image(Path(path))
        except (UnreadableImage, OSError) as error:
            failures.append((path, str(error)))
            log(f"  skipped {path}: {error}")
            continue
        heatmap = (class_activation_map if chosen == "cam" else occlusion_map)(model, image, class_name, device, grid)
        written.append(_save(heatmap, Path(out), _unique_name(Path(path).stem, names), path))
    if not written:
        raise CnnfeatError(f"none of the {len(failures)} images could be read")
    return written, failures


def _method_for(model, method: str) -> str:
    cam_possible = linear_form(model.pipeline_) is not None and len(model.sources()) == 1
    if method == "cam" and not cam_possible:
        raise CnnfeatError("--method cam needs a linear head (logreg or linear) on one backbone's features; "
                           "this model's head is not one: use --method occlusion (or auto)")
    return "cam" if method in ("cam", "auto") and cam_possible else "occlusion"


def class_activation_map(model, image, class_name, device="auto", grid=None) -> Heatmap:
    """The exact CAM of the class (default: the predicted one) on the backbone's centre crop."""
    import torch

    from featurize.network import last_feature_map

    W, b = linear_form(model.pipeline_)
    source = model.sources()[0]
    record, weights = source.record()
    extractor = record.load(weights)  # the torch module, also where features came from onnxruntime
    crop = record.preprocessing().transform()(image).unsqueeze(0)
    flip = source.config.get("tta", "none") == "flip"
    with torch.inference_mode():
        maps = last_feature_map(extractor, torch.cat([crop, crop.flip(3)]) if flip else crop)
    if maps is None:
        raise CnnfeatError(f"{record.name}: its pooled vector is not the plain mean of a feature map, so there "
                           f"is no exact class activation map: use --method occlusion")
    maps = maps.double().numpy()
    cams = np.einsum("kc,nchw->nkhw", W, maps)  # one map per class (and per mirror image)
    if flip:  # the vector was the mean of the image's and its mirror's: so is the map, mirrored back
        cams = (cams[:1] + cams[1:, :, :, ::-1]) / 2
    scores = cams[0].mean(axis=(1, 2)) + b
    probabilities = np.exp(scores - scores.max())
    probabilities /= probabilities.sum()
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


def _class_index(model, class_name, probabilities) -> int:
    return int(np.argmax(probabilities)) if class_name is None else model.classes_.tolist().index(class_name)


def _save(heatmap: Heatmap, out: Path, name: str, source: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height, width = heatmap.image.shape[:2]
    figure, axis = plt.subplots(figsize=(5, 5 * height / width + 0.4))
    axis.imshow(heatmap.image)
    axis.imshow(heatmap.heat, cmap="jet", alpha=0.45, extent=(0, width, height, 0), interpolation="bilinear")
    axis.set_title(f"{heatmap.class_name} (p={heatmap.probability:.2f}) - {heatmap.method}\n{Path(source).name}",
                   fontsize=9)
    axis.axis("off")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    out.mkdir(parents=True, exist_ok=True)
    return write_bytes_atomic(out / f"{name}.png", buffer.getvalue())


def _unique_name(stem: str, taken: set) -> str:
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    taken.add(name)
    return name
