"""Errors a user can cause. The CLI turns each into one line and a non-zero exit."""


class CnnfeatError(Exception):
    """Base class: the message is meant for the user, as is."""


class DataError(CnnfeatError):
    """The image folder or list is missing, empty or malformed."""


class BackboneError(CnnfeatError):
    """Unknown backbone, or weights that cannot be had."""


class StoreError(CnnfeatError):
    """A feature file that is missing, incomplete, foreign or locked."""


def error_line(error: BaseException, last: bool = False, after: str = "") -> str:
    """One line of a library's error for ours: its first (or `last`) non-blank line, of the part after
    `after` when that marker is in it; the error's type where it says nothing. Libraries wrap the
    cause in paragraphs of advice (torch) or tracebacks (DataLoader workers, joblib)."""
    text = str(error).split(after, 1)[-1] if after else str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if last else lines[0]) if lines else type(error).__name__
