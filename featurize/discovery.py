"""Finding a dataset's labelled images (three layouts), and each file's identity (size, mtime)."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.errors import DataError
from common.names import safe_name

from .remote import is_url
from .sources import ImageSource

# torchvision's IMG_EXTENSIONS, plus GIF (PIL decodes its first frame).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
MISSING_FILE = (-1, -1)  # identity of a listed file that does not exist


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
    source: str = ""  # what --data named, resolved: the folder, or the list file (of a list-file layout)
    reader: ImageSource | None = None  # where the bytes are read from (None: files under `root`)
    identities: np.ndarray | None = None  # (N, 2) int64, when listing gave them (objects, shards)
    notes: list[str] = field(default_factory=list)  # what discovery has to say (a truncated shard)

    def __post_init__(self):
        if self.reader is None:
            self.reader = ImageSource(str(self.root))

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


HASHED = re.compile(r"(.+)-[0-9a-f]{8}")


def display_name(dataset: str) -> str:
    """A dataset's name for a title: its readable part, without the `-<8 hex>` of where the data is
    (that stays in file names, which it keeps apart); a name without that end, as it is."""
    match = HASHED.fullmatch(dataset)
    return match.group(1) if match else dataset


def check_dataset_name(name: str) -> str:
    """An `extract --name`, refused (one line) unless something of it can name a file."""
    if not re.sub(r"[\W_]", "", name):  # a letter or digit, of any script
        raise DataError(
            f"--name {name!r}: nothing in it can name a file; give one with letters or digits "
            "(and . _ + -; anything else becomes _)"
        )
    return name


def _sorted_labels(names) -> list[str]:
    names = set(names)
    if all(n.lstrip("-").isdigit() for n in names):  # "10" after "9", as a person expects
        return sorted(names, key=int)
    return sorted(names)


def discover(data: str | os.PathLike, name: str | None = None, storage_options: tuple = ()) -> ImageList:
    """Index a dataset. `data` is one of: split folders (train/ val/ [test/], each of class
    folders); class folders with no split; a text file of `path label` lines (paths relative to
    the file's folder, split taken from its name); or a folder holding train.txt / val.txt /
    test.txt lists - each on this machine or at a URL of an object store (featurize.remote); or
    WebDataset shards (featurize.shards); or a CSV/Parquet manifest (featurize.manifest).
    `name`: the readable part of the dataset's name instead of the folder's (or the list file's);
    its hash is the same either way. `storage_options`: (key, value) pairs for the store's client."""
    if name is not None:
        check_dataset_name(name)
    images = _discover_anywhere(os.fspath(data), tuple(storage_options))
    if name is not None:  # the same hash (of where the data is), after another readable part
        images.name = f"{safe_name(name)}-{images.name.rsplit('-', 1)[1]}"
    return images


def _discover_anywhere(text: str, storage_options: tuple) -> ImageList:
    from . import manifest, remote_folders, shards

    if shards.is_shards(text):
        return shards.discover_shards(text, storage_options)
    if manifest.is_manifest(text):
        return manifest.discover_manifest(text, storage_options)
    if is_url(text):
        return remote_folders.discover_url(text, storage_options)
    data = Path(text).expanduser()
    if not data.exists():
        raise DataError(f"--data {data}: no such file or folder")
    images = _discover(data)
    images.source = str(data.resolve())
    return images


def _discover(data: Path) -> ImageList:
    """The ImageList of an existing `data` (see discover)."""
    if data.is_file():
        if data.suffix.lower() in IMAGE_EXTENSIONS:
            raise DataError(
                f"--data {data}: an image; --data takes a folder of class folders (or of train/ and "
                "val/ folders of them), or a text file of 'path label' lines"
            )
        return _from_lists(data.parent, [data])
    split_folders = _split_folders(data)
    if split_folders:
        return _from_folders(data, "split-folders", split_folders)
    split_lists = [data / f"{s}.txt" for s in SPLITS if (data / f"{s}.txt").is_file()]
    if split_lists:  # explicit lists win over the folders their paths point into
        return _from_lists(data, split_lists)
    _refuse_a_dataset_one_folder_down(data)
    return _from_folders(data, "class-folders", {"": data})


def _refuse_a_dataset_one_folder_down(data: Path) -> None:
    """`--data data` where data/ holds one folder holding split folders (`demo-data`'s data/digits)
    would be read as one class: nothing a classifier can learn, so the likely meaning is said."""
    folders = _class_folders(data)
    splits = _split_folders(folders[0]) if len(folders) == 1 else {}
    if splits:
        held = "/, ".join(p.name for p in splits.values())
        raise DataError(
            f"--data {data}: its one folder {folders[0].name}/ holds {held}/, a dataset one level down "
            f"(read as it is, {folders[0].name} would be its only class). Did you mean --data {folders[0]}?"
        )


def _split_folders(data: Path) -> dict[str, Path]:
    """The split folders of `data` (train/, val/ or valid/ or validation/, test/), by split, in that order."""
    found = {SPLIT_ALIASES[p.name.lower()]: p for p in _class_folders(data) if p.name.lower() in SPLIT_ALIASES}
    return {split: found[split] for split in SPLITS if split in found}


def _from_folders(data: Path, layout: str, split_folders: dict[str, Path]) -> ImageList:
    """The images of class folders, inside each of `split_folders` (split -> folder); one class
    list across the splits (a class with no image anywhere is left out)."""
    per_split = {
        split: {c.name: find_images(c, data) for c in _class_folders(folder)} for split, folder in split_folders.items()
    }
    root = data.resolve()
    return from_class_lists(per_split, ImageList(root, dataset_name(root.name, root), layout, []), data)


def from_class_lists(per_split: dict[str, dict[str, list[str]]], images: ImageList, where) -> ImageList:
    """`images` (empty) filled from split -> class -> image paths; one class list across the splits (a
    class with no image anywhere is left out)."""
    images.class_names = _sorted_labels(c for classes in per_split.values() for c, files in classes.items() if files)
    for split, classes in per_split.items():
        for label, class_name in enumerate(images.class_names):
            for path in classes.get(class_name, []):
                images.add(path, label, split)
    if not images.paths:
        raise DataError(
            f"--data {where}: no images found; expected one folder per class (or train/ "
            f"and val/ folders of them) holding {', '.join(IMAGE_EXTENSIONS)} files, "
            f"or a text file of 'path label' lines"
        )
    return images


def _from_lists(root: Path, list_files: list[Path]) -> ImageList:
    rows = [row for list_file in list_files for row in _list_rows(list_file)]  # (path, label, split)
    if not rows:
        raise DataError(f"--data {', '.join(map(str, list_files))}: no 'path label' lines")
    images = ImageList(root.resolve(), _list_dataset_name(root.resolve(), list_files), "list-file", [])
    return from_rows(rows, images)


def from_rows(rows: list[tuple[str, str, str]], images: ImageList) -> ImageList:
    """`images` (empty) filled from (path, label name, split) rows."""
    images.class_names = _sorted_labels(label for _, label, _ in rows)
    index = {c: i for i, c in enumerate(images.class_names)}
    for path, label, split in rows:
        images.add(path, index[label], split)
    return images


def _list_rows(list_file: Path):
    """(path, label, split) of each `path label` line of a list file; its split is taken from its name."""
    with open(list_file, encoding="utf-8", errors="replace") as handle:
        yield from list_rows(handle, list_file.name, str(list_file.parent.resolve()))


def list_rows(lines, name: str, folder: str):
    """(path, label, split) of each `path label` line of the list file `name` in `folder`; its split is
    taken from its name."""
    split = SPLIT_ALIASES.get(name.rsplit(".", 1)[0].lower(), "")
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise DataError(f"{folder}/{name}:{number}: expected 'path label', got {line!r}")
        yield _inside(parts[0], f"{folder}/{name}", number, folder), parts[1], split


def _list_dataset_name(root: Path, list_files: list[Path]) -> str:
    """Named by the folder for split lists, by the file for one list of another name."""
    if len(list_files) > 1 or list_files[0].stem.lower() in SPLIT_ALIASES:
        readable = root.name
    else:
        readable = list_files[0].stem
    return dataset_name(readable, list_files[0].resolve() if len(list_files) == 1 else root)


def _inside(text: str, list_file: str, number: int, folder: str) -> str:
    """A list file's path, kept inside the list's folder: a shared list cannot point anywhere else."""
    path = Path(text)
    if path.is_absolute() or ".." in path.parts or is_url(text):
        raise DataError(
            f"{list_file}:{number}: {text!r} is outside the list's folder (absolute or '..'); "
            f"paths in a list file are relative to {folder}"
        )
    return path.as_posix()


def file_identity(path: Path) -> tuple[int, int]:
    """(size, mtime in ns): cheap, and changes when a file is replaced or edited."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _identity_or_missing(path: Path) -> tuple[int, int]:
    try:
        return file_identity(path)
    except OSError:
        return MISSING_FILE


def image_identities(images: ImageList) -> np.ndarray:
    """(N, 2) int64: each image's identity: as listed (objects: size, ETag; shard samples: the shard's),
    or for files (size, mtime), one stat per file, no tuple kept per row."""
    if images.identities is not None:
        return images.identities
    pairs = itertools.chain.from_iterable(_identity_or_missing(images.root / p) for p in images.paths)
    return np.fromiter(pairs, np.int64, count=2 * len(images.paths)).reshape(-1, 2)
