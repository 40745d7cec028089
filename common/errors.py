"""Errors a user (or the machine) can cause, and how a library's error becomes one line for them.
The CLI turns each CnnfeatError into one line and a non-zero exit."""

from __future__ import annotations

import errno


class CnnfeatError(Exception):
    """Base class: the message is meant for the user, as is."""


class DataError(CnnfeatError):
    """The image folder or list is missing, empty or malformed."""


class BackboneError(CnnfeatError):
    """Unknown backbone, or weights that cannot be had."""


class StoreError(CnnfeatError):
    """A feature file that is missing, incomplete, foreign or locked."""


class OutputError(CnnfeatError):
    """An output that cannot be written where it was asked for."""


WRITE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.ENAMETOOLONG,
    errno.ENOENT,
    errno.EIO,
    errno.EEXIST,
}  # how a write is refused


def describe_os_error(error: OSError) -> str:
    """The cause of a failed write in a few words, with the way out where there is an obvious one."""
    hints = {
        errno.ENOSPC: " (the disk is full: free some space)",
        errno.EDQUOT: " (over the disk quota)",
        errno.EFBIG: " (over the file-size limit: see `ulimit -f`)",
        errno.EROFS: " (a read-only file system)",
        errno.EACCES: " (no permission to write there)",
    }
    cause = error.strerror or str(error) or type(error).__name__
    return cause + hints.get(error.errno, "")


_MACHINE_SAYS_NO = {
    27: "File too large (over the file-size limit: see `ulimit -f`)",
    28: "No space left on device",
    122: "Disk quota exceeded",
}  # EFBIG, ENOSPC, EDQUOT


def machine_refusal(error: BaseException) -> str | None:
    """One line for an error the machine caused where no code of ours could name the file: a write
    refused by a full disk or a file-size limit deep inside a library - joblib's parallel workers
    share arrays through temporary files, and its error says so only in the text of a remote
    traceback; a parallel worker killed from outside (most often by the kernel, out of memory). None
    for any other error."""
    if type(error).__name__ == "TerminatedWorkerError" or isinstance(error, MemoryError):
        return (
            "a parallel worker was killed or memory ran out (each of --jobs' fits holds its own copy of "
            "its rows): run with --jobs 1, or on a machine with more memory"
        )
    seen = error
    while seen is not None:
        errno = getattr(seen, "errno", None)
        text = str(seen)
        code = (
            errno
            if errno in _MACHINE_SAYS_NO
            else next((code for code in _MACHINE_SAYS_NO if f"[Errno {code}]" in text), None)
        )
        if code is not None:
            where = f" writing {seen.filename}" if getattr(seen, "filename", None) else ""
            return f"the machine refused a write{where}: {_MACHINE_SAYS_NO[code]}{_parallel_hint(error)}"
        seen = seen.__cause__ or seen.__context__
    return None


def error_line(error: BaseException, last: bool = False, after: str = "") -> str:
    """One line of a library's error for ours: its first (or `last`) non-blank line, of the part after
    `after` when that marker is in it; the error's type where it says nothing. Libraries wrap the
    cause in paragraphs of advice (torch) or tracebacks (DataLoader workers, joblib)."""
    text = str(error).split(after, 1)[-1] if after else str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if last else lines[0]) if lines else type(error).__name__


def _parallel_hint(error: BaseException) -> str:
    import pickle

    if not isinstance(error, pickle.PicklingError):
        return ""
    return (
        "; parallel fits share the training rows through temporary files ($JOBLIB_TEMP_FOLDER, else /dev/shm "
        "or $TMPDIR): make room there, or run with --jobs 1"
    )
