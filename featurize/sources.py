"""Where a dataset's image bytes are read from: a local folder, a URL of an object store, or spans of
WebDataset shards. Picklable: decoding workers and Ray actors each read for themselves (each process
opens its own filesystem: an async client must not cross a fork)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .decoding import UnreadableImage, _reasons
from .remote import Remote, is_url, join, read_reason


@dataclass(frozen=True)
class ImageSource:
    """Reads an image's bytes by its path as the dataset lists it: relative to `root` (a folder or a
    URL), or absolute, or a URL of its own. `remote`: how to reach URLs (None: local only). `spans`:
    path -> (shard, start, end) for samples of tar shards (read as one range of the shard)."""

    root: str = ""
    remote: Remote | None = None
    spans: dict = field(default=None, compare=False, hash=False)

    def locate(self, path: str) -> str:
        if not self.root or is_url(path) or os.path.isabs(path):
            return path
        return join(self.root, path) if is_url(self.root) else os.path.join(self.root, path)

    def read(self, path: str) -> bytes:
        """The bytes of the image at `path`; UnreadableImage with the reason when there are none."""
        if self.spans is not None:
            shard, start, end = self.spans[path]
            if end < 0:
                raise UnreadableImage("truncated shard: it ends inside this sample")
            return self._read(self.locate(shard), start, end)
        return self._read(self.locate(path))

    def _read(self, where: str, start: int | None = None, end: int | None = None) -> bytes:
        if is_url(where):
            if self.remote is None:
                raise UnreadableImage(f"a URL, but no store to read it from: {where}")
            try:
                return self.remote.read(where, start, end)
            except OSError as error:
                raise UnreadableImage(read_reason(error)) from None
        return _read_local(where, start, end)


def _read_local(path: str, start: int | None, end: int | None) -> bytes:
    with _reasons():
        if start is None:
            return Path(path).read_bytes()
        with open(path, "rb") as handle:
            handle.seek(start)
            return handle.read(end - start)


def as_source(source) -> ImageSource:
    """An ImageSource as it is; a folder (str or Path, as library code before sources passed) -> its source."""
    return source if isinstance(source, ImageSource) else ImageSource(os.fspath(source))


def source_for_paths(paths: list[str], storage_options: tuple = ()) -> ImageSource:
    """The source that reads `paths` as given: files, and URLs of the store of the first URL among them."""
    url = next((p for p in paths if is_url(p)), None)
    return ImageSource("", Remote.of(url, storage_options) if url else None)
