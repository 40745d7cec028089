"""WebDataset shards (`--data 'shards/train-{000000..000127}.tar'`, local or at a URL): tar files of
samples `KEY.jpg|png|webp|...` + `KEY.cls` (a class index into `classes.txt` beside the shards, or the
class name itself). The split is taken from a shard's name (`train-`, `val-`, `test-`).

Each shard is read once, as a stream (never unpacked), into an index of where each sample's image
lies in it; the index is kept in the cache under the shard's identity, so a re-run whose shards have
not changed reads none of them. A sample is then read as one range of its shard. Its identity is the
shard's (size, ETag or mtime) with its key in its path (`train-000000.tar/KEY.jpg`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

import numpy as np

from common.errors import DataError
from common.files import atomic_write

from .discovery import IMAGE_EXTENSIONS, SPLIT_ALIASES, ImageList, dataset_name, from_rows
from .remote import Remote, access_error, is_url, object_tag, public_url
from .sources import ImageSource

INDEX_VERSION = 1
CUT = -1  # a span's end when the shard ends inside the sample


def is_shards(text: str) -> bool:
    return text.lower().rstrip("/").endswith(".tar")


def discover_shards(pattern: str, storage_options: tuple = ()) -> ImageList:
    """The ImageList of the shards `pattern` names (brace patterns expanded)."""
    from braceexpand import braceexpand

    urls = list(braceexpand(pattern))
    remote = Remote.of(urls[0], storage_options) if is_url(urls[0]) else None
    folder = urls[0].rpartition("/")[0] or "."
    shown = _shown(pattern, remote)
    if any(url.rpartition("/")[0] != urls[0].rpartition("/")[0] for url in urls):
        raise DataError(f"--data {shown}: the shards must be in one folder")
    shards = [_Shard(url, remote) for url in urls]
    rows, spans, identities, notes = _samples(shards, _class_names(folder, remote))
    if not rows:
        why = f" ({notes[0]})" if notes else ""
        raise DataError(f"--data {shown}: no samples (KEY.jpg + KEY.cls) in {len(shards)} shards{why}")
    public = _shown(folder, remote)
    images = ImageList(
        public,
        dataset_name(public.rsplit("/", 1)[-1], f"{public}/shards"),  # the folder's: more shards, the same file
        "shards",
        [],
        source=shown,
        reader=ImageSource(folder if remote else public, remote, spans),
        identities=np.asarray(identities, np.int64).reshape(-1, 2),
        notes=notes,
    )
    return from_rows(rows, images)


def _shown(where: str, remote: Remote | None) -> str:
    """Where shards are, as recorded and shown: a URL without secrets, or an absolute path."""
    return public_url(where) if remote else str(Path(where).resolve())


def _samples(shards: list, classes: list[str] | None) -> tuple[list, dict, list, list[str]]:
    """Every sample of `shards`: ([(path, class name, split)], {path: span}, [identity], [notes])."""
    rows, spans, identities, notes = [], {}, [], []
    for shard in shards:
        index = shard.index()
        notes += _notes(shard, index)
        for key, (name, start, end, label) in index["samples"].items():
            path = f"{shard.name}/{name}"
            rows.append((path, _label_name(label, classes, shard, key), _split_of(shard.name)))
            spans[path] = (shard.name, start, end)
            identities.append(shard.identity)
    return rows, spans, identities, notes


def _notes(shard, index: dict) -> list[str]:
    """What a shard's index has to say: where it is cut, the images with no label (in a cut shard, the
    cut's: the label would have come after it)."""
    if index["cut_at"] is not None:
        return [_cut_note(shard, index)]
    notes = []
    if index["unlabelled"]:
        notes.append(
            f"shard {shard.name}: {len(index['unlabelled'])} images with no KEY.cls label left out "
            f"(first: {index['unlabelled'][0]})"
        )
    return notes


class _Shard:
    """One shard: its identity, and its index (read from the cache, or by streaming the shard)."""

    def __init__(self, url: str, remote: Remote | None):
        self.url, self.remote, self.name = url, remote, url.rpartition("/")[2]
        self.identity = self._identity()

    def _identity(self) -> tuple[int, int]:
        where = public_url(self.url) if self.remote else self.url
        try:
            if self.remote:
                info = self.remote.info(self.url)
                return int(info.get("size") or 0), object_tag(info)
            stat = os.stat(self.url)
            return stat.st_size, stat.st_mtime_ns
        except Exception as error:  # noqa: BLE001 - a store's refusal: one line
            if isinstance(error, FileNotFoundError) and not self.remote:
                raise DataError(f"--data: shard {where} not found") from None
            raise access_error(where, error) from None

    def index(self) -> dict:
        cached = _cache_file(self)
        try:
            index = json.loads(cached.read_text())
            if index.get("version") == INDEX_VERSION:
                return index
        except (OSError, ValueError):
            pass
        index = self._read_index()
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(cached) as tmp:
                Path(tmp).write_text(json.dumps(index))
        except OSError:  # a cache that cannot be written costs a re-read next time, nothing else
            pass
        return index

    def _read_index(self) -> dict:
        """Stream the shard: where each sample's image is, and its label; where the shard is cut."""
        images, labels, cut_at = {}, {}, None
        with self._open() as handle:
            try:
                with tarfile.open(fileobj=handle, mode="r|") as tar:
                    for member in tar:
                        _take(tar, member, images, labels)
            except (tarfile.TarError, EOFError, OSError) as error:
                if handle.tell() < self.identity[0]:  # not the end of the shard: a read that failed
                    raise self._unreadable(error) from None
                cut_at = str(error) or type(error).__name__
        samples = {}
        for key, (name, start, end) in sorted(images.items()):
            if end > self.identity[0]:
                end = CUT
            if key in labels:
                samples[key] = (name, start, end, labels[key])
        unlabelled = sorted(set(images) - set(labels))
        return {"version": INDEX_VERSION, "samples": samples, "cut_at": cut_at, "unlabelled": unlabelled}

    def _unreadable(self, error: Exception) -> DataError:
        """A shard that cannot be read now (nothing is cached or dropped: the next run tries again)."""
        if self.remote and not isinstance(error, tarfile.TarError):
            return access_error(public_url(self.url), error)
        return DataError(f"--data: shard {self.name} could not be read ({error}); nothing was changed")

    def _open(self):
        if self.remote:
            return self.remote.fs().open(self.url, "rb", block_size=8 << 20, cache_type="readahead")
        return open(self.url, "rb")


def _take(tar, member, images: dict, labels: dict) -> None:
    """Note a member of the shard: an image's span, or a label's text."""
    if not member.isfile():
        return
    base = member.name.rsplit("/", 1)[-1]
    key, _, extension = base.partition(".")
    key = member.name[: len(member.name) - len(base)] + key
    if ("." + extension.lower()) in IMAGE_EXTENSIONS:
        images.setdefault(key, (member.name, member.offset_data, member.offset_data + member.size))
    elif extension.lower() == "cls":
        labels[key] = tar.extractfile(member).read().decode("utf-8", errors="replace").strip()


def _class_names(folder: str, remote: Remote | None) -> list[str] | None:
    """The lines of classes.txt beside the shards (None when there is none)."""
    where = f"{folder}/classes.txt"
    try:
        data = remote.read(where) if remote else Path(where).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:  # there, but not readable: labels read as names would be wrong
        raise access_error(public_url(where) if remote else where, error) from None
    return [line.strip() for line in data.decode("utf-8", errors="replace").splitlines() if line.strip()]


def _label_name(label: str, classes: list[str] | None, shard: _Shard, key: str) -> str:
    if classes is None or not label.lstrip("-").isdigit():
        return label
    if not 0 <= int(label) < len(classes):
        raise DataError(f"{shard.name}: sample {key} has class {label}, but classes.txt names {len(classes)} classes")
    return classes[int(label)]


def _split_of(shard_name: str) -> str:
    for separator in ("-", "_", "."):
        head = shard_name.split(separator, 1)[0].lower()
        if head in SPLIT_ALIASES:
            return SPLIT_ALIASES[head]
    return ""


def _cut_note(shard: _Shard, index: dict) -> str:
    cut = [key for key, sample in index["samples"].items() if sample[2] == CUT]
    lost = index["unlabelled"]
    said = f"shard {shard.name} is truncated ({index['cut_at']}): every whole sample before the cut is kept"
    if cut:
        said += f"; {cut[0]} is cut in two (listed as unreadable)"
    if lost:
        said += f"; {len(lost)} cut before their label come to nothing (first: {lost[0]})"
    return said + "; any sample after the cut is lost"


def _cache_file(shard: _Shard) -> Path:
    from .engines import graph_cache_dir

    where = public_url(shard.url) if shard.remote else str(Path(shard.url).resolve())
    digest = hashlib.sha256(json.dumps([where, *shard.identity]).encode()).hexdigest()[:32]
    return graph_cache_dir() / "shard-index" / f"{digest}.json"
