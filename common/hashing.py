"""Digests: of a file's bytes, and of a record of settings (the keys that say two results are
comparable: a store's fingerprint, a fitted head's reuse key)."""

from __future__ import annotations

import hashlib
import json
import os


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def json_key(record, length: int = 16) -> str:
    """The first `length` hex digits of the sha256 of `record` as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:length]
