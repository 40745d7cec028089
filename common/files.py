"""Files that become official: write, flush + fsync, rename, fsync of its folder - in that order -
so a kill at any moment leaves either the old file or the new one, never half of one. Temporary
files of a killed writer carry its pid in their name and are swept by the next writer of the
same file. A write that fails (disk full, file-size limit, read-only folder) ends in one
OutputError naming the file and the cause, the old file untouched.
"""

from __future__ import annotations

import glob
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import WRITE_ERRNOS, OutputError, describe_os_error
from .names import printable

_TMP_MARK = ".tmp-"


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_tmp(path)
        tmp = tmp_name(path)
        try:
            yield tmp
            publish(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as error:
        if error.errno not in WRITE_ERRNOS:
            raise  # not a failed write (a damaged input read in the block): its own kind
        raise OutputError(f"cannot write {printable(path)}: {describe_os_error(error)}") from None


def ensure_writable(folder: str | os.PathLike, option: str = "--out") -> Path:
    """Make `folder` (and its parents) and prove a file can be created in it, before any long work
    whose result would go there: a read-only or mistyped output is found first, not after an hour."""
    folder = Path(folder)
    for part in (folder, *folder.parents):
        if part.exists():
            if not part.is_dir():
                where = "is" if part == folder else f"is inside {printable(part)}, which is"
                raise OutputError(f"{option} {printable(folder)}: {where} a file, not a folder")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise OutputError(f"{option} {printable(folder)}: cannot write there: {describe_os_error(error)}") from None
    return folder


def publish(tmp: Path, path: Path) -> None:
    """fsync `tmp`, rename it to `path`, fsync the folder: the rename is then durable too."""
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


@contextmanager
def written_together():
    """Yield `put(path, data)`: each file is written whole, fsynced, under its temporary name at once;
    on leaving the block they all become official (renames, which need no space), or, if any write
    failed, none does: a set of files that belong together (a report) is never half old, half new."""
    pending = []

    def put(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_tmp(path)
        tmp = tmp_name(path)
        pending.append((tmp, path))
        tmp.write_bytes(data)
        fsync_path(tmp)

    try:
        yield put
        for tmp, path in pending:
            os.replace(tmp, path)
        for folder in {path.parent for _, path in pending}:
            fsync_path(folder)
    except OSError as error:
        if error.errno not in WRITE_ERRNOS:
            raise
        where = error.filename or (pending[-1][1] if pending else "the output")
        raise OutputError(f"cannot write {printable(where)}: {describe_os_error(error)}") from None
    finally:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)


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
