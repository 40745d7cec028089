"""One writer at a time: a POSIX lock beside the file being written, released by the kernel the
moment its holder dies, whatever killed it."""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import CnnfeatError, OutputError, describe_os_error
from .files import pid_alive
from .names import printable

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
        raise Busy(
            f"{printable(path)} is being written by this process (pid {os.getpid()}); wait for that run to "
            f"finish and run again"
        )
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
                raise Busy(
                    f"{printable(path)} is being written by {holder if alive else 'another process'}; "
                    f"wait for that run to finish and run again"
                ) from None
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
