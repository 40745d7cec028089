"""Names: made fit to be part of a file name, checked before a name read from a file becomes
part of a path, and shown readably when they are not valid UTF-8."""

from __future__ import annotations

import os
import re

from .errors import CnnfeatError

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def safe_name(text: str) -> str:
    """`text` made fit to be one component of a file name: letters and digits of any script and
    `. _ + -` stay (a dataset called `Ärzte` or `日本` keeps its name); other characters, and bytes
    of a name that is not UTF-8, become '_'."""
    cleaned = re.sub(r"[^\w.+-]|[\ud800-\udfff]", "_", text).lstrip("._-+")[:100]
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
        raise CnnfeatError(
            f"{source}: its {what} {value!r} is not a plain name (letters, digits, . _ + -); "
            f"refusing to use it in a file name"
        )
    return value
