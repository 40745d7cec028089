"""Files that become official, names that become paths, locks, and checksums: used by every package.

A file becomes official by write, flush + fsync, rename, fsync of its folder - in that order - so a
kill at any moment leaves either the old file or the new one, never half of one. Temporary files of
a killed writer carry its pid in their name and are swept by the next writer of the same file. A
write that fails (disk full, file-size limit, read-only folder) ends in one OutputError naming the
file and the cause, the old file untouched.
"""
from __future__ import annotations

import errno
import fcntl
import glob
import hashlib
import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import CnnfeatError


class OutputError(CnnfeatError):
    """An output that cannot be written where it was asked for."""

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


def printable(text) -> str:
    """A name for a person to read: bytes of a file name that are not UTF-8 (kept losslessly as
    surrogates, the way os.listdir gives them) shown as \\xNN escapes instead of breaking the output."""
    text = os.fsdecode(text) if isinstance(text, bytes) else str(text)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate no file name makes (a crafted file): escaped as such
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


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


WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                errno.EISDIR, errno.ENAMETOOLONG, errno.ENOENT, errno.EIO, errno.EEXIST}  # how a write is refused


def describe_os_error(error: OSError) -> str:
    """The cause of a failed write in a few words, with the way out where there is an obvious one."""
    hints = {errno.ENOSPC: " (the disk is full: free some space)", errno.EDQUOT: " (over the disk quota)",
             errno.EFBIG: " (over the file-size limit: see `ulimit -f`)",
             errno.EROFS: " (a read-only file system)", errno.EACCES: " (no permission to write there)"}
    cause = error.strerror or str(error) or type(error).__name__
    return cause + hints.get(error.errno, "")


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


# -- one writer at a time ------------------------------------------------------------------------

LOCK_WAIT_S = 2.0  # how long to wait for a lock whose holder has not yet said who it is
_HELD_HERE: set[Path] = set()  # POSIX locks do not exclude the process that holds them: these do


class Busy(CnnfeatError):
    """Another run is writing the same output."""


@contextmanager
def exclusive(path: Path, command: str = "cnnfeat extract"):
    """Hold a lock beside `path` (`<path>.lock`) for the duration; a second writer stops with a
    clear message naming the first one's pid.

    A POSIX record lock (lockf), not flock: it belongs to this process only, so the DataLoader
    workers forked while it is held do not keep it alive after this process is killed, and the
    kernel releases it the moment this process dies, whatever killed it. The lock file is removed
    on release (so a failed first run leaves nothing behind); a writer that locked a file someone
    has just removed sees it and locks the new one instead."""
    lock_path = Path(path).with_name(Path(path).name + ".lock").resolve()
    if lock_path in _HELD_HERE:
        raise Busy(f"{printable(path)} is being written by this process (pid {os.getpid()}); wait for that run to "
                   f"finish and run again")
    fd = _acquire(lock_path, path)
    try:
        _HELD_HERE.add(lock_path)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{command} (pid {os.getpid()})".encode(), 0)
        yield
    finally:
        _HELD_HERE.discard(lock_path)
        try:
            lock_path.unlink(missing_ok=True)  # while still held: no one else can be between lock and check
        except OSError:
            pass
        os.close(fd)  # releases the lock


def _acquire(lock_path: Path, path) -> int:
    """An open fd of `lock_path`, locked by this process."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise OutputError(f"cannot lock {printable(lock_path)}: {describe_os_error(error)}") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # EAGAIN / EACCES: held by a live process
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            pid = holder.rsplit("pid ", 1)[-1].rstrip(")")
            alive = pid.isdigit() and pid_alive(int(pid))
            # A held lock whose recorded pid is gone belongs to a writer that has just started and
            # not yet written its pid: wait a moment rather than name a dead process.
            if alive or time.monotonic() > deadline:
                raise Busy(f"{printable(path)} is being written by {holder if alive else 'another process'}; "
                           f"wait for that run to finish and run again") from None
            time.sleep(0.05)
            continue
        if _same_file(fd, lock_path):
            return fd
        os.close(fd)  # locked a lock file its holder removed on release: lock the current one


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
