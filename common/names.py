"""Names: made fit to be part of a file name, checked before a name read from a file becomes
part of a path, and shown readably when they are not valid UTF-8."""

from __future__ import annotations

import os
import re
import unicodedata

from .errors import CnnfeatError

SAFE_NAME = re.compile(r"[^\W_][\w.+-]{0,127}")  # what safe_name makes: \w is Unicode's letters and digits, and _
NAME_BYTES = 100  # safe_name's longest, in UTF-8 bytes: with a hash and a backbone, under a file name's 255


def safe_name(text: str) -> str:
    """`text` made fit to be one component of a file name: letters and digits (as Unicode counts them:
    a dataset called `Ärzte` or `日本` keeps its name) and `. _ + -` stay, composed (NFC, as macOS's
    decomposed names are not); other characters, and bytes of a name that is not UTF-8, become '_'."""
    composed = unicodedata.normalize("NFC", text)
    cleaned = re.sub(r"[^\w.+-]|[\ud800-\udfff]", "_", composed).lstrip("._-+")
    return cleaned.encode()[:NAME_BYTES].decode(errors="ignore") or "data"


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
