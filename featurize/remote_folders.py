"""A dataset under a URL of an object store (`--data s3://bucket/prefix/`), in the layouts of a local
folder: split folders of class folders, class folders, or train.txt/val.txt/test.txt lists (or one
list file's URL). One listing, streamed directory by directory, gives every object's path and identity
(size, ETag): an up-to-date re-run lists and reads no object."""

from __future__ import annotations

import numpy as np

from common.errors import DataError

from .discovery import (
    MISSING_FILE,
    SPLIT_ALIASES,
    SPLITS,
    ImageList,
    _is_image,
    dataset_name,
    from_class_lists,
    from_rows,
    list_rows,
)
from .remote import Remote, public_url
from .sources import ImageSource


def discover_url(url: str, storage_options: tuple = ()) -> ImageList:
    remote = Remote.of(url, storage_options)
    is_file = remote.check(url)["type"] == "file"
    url = url.rstrip("/")
    if is_file:  # one list file
        if not url.lower().endswith(".txt"):
            raise DataError(f"--data {public_url(url)}: one object; --data takes a folder or a list file (.txt)")
        folder, _, name = url.rpartition("/")
        images = _from_remote_lists(remote, folder, [name])
        images.name, images.source = dataset_name(name.rsplit(".", 1)[0], public_url(url)), public_url(url)
        listed = _listing(remote, folder)
    else:
        listed = _listing(remote, url)
        images = _from_folder_listing(remote, url, listed)
    images.identities = np.asarray([listed.get(p, MISSING_FILE) for p in images.paths], np.int64).reshape(-1, 2)
    return images


def _listing(remote: Remote, url: str) -> dict[str, tuple[int, int]]:
    """Every object's path under `url` -> its identity (size, ETag)."""
    return {path: (size, tag) for path, size, tag in remote.walk(url)}


def _from_folder_listing(remote: Remote, url: str, listed: dict) -> ImageList:
    """The layouts in the order a local folder's are tried: split folders, split lists, class folders."""
    per_split = _per_split(listed)
    if per_split and "" not in per_split:
        return from_class_lists(per_split, _empty(remote, url, "split-folders"), public_url(url))
    top_lists = [f"{s}.txt" for s in SPLITS if f"{s}.txt" in listed]
    if top_lists:  # explicit lists win over the folders their paths point into
        return _from_remote_lists(remote, url, top_lists)
    if len(per_split.get("", {})) == 1:
        _refuse_one_folder_down(url, per_split[""])
    return from_class_lists(per_split, _empty(remote, url, "class-folders"), public_url(url))


def _refuse_one_folder_down(url: str, classes: dict[str, list[str]]) -> None:
    """One class folder holding split folders: a dataset one level down (as discovery says of a folder)."""
    ((name, paths),) = classes.items()
    if any(p.split("/")[1].lower() in SPLIT_ALIASES for p in paths if p.count("/") >= 3):
        raise DataError(
            f"--data {public_url(url)}: its one folder {name}/ holds split folders, a dataset one level down. "
            f"Did you mean --data {public_url(url)}/{name}/?"
        )


def _empty(remote: Remote, url: str, layout: str) -> ImageList:
    public = public_url(url)
    name = dataset_name(public.rsplit("/", 1)[-1], public)
    return ImageList(public, name, layout, [], source=public, reader=ImageSource(url, remote))


def _per_split(listed: dict) -> dict[str, dict[str, list[str]]]:
    """split -> class -> sorted image paths, from the listed paths: split folders when there are any
    (train/ val/ ...), else class folders (files at the top are not in a class)."""
    images = sorted(p for p in listed if _is_image(p.rsplit("/", 1)[-1]) and not _hidden(p))
    has_splits = any(p.count("/") >= 2 and p.split("/", 1)[0].lower() in SPLIT_ALIASES for p in images)
    per_split: dict[str, dict[str, list[str]]] = {}
    for path in images:
        place = _place(path.split("/"), has_splits)
        if place:
            per_split.setdefault(place[0], {}).setdefault(place[1], []).append(path)
    return {split: per_split[split] for split in ("", *SPLITS) if split in per_split}


def _place(parts: list[str], has_splits: bool) -> tuple[str, str] | None:
    """(split, class) of an image's path parts; None for one outside every class (or split) folder."""
    if not has_splits:
        return ("", parts[0]) if len(parts) >= 2 else None
    if len(parts) >= 3 and parts[0].lower() in SPLIT_ALIASES:
        return SPLIT_ALIASES[parts[0].lower()], parts[1]
    return None


def _hidden(path: str) -> bool:
    return any(part.startswith(".") for part in path.split("/"))


def _from_remote_lists(remote: Remote, folder: str, names: list[str]) -> ImageList:
    rows = []
    for name in names:
        text = remote.read(f"{folder}/{name}").decode("utf-8", errors="replace")
        rows += list_rows(text.splitlines(), name, public_url(folder))
    if not rows:
        raise DataError(f"--data {public_url(folder)}: no 'path label' lines in {', '.join(names)}")
    return from_rows(rows, _empty(remote, folder, "list-file"))
