"""Finding labelled images (three layouts) and decoding them robustly to RGB."""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.errors import DataError
from common.names import safe_name

# torchvision's IMG_EXTENSIONS, plus GIF (PIL decodes its first frame).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test"}


@dataclass
class ImageList:
    """Every image of a dataset: paths relative to `root`, integer labels into `class_names`."""

    root: Path
    name: str  # names the feature file: readable, plus a hash of where the data is (see dataset_name)
    layout: str  # "split-folders", "class-folders" or "list-file"
    class_names: list[str]
    paths: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)  # "" where the data has no split

    def add(self, path: str, label: int, split: str) -> None:
        self.paths.append(path)
        self.labels.append(label)
        self.splits.append(split)

    def __len__(self) -> int:
        return len(self.paths)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def find_images(folder: str | os.PathLike, relative_to: str | os.PathLike | None = None) -> list[str]:
    """Image files under `folder`, recursively, sorted; hidden files and folders skipped. Paths are
    strings (a million Path objects cost ~300 MB): whole, or relative to `relative_to` (a folder
    holding `folder`) with "/" between parts.

    Symlinked folders are followed, each real folder once: a link loop cannot hang the walk."""
    found, seen, top = [], set(), os.fspath(folder)
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        real = os.stat(dirpath)
        if (real.st_dev, real.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((real.st_dev, real.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if relative_to is not None:
            prefix = os.path.relpath(dirpath, relative_to).replace(os.sep, "/") + "/"
        else:
            prefix = os.path.join(dirpath, "")
        found.extend(prefix + f for f in sorted(filenames) if _is_image(f))
    return found


def dataset_name(readable: str, source: Path) -> str:
    """`<readable>-<8 hex>`: two datasets both called data/ get two feature files, not one."""
    return f"{safe_name(readable)}-{hashlib.sha256(os.fsencode(source)).hexdigest()[:8]}"  # any name, UTF-8 or not


def _sorted_labels(names) -> list[str]:
    names = set(names)
    if all(n.lstrip("-").isdigit() for n in names):  # "10" after "9", as a person expects
        return sorted(names, key=int)
    return sorted(names)


def discover(data: str | os.PathLike) -> ImageList:
    """Index a dataset. `data` is one of: split folders (train/ val/ [test/], each of class
    folders); class folders with no split; a text file of `path label` lines (paths relative to
    the file's folder, split taken from its name); or a folder holding train.txt / val.txt /
    test.txt lists."""
    data = Path(data).expanduser()
    if not data.exists():
        raise DataError(f"--data {data}: no such file or folder")
    if data.is_file():
        return _from_lists(data.parent, [data])
    folders = _class_folders(data)
    split_folders = {SPLIT_ALIASES[p.name.lower()]: p for p in folders if p.name.lower() in SPLIT_ALIASES}
    split_lists = [data / f"{s}.txt" for s in ("train", "val", "test") if (data / f"{s}.txt").is_file()]
    if split_folders:
        per_split = {split: {c.name: find_images(c, data) for c in _class_folders(split_folders[split])}
                     for split in ("train", "val", "test") if split in split_folders}
        layout = "split-folders"
    elif split_lists:  # explicit lists win over the folders their paths point into
        return _from_lists(data, split_lists)
    else:
        per_split = {"": {c.name: find_images(c, data) for c in folders}}
        layout = "class-folders"
    class_names = _sorted_labels(c for classes in per_split.values() for c, files in classes.items() if files)
    images = ImageList(root=data.resolve(), name=dataset_name(data.resolve().name, data.resolve()), layout=layout,
                       class_names=class_names)
    for split, classes in per_split.items():
        for label, class_name in enumerate(class_names):
            for path in classes.get(class_name, []):
                images.add(path, label, split)
    if not images.paths:
        raise DataError(f"--data {data}: no images found; expected one folder per class (or train/ "
                        f"and val/ folders of them) holding {', '.join(IMAGE_EXTENSIONS)} files, "
                        f"or a text file of 'path label' lines")
    return images


def _from_lists(root: Path, list_files: list[Path]) -> ImageList:
    rows = []  # (path, label, split)
    for list_file in list_files:
        split = SPLIT_ALIASES.get(list_file.stem.lower(), "")
        with open(list_file, encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                parts = line.rsplit(maxsplit=1)
                if len(parts) != 2:
                    raise DataError(f"{list_file}:{number}: expected 'path label', got {line!r}")
                rows.append((_inside(parts[0], list_file, number), parts[1], split))
    if not rows:
        raise DataError(f"--data {', '.join(map(str, list_files))}: no 'path label' lines")
    class_names = _sorted_labels(label for _, label, _ in rows)
    index = {c: i for i, c in enumerate(class_names)}
    root = root.resolve()
    readable = root.name if len(list_files) > 1 or list_files[0].stem.lower() in SPLIT_ALIASES else list_files[0].stem
    name = dataset_name(readable, list_files[0].resolve() if len(list_files) == 1 else root)
    images = ImageList(root=root, name=name, layout="list-file", class_names=class_names)
    for path, label, split in rows:
        images.add(path, index[label], split)
    return images


def _inside(text: str, list_file: Path, number: int) -> str:
    """A list file's path, kept inside the list's folder: a shared list cannot point anywhere else."""
    path = Path(text)
    if path.is_absolute() or ".." in path.parts:
        raise DataError(f"{list_file}:{number}: {text!r} is outside the list's folder (absolute or '..'); "
                        f"paths in a list file are relative to {list_file.parent.resolve()}")
    return path.as_posix()


def file_identity(path: Path) -> tuple[int, int]:
    """(size, mtime in ns): cheap, and changes when a file is replaced or edited."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


# -- decoding ------------------------------------------------------------------------------------

class UnreadableImage(Exception):
    """Why one image was skipped; the run goes on."""


# Formats and modes torchvision's decoders (libjpeg-turbo, libpng, libwebp) turn into 8-bit RGB
# themselves: more than twice as fast as PIL here. Everything else (CMYK, 16-bit, GIF, TIFF,
# BMP...) goes through PIL.
_FAST_FORMATS = {"JPEG": {"RGB", "L"}, "PNG": {"RGB", "RGBA", "L", "LA"}, "WEBP": {"RGB", "RGBA"}}


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
                    return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                        mode=ImageReadMode.RGB, apply_exif_orientation=True)
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

    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
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
            cost = width * height * (2 if image.mode in ("I;16", "I;16B", "I;16L", "I", "F") else 1)
            if cost > max_pixels:
                raise UnreadableImage(f"{width}x{height} image: {cost / 1e6:.1f} megapixels to decode"
                                      f"{' (16-bit or float: 2 per pixel)' if cost > width * height else ''}, "
                                      f"over this server's limit of {max_pixels / 1e6:g} megapixels (--max-pixels)")
            if image.size != full_size:
                return _pil_to_tensor(_decoded_pil(image))
    return decode_image_bytes(data)
