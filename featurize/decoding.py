"""Decoding image files robustly to upright 8-bit RGB images; the reason, never a crash, for one that cannot be.

Everything decodes through PIL (no torch: a few images decode without importing it). A JPEG much
larger than the network needs is decoded straight to a reduced size (decode_pil's `min_side`).
"""

from __future__ import annotations

import io
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np


class UnreadableImage(Exception):
    """Why one image was skipped; the run goes on."""


WIDE_MODES = ("I;16", "I;16B", "I;16L", "I", "F")  # 16-bit (or wider) greyscale, integer or float
# A reduced-size JPEG keeps both sides >= DRAFT_MARGIN x the resize target, so the resize that follows
# still averages several decoded pixels into each of its own (see benchmarks/reduced_decoding.py).
DRAFT_MARGIN = 2


def load_image(path: str | os.PathLike):
    """Decode one image file, at full size, into an upright 8-bit RGB uint8 tensor (3, H, W).

    Raises UnreadableImage with a short reason for empty, foreign, truncated or oversized files.
    """
    import torch

    return torch.from_numpy(chw_array(read_image(path)))


def read_image(path: str | os.PathLike, min_side: int | None = None):
    """An image file -> its upright RGB PIL image (decode_pil), reduced as `min_side` allows."""
    with _reasons():
        data = Path(path).read_bytes()
    return decode_pil(data, min_side)


def decode_pil(data: bytes, min_side: int | None = None, max_pixels: int | None = None):
    """An image file's bytes -> the upright 8-bit RGB PIL image, loaded.

    `min_side`: a JPEG at least 2 x DRAFT_MARGIN x `min_side` on both sides is decoded at a reduced
    DCT scale (1/2, 1/4 or 1/8: libjpeg's draft mode, several times faster) that keeps both sides
    >= DRAFT_MARGIN x `min_side`; other formats and smaller JPEGs decode at full size.
    `max_pixels`: an image that would still decode to more pixels is refused from its header, before
    its pixels are decoded (`serve`); 16-bit and float images count twice (their conversion to 8
    bits, in float64, takes nearly twice the memory per pixel of the costliest 8-bit path).
    Raises UnreadableImage with a short reason for empty, foreign, truncated or oversized data.
    """
    from PIL import Image

    with _reasons():
        if not data:
            raise UnreadableImage("empty file")
        image = Image.open(io.BytesIO(data))  # reads the header: format, mode, size (bomb check)
        if image.width * image.height > Image.MAX_IMAGE_PIXELS:  # PIL only warns below 2x its limit
            raise UnreadableImage(f"too many pixels, possible decompression bomb ({image.width}x{image.height})")
        if min_side and image.format in ("JPEG", "MPO"):
            image.draft(image.mode, (DRAFT_MARGIN * min_side,) * 2)  # a no-op when too small
        if max_pixels:
            _check_pixels(image, max_pixels)
        image.load()
        return _to_rgb(_upright(image))


def _upright(image):
    """`image` turned as its EXIF orientation says (itself when it says nothing: no copy)."""
    from PIL import ImageOps

    return ImageOps.exif_transpose(image) if image.getexif().get(0x0112, 1) != 1 else image


def _check_pixels(image, max_pixels: int) -> None:
    width, height = image.size
    cost = width * height * (2 if image.mode in WIDE_MODES else 1)
    if cost > max_pixels:
        raise UnreadableImage(
            f"{width}x{height} image: {cost / 1e6:.1f} megapixels to decode"
            f"{' (16-bit or float: 2 per pixel)' if cost > width * height else ''}, "
            f"over this server's limit of {max_pixels / 1e6:g} megapixels (--max-pixels)"
        )


def rgb_image(image):
    """A PIL image from the caller's own code -> upright 8-bit RGB, as decode_pil gives."""
    return _to_rgb(_upright(image))


def pil_to_rgb_tensor(image):
    """A PIL image from the caller's own code -> the uint8 RGB tensor (3, H, W) load_image gives."""
    import torch

    return torch.from_numpy(chw_array(rgb_image(image)))


def chw_array(image) -> np.ndarray:
    """An RGB PIL image -> a contiguous uint8 array (3, H, W)."""
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


@contextmanager
def _reasons():
    """Turn the many ways decoding fails into UnreadableImage with a reason a person understands."""
    from PIL import Image, UnidentifiedImageError

    try:
        yield
    except UnreadableImage:
        raise
    except FileNotFoundError:
        raise UnreadableImage("file not found") from None
    except UnidentifiedImageError:
        raise UnreadableImage("not an image PIL can read") from None
    except Image.DecompressionBombError as error:
        raise UnreadableImage(f"too many pixels, possible decompression bomb ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data
        raise UnreadableImage(f"corrupt or truncated image ({error})") from None


def _to_rgb(image):
    from PIL import Image

    if image.mode == "RGB":
        return image
    if image.mode in WIDE_MODES:
        # 16-bit (or wider) greyscale: scale to 8 bits; PIL's convert() would clip at 255 instead.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if values.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
        image = Image.fromarray(np.clip(values * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L")
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # the way PIL asks palette-with-transparency to go
    return image.convert("RGB")
