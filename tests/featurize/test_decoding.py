"""Decoding images to RGB: odd but valid files, the crop against torchvision's, reduced-size JPEG
decoding against full-size, and the reason for each unreadable one."""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from featurize import UnreadableImage, crop_transform, decode_pil, load_image, pil_to_rgb_tensor
from tests.conftest import write_image

REDUCED_COSINE = 0.99  # the bound chosen from benchmarks/reduced_decoding.py


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


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(500, 375), (333, 500), (257, 256), (1000, 260)])
def test_the_crop_is_torchvisions_resize_and_centre_crop(tmp_path, interpolation, size):
    """ResizeCrop resamples only the crop's box with PIL: the pixels of torchvision's antialiased
    Resize of the whole image then CenterCrop (an independent computation), within rounding."""
    from torchvision.transforms import v2

    image = Image.open(write_image(tmp_path / "x.png", 5, size=size)).convert("RGB")
    ours = crop_transform(256, 224, interpolation)(image)
    assert ours.shape == (3, 224, 224) and ours.dtype == np.uint8
    theirs = v2.Compose(
        [v2.Resize(256, interpolation=v2.InterpolationMode(interpolation), antialias=True), v2.CenterCrop(224)]
    )(pil_to_rgb_tensor(image))
    difference = np.abs(ours.astype(int) - theirs.numpy().astype(int))
    assert difference.mean() < 0.25 and difference.max() <= 3, (difference.mean(), difference.max())


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
        ("bomb-1x-2x.png", _png_claiming(15000, 15000), "decompression bomb"),  # PIL only warns for these
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


def test_a_large_jpeg_is_decoded_reduced_and_its_vector_stays_close(hymenoptera, tmp_path, graph_cache):
    """extract decodes a JPEG >= 4x the resize target at a reduced DCT scale (sides >= 2x the
    target): each vector stays within cosine REDUCED_COSINE of the full-size decode's, on real
    photos upscaled to camera size (benchmarks/reduced_decoding.py measures the heads too)."""
    from featurize import extract, get_backbone, load_embedder, load_features

    for k, photo in enumerate(sorted(hymenoptera.rglob("*.jpg"))[::40]):
        with Image.open(photo) as image:
            target = tmp_path / "data" / photo.parent.name / f"{k}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            image.convert("RGB").resize((image.width * 4, image.height * 4), Image.Resampling.BICUBIC).save(target)
    features = load_features(extract(data=tmp_path / "data", out=tmp_path / "out", progress=False).store)
    embedder = load_embedder(
        get_backbone(features.config["backbone"]),
        None,
        "cpu",
        "onnxruntime",
        features.fingerprint,
        graph_cache,
    )
    transform = embedder.preprocessing.transform()
    cosines = []
    for path, vector in zip(features.paths, features.X):
        data = (tmp_path / "data" / path).read_bytes()
        full, reduced = decode_pil(data), decode_pil(data, transform.resize_size)
        assert reduced.width <= full.width // 2 and min(reduced.size) >= 2 * transform.resize_size
        np.testing.assert_allclose(embedder.embed(transform(reduced)[None])[0], vector, rtol=1e-5, atol=1e-5)
        full_vector = embedder.embed(transform(full)[None])[0]
        cosines.append(np.dot(vector, full_vector) / np.linalg.norm(vector) / np.linalg.norm(full_vector))
    print(f"cosine to the full-size decode's vector: min {min(cosines):.5f}, mean {np.mean(cosines):.5f}")
    assert len(cosines) >= 9 and min(cosines) >= REDUCED_COSINE


def test_small_jpegs_and_other_formats_decode_at_full_size(tmp_path):
    small = Image.open(write_image(tmp_path / "x.png", 3, size=(1000, 700)))  # < 4 x 256 on its shorter side
    small.save(tmp_path / "x.jpg")
    large = small.resize((2100, 1400))
    large.save(tmp_path / "large.png")
    assert decode_pil((tmp_path / "x.jpg").read_bytes(), 256).size == (1000, 700)
    assert decode_pil((tmp_path / "large.png").read_bytes(), 256).size == (2100, 1400)


def test_the_crop_takes_any_pil_mode_and_refuses_what_it_cannot_do(tmp_path):
    rgb = Image.open(write_image(tmp_path / "x.png", 4, size=(90, 70))).convert("RGB")
    crop = crop_transform(48, 40, "bicubic")
    for mode in ("L", "RGBA", "P"):
        converted = rgb.convert(mode)
        np.testing.assert_array_equal(crop(converted), crop(converted.convert("RGB")))
    with pytest.raises(ValueError, match="interpolation 'nearest'"):
        crop_transform(48, 40, "nearest")
    with pytest.raises(ValueError, match="the crop must fit"):
        crop_transform(32, 40, "bilinear")
