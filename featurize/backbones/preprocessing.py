"""What a backbone's weights expect of an image: resize, centre-crop, mean/std, interpolation."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side, centre-crop, then normalise: the numbers a weights file expects."""

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str  # a torchvision InterpolationMode value: "bilinear", "bicubic"

    def as_dict(self) -> dict:
        return asdict(self)

    def transform(self):
        """uint8 RGB tensor (3,H,W) -> resized, centre-cropped uint8 tensor; the model normalises."""
        return crop_transform(self.resize_size, self.crop_size, self.interpolation)


def crop_transform(resize_size: int, crop_size: int, interpolation: str):
    """Resize the shorter side to `resize_size`, centre-crop `crop_size`: uint8 tensors in and out.

    torchvision's antialiased uint8 resize on tensors: about 4x faster than PIL's here, and within
    a few grey levels of it (tests/featurize/test_extract.py states the tolerance).
    """
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.Resize(resize_size, interpolation=v2.InterpolationMode(interpolation), antialias=True),
            v2.CenterCrop(crop_size),
        ]
    )
