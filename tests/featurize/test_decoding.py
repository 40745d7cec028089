"""Decoding images to RGB: odd but valid files, the fast decoder, and the reason for each unreadable one."""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from featurize import UnreadableImage, load_image, pil_to_rgb_tensor
from tests.conftest import write_image


def _exif_rotated_jpeg(path):
    image = Image.new("RGB", (80, 40), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    image.save(path, exif=exif.tobytes())


def test_odd_but_valid_images_decode_to_rgb(tmp_path):
    base = write_image(tmp_path / "base.png", 0)
    rgb = Image.open(base)
    rgb.convert("CMYK").save(tmp_path / "cmyk.jpg")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(tmp_path / "rgba.png")
    palette = rgb.convert("P", palette=Image.ADAPTIVE)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "palette.png", transparency=0)
    rgb.save(tmp_path / "anim.gif")
    rgb.convert("L").save(tmp_path / "grey.png")
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(tmp_path / "grey16.png")
    _exif_rotated_jpeg(tmp_path / "rotated.jpg")
    for name in ("cmyk.jpg", "rgba.png", "palette.png", "anim.gif", "grey.png", "grey16.png", "rotated.jpg"):
        image = load_image(tmp_path / name)
        assert image.dtype == torch.uint8 and image.shape[0] == 3, name
    # 16-bit greyscale is scaled to 8 bits, not clipped: 32768/65535 of white is mid grey.
    assert load_image(tmp_path / "grey16.png")[:, 0, 0].tolist() == [128, 128, 128]
    assert load_image(tmp_path / "rotated.jpg").shape == (3, 80, 40)
    # The pixels of the CMYK file are the colours it was made from (JPEG loss aside).
    cmyk_error = (load_image(tmp_path / "cmyk.jpg").float() - pil_to_rgb_tensor(rgb).float()).abs().mean()
    assert cmyk_error < 8


def test_fast_decoder_agrees_with_pil(tmp_path):
    """JPEG/PNG/WebP go through torchvision's decoders: the pixels must be PIL's (JPEG: within IDCT rounding)."""
    rgb = Image.open(write_image(tmp_path / "x.png", 5, size=(120, 90)))
    for name in ("x.png", "x.jpg", "x.webp", "grey.jpg"):
        (rgb.convert("L") if name.startswith("grey") else rgb).save(tmp_path / name)
        fast = load_image(tmp_path / name).int()
        slow = pil_to_rgb_tensor(Image.open(tmp_path / name)).int()
        assert fast.shape == slow.shape and (fast - slow).abs().max() <= 2, name


def _png_claiming(width, height) -> bytes:
    """A tiny PNG whose header claims width x height pixels."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.jpg", b"", "empty file"),
        ("text.jpg", b"this is not an image at all", "not an image"),
        ("bomb.png", _png_claiming(40000, 40000), "decompression bomb"),
        ("truncated.jpg", None, "truncated"),
    ],
)
def test_unreadable_images_say_why(tmp_path, name, content, reason):
    path = tmp_path / name
    if content is None:
        buffer = io.BytesIO()
        Image.open(write_image(tmp_path / "ok.png", 1, size=(256, 256))).save(buffer, "JPEG")
        content = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    path.write_bytes(content)
    with pytest.raises(UnreadableImage, match=reason):
        load_image(path)
