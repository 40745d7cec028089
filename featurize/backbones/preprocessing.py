"""What a backbone's weights expect of an image: resize, centre-crop, mean/std, interpolation."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


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

    def transform(self) -> ResizeCrop:
        """The resize and centre crop: a decoded image (or a file) -> uint8 array (3, crop, crop); the
        model normalises."""
        return ResizeCrop(self.resize_size, self.crop_size, self.interpolation)


def crop_transform(resize_size: int, crop_size: int, interpolation: str) -> ResizeCrop:
    return ResizeCrop(resize_size, crop_size, interpolation)


FILTERS = {"bilinear": "BILINEAR", "bicubic": "BICUBIC"}  # torchvision's InterpolationMode values -> PIL's


@dataclass(frozen=True)
class ResizeCrop:
    """Resize the shorter side to `resize_size` (antialiased, PIL), centre-crop `crop_size`.

    Done with PIL, without torch, so a few images embed without importing it. The sizes and crop
    offsets are torchvision's (Resize then CenterCrop); only the crop's pixels are resampled (PIL's
    resize of a box: the same filter taps as resizing the whole image, fewer of them). Files are
    decoded at a reduced size where they are large enough (featurize.decoding.decode_pil)."""

    resize_size: int
    crop_size: int
    interpolation: str = "bilinear"

    def __post_init__(self):
        if self.interpolation not in FILTERS:
            raise ValueError(f"interpolation {self.interpolation!r}: not one of {', '.join(FILTERS)}")
        if not 0 < self.crop_size <= self.resize_size:
            raise ValueError(f"a crop of {self.crop_size} from a resize to {self.resize_size}: the crop must fit")

    def __call__(self, image) -> np.ndarray:
        """A PIL image (any mode: made upright RGB), or a uint8 RGB (3,H,W) array or tensor -> uint8
        array (3, crop, crop)."""
        from PIL import Image

        from ..decoding import rgb_image

        if isinstance(image, Image.Image):
            return self._crop(rgb_image(image))
        return self._crop(Image.fromarray(np.asarray(image, dtype=np.uint8).transpose(1, 2, 0), "RGB"))

    def _crop(self, image) -> np.ndarray:
        """An upright RGB PIL image (as decoding gives) -> the crop."""
        from PIL import Image

        from ..decoding import chw_array

        resample = getattr(Image.Resampling, FILTERS[self.interpolation])
        return chw_array(image.resize((self.crop_size, self.crop_size), resample, box=self.source_box(*image.size)))

    def source_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The crop, in the source image's pixels: torchvision's resized size (shorter side ->
        resize_size, the other floored) and its centre crop's rounded offsets."""
        short, long = sorted((width, height))
        resized_long = int(self.resize_size * long / short)
        new_w, new_h = (self.resize_size, resized_long) if width <= height else (resized_long, self.resize_size)
        left = int(round((new_w - self.crop_size) / 2.0))
        top = int(round((new_h - self.crop_size) / 2.0))
        scale_x, scale_y = width / new_w, height / new_h
        return (left * scale_x, top * scale_y, (left + self.crop_size) * scale_x, (top + self.crop_size) * scale_y)

    def from_file(self, path) -> np.ndarray:
        from ..decoding import read_image

        return self._crop(read_image(path, self.resize_size))  # already upright RGB

    def from_bytes(self, data: bytes, max_pixels: int | None = None) -> np.ndarray:
        from ..decoding import decode_pil

        return self._crop(decode_pil(data, self.resize_size, max_pixels))
