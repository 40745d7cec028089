"""Files that become official, names that become paths, and checksums: used by every package.

A file becomes official by write, flush + fsync, rename, fsync of its folder - in that order - so a
kill at any moment leaves either the old file or the new one, never half of one. Temporary files of
a killed writer carry its pid in their name and are swept by the next writer of the same file.
"""
from __future__ import annotations

import glob
import hashlib
import os
import re
from contextlib import contextmanager
from pathlib import Path

from .errors import CnnfeatError

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_TMP_MARK = ".tmp-"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def safe_name(text: str) -> str:
    """`text` made fit to be one component of a file name: other characters become '_'."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]", "_", text).lstrip("._-+")[:100]
    return cleaned or "data"


def check_name(value, what: str, source) -> str:
    """A name read from a file, refused unless it is a plain file-name component (no '/', no '..')."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value) or ".." in value:
        raise CnnfeatError(f"{source}: its {what} {value!r} is not a plain name (letters, digits, . _ + -); "
                           f"refusing to use it in a file name")
    return value


def fsync_path(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}{_TMP_MARK}{os.getpid()}")


@contextmanager
def atomic_write(path: str | os.PathLike):
    """Yield a temporary path beside `path`; once the block has written it, make it `path`.

    On an exception the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_tmp(path)
    tmp = tmp_name(path)
    try:
        yield tmp
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def publish(tmp: Path, path: Path) -> None:
    """fsync `tmp`, rename it to `path`, fsync the folder: the rename is then durable too."""
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def sweep_stale_tmp(path: Path) -> list[Path]:
    """Remove `<path>.tmp-<pid>` files left by writers that are no longer running."""
    removed = []
    for tmp in path.parent.glob(f"{glob.escape(path.name)}{_TMP_MARK}*"):
        pid = tmp.name.rsplit(_TMP_MARK, 1)[1]
        if pid.isdigit() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def runs(starts: list[int], step: int):
    """(first, end) index ranges of `starts` whose values follow each other by `step`: the rows (or
    byte offsets) that one read can fetch together."""
    first = 0
    while first < len(starts):
        end = first + 1
        while end < len(starts) and starts[end] == starts[end - 1] + step:
            end += 1
        yield first, end
        first = end
