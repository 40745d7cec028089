"""Decoding image files robustly to upright 8-bit RGB tensors; the reason, never a crash, for one that cannot be."""

from __future__ import annotations

import io
import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np


class UnreadableImage(Exception):
    """Why one image was skipped; the run goes on."""


# Formats and modes torchvision's decoders (libjpeg-turbo, libpng, libwebp) turn into 8-bit RGB
# themselves: more than twice as fast as PIL here. Everything else (CMYK, 16-bit, GIF, TIFF,
# BMP...) goes through PIL.
_FAST_FORMATS = {"JPEG": {"RGB", "L"}, "PNG": {"RGB", "RGBA", "L", "LA"}, "WEBP": {"RGB", "RGBA"}}
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I", "F")  # 16-bit (or wider) greyscale, integer or float


def load_image(path: str | os.PathLike):
    """Decode one image file into an upright 8-bit RGB uint8 tensor (3, H, W).

    Raises UnreadableImage with a short reason for empty, foreign, truncated or oversized files.
    """
    with _reasons():
        data = Path(path).read_bytes()
    return decode_image_bytes(data)


def decode_image_bytes(data: bytes):
    """An image file's bytes (a file, an upload) -> the uint8 RGB tensor (3, H, W), as load_image."""
    import torch
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_image

    with _reasons():
        if not data:
            raise UnreadableImage("empty file")
        with Image.open(io.BytesIO(data)) as image:  # reads the header: format, mode, size (bomb check)
            if image.mode in _FAST_FORMATS.get(image.format, ()):
                try:
                    return decode_image(
                        torch.frombuffer(bytearray(data), dtype=torch.uint8),
                        mode=ImageReadMode.RGB,
                        apply_exif_orientation=True,
                    )
                except RuntimeError as error:
                    raise OSError(str(error).splitlines()[0].rsplit(", ", 1)[-1]) from None
            return _pil_to_tensor(_decoded_pil(image))


def pil_to_rgb_tensor(image):
    """A PIL image from the caller's own code -> the same uint8 RGB tensor load_image gives."""
    from PIL import ImageOps

    return _pil_to_tensor(_to_rgb(ImageOps.exif_transpose(image)))


def _pil_to_tensor(image):
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(image)


def _decoded_pil(image):
    from PIL import ImageOps

    image.load()
    return _to_rgb(ImageOps.exif_transpose(image))


@contextmanager
def _reasons():
    """Turn the many ways decoding fails into UnreadableImage with a reason a person understands."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # PIL only warns between 1x and 2x its pixel limit; we refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except UnreadableImage:
        raise
    except FileNotFoundError:
        raise UnreadableImage("file not found") from None
    except UnidentifiedImageError:
        raise UnreadableImage("not an image PIL can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UnreadableImage(f"too many pixels, possible decompression bomb ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data
        raise UnreadableImage(f"corrupt or truncated image ({error})") from None


def _to_rgb(image):
    from PIL import Image

    if image.mode in WIDE_MODES:
        # 16-bit (or wider) greyscale: scale to 8 bits; PIL's convert() would clip at 255 instead.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if values.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
        image = Image.fromarray(np.clip(values * (255.0 / top) + 0.5, 0, 255).astype(np.uint8), "L")
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # the way PIL asks palette-with-transparency to go
    return image.convert("RGB")


def decode_upload(data: bytes, min_side: int, max_pixels: int):
    """An uploaded file's bytes -> the uint8 RGB tensor (3, H, W), with its memory bounded (`serve`).

    A JPEG at least 4 x `min_side` on both sides is decoded at a reduced DCT scale (1/2, 1/4 or 1/8:
    libjpeg's draft mode) that keeps both sides >= 2 x `min_side`: the resize of the shorter side to
    `min_side` that follows then lands within a few grey levels of the full decode's (0.8 on
    average, 4.5 at worst, on upscaled hymenoptera photos; decoding to just 1 x gave 2 and 10).
    An image that would still decode to more than `max_pixels` is refused from its header, before
    its pixels are decoded; 16-bit and float images count twice (their conversion to 8 bits, in
    float64, takes nearly twice the memory per pixel of the costliest 8-bit path). Everything else
    decodes exactly as decode_image_bytes does."""
    from PIL import Image

    with _reasons():
        if not data:
            raise UnreadableImage("empty file")
        with Image.open(io.BytesIO(data)) as image:  # the header only: format, mode, size
            full_size = image.size
            if image.format in ("JPEG", "MPO"):
                image.draft(image.mode, (2 * min_side, 2 * min_side))  # a no-op below 4 x min_side
            width, height = image.size
            cost = width * height * (2 if image.mode in WIDE_MODES else 1)
            if cost > max_pixels:
                raise UnreadableImage(
                    f"{width}x{height} image: {cost / 1e6:.1f} megapixels to decode"
                    f"{' (16-bit or float: 2 per pixel)' if cost > width * height else ''}, "
                    f"over this server's limit of {max_pixels / 1e6:g} megapixels (--max-pixels)"
                )
            if image.size != full_size:
                return _pil_to_tensor(_decoded_pil(image))
    return decode_image_bytes(data)
