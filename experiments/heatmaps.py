"""What a saved model looks at in an image, computed: the class activation map, the occlusion map,
a layer's strongest feature maps and the first convolution's kernels (explain draws them).

- `class_activation_map` (linear heads: logreg, `linear`, a two-class linear SVM, on one backbone
  whose vector is the plain spatial mean of its last feature map): the exact map. The head folded
  with its scaler is one linear layer on the pooled vector (classifiers.linear_form), so a class's
  score is the spatial mean of sum_c W[k, c] F[c] (+ b[k]): that sum, on the centre crop the
  backbone sees.
- `occlusion_map` (every head, fused and flip-averaged features included): a grey patch slid over
  the image, each occluded copy predicted by the model itself in one batch; the heat at a pixel is
  how much the class's probability drops when the patches covering it are hidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from classifiers import linear_form
from common.errors import CnnfeatError

STRONGEST = 16  # channels shown by --feature-maps


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


def class_activation_map(model, image, class_name, device="auto", grid=None) -> Heatmap:
    """The exact CAM of the class (default: the predicted one) on the backbone's centre crop."""
    import torch

    from featurize import last_feature_map

    W, _ = linear_form(model.pipeline_)
    extractor, backbone = first_backbone(model)  # the torch module, also where features came from onnxruntime
    recipe = model.sources()[0].recipe
    if not recipe.one_map_mean:
        raise CnnfeatError(
            f"{backbone.name}: these features are not the plain mean of the last feature map of one crop "
            f"({', '.join(f'{k} {v}' for k, v in recipe.config().items())}), so there is no exact class "
            f"activation map: use --method occlusion"
        )
    crop = torch.from_numpy(extractor.preprocessing.transform()(image)).unsqueeze(0)
    flip = recipe.tta == "flip"
    with torch.inference_mode():
        maps = last_feature_map(extractor, torch.cat([crop, crop.flip(3)]) if flip else crop)
    if maps is None:
        raise CnnfeatError(
            f"{backbone.name}: its pooled vector is not the plain mean of a feature map, so there "
            f"is no exact class activation map: use --method occlusion"
        )
    maps = maps.double().numpy()
    cams = np.einsum("kc,nchw->nkhw", W, maps)  # one map per class (and per mirror image)
    if flip:  # the vector was the mean of the image's and its mirror's: so is the map, mirrored back
        cams = (cams[:1] + cams[1:, :, :, ::-1]) / 2
    # The model's own probabilities of the pooled vector (the maps' mean, as the backbone pools them)
    pooled = maps.mean(axis=(2, 3)).mean(axis=0, keepdims=True)
    probabilities = model.pipeline_.predict_proba(pooled.astype(np.float32))[0]
    k = class_index(model, class_name, probabilities)
    return Heatmap(
        crop[0].permute(1, 2, 0).numpy(),
        cams[0, k],
        str(model.classes_[k]),
        float(probabilities[k]),
        "class activation map",
    )


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
    k = class_index(model, class_name, probabilities[0])
    drop, covered = np.zeros((height, width)), np.zeros((height, width))
    for (x0, y0, x1, y1), p in zip(boxes, probabilities[1:, k]):
        drop[y0:y1, x0:x1] += probabilities[0, k] - p
        covered[y0:y1, x0:x1] += 1
    return Heatmap(rgb, drop / np.maximum(covered, 1), str(model.classes_[k]), float(probabilities[0, k]), "occlusion")


def feature_map_grid(model, image, layer: str | None) -> tuple[np.ndarray, str]:
    """(the STRONGEST channels (by mean activation) of `layer`'s output for the image, (k, H, W); the
    layer's name). `layer` None: the last feature map (the pooled one)."""
    import torch

    extractor, backbone = first_backbone(model)
    crop = torch.from_numpy(extractor.preprocessing.transform()(image)).unsqueeze(0)
    modules = layers(extractor, backbone, layer)
    captured = []
    with torch.inference_mode():
        if layer is None:
            from featurize import last_feature_map

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
        raise CnnfeatError(f"--feature-maps: {layer} of {backbone.name} gives no (channels, height, width) map")
    maps = maps[0].float().numpy()
    return maps[np.argsort(-maps.mean(axis=(1, 2)))[:STRONGEST]], layer


def layers(extractor, backbone, layer: str | None) -> dict:
    """The trunk's modules by name; a clear error when `layer` is not one of them."""
    modules = dict(extractor.trunk.named_modules())
    if layer is not None and layer not in modules:
        shown = ", ".join(name for name, _ in extractor.trunk.named_children())
        raise CnnfeatError(
            f"--feature-maps {layer}: {backbone.name} has no such layer (its top-level ones: {shown}; "
            f"deeper ones as 'layer4.1', '_blocks.15')"
        )
    return modules


def first_layer_filters(model) -> tuple[np.ndarray, str]:
    """(the first convolution's kernels on the RGB input as (k, h, w, 3) images in [0, 1], its name)."""
    from torch import nn

    extractor, backbone = first_backbone(model)
    name, conv = next(
        ((n, m) for n, m in extractor.trunk.named_modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3),
        (None, None),
    )
    if conv is None:
        raise CnnfeatError(f"--filters: {backbone.name} has no convolution on the RGB input")
    kernels = conv.weight.detach().float().numpy().transpose(0, 2, 3, 1)
    low = kernels.min(axis=(1, 2, 3), keepdims=True)
    span = kernels.max(axis=(1, 2, 3), keepdims=True) - low
    return (kernels - low) / np.where(span > 0, span, 1), f"{backbone.name} {name}"


def first_backbone(model):
    """(the torch feature extractor, the registry's Backbone) of the model's (first) backbone."""
    source = model.sources()[0]
    return source.network(), source.record()[0]


def class_index(model, class_name, probabilities) -> int:
    return int(np.argmax(probabilities)) if class_name is None else model.classes_.tolist().index(class_name)
