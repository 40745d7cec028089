"""Objects in a store that fsspec opens (S3 and kin): listing, reading with retries, and each failure
as a reason a person understands. Extra `[cloud]` installs s3fs; gcsfs and adlfs work the same way.

Credentials and endpoints come from each store's own standard places (for S3: the AWS_* variables,
AWS_ENDPOINT_URL included, ~/.aws/, instance roles); `--storage-option KEY=VALUE` passes the rest.
Nothing of them is ever written down: a dataset is named and recorded by `public_url`.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from common.errors import DataError

INSTALL = "pip install -e '.[cloud]'"
SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
READ_ATTEMPTS = 4  # a transient failure (timeout, 5xx, throttling) beyond the client's own retries
BACKOFF_S = 0.5  # first wait; doubled after each failure, with jitter
_filesystems: dict = {}  # (process id, Remote) -> its filesystem: never shared across a fork


def is_url(text) -> bool:
    """A URL of a store fsspec opens (s3://, gs://, az://, http(s)://...); file:// and plain paths are local."""
    match = SCHEME.match(str(text))
    return bool(match) and match.group(1).lower() != "file"


def public_url(url: str) -> str:
    """`url` without what may be secret (user:password@, a query string such as a presigned signature)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", "")).rstrip("/")


def join(root: str, relative: str) -> str:
    return f"{root.rstrip('/')}/{relative}"


def parse_storage_options(pairs) -> tuple[tuple[str, object], ...]:
    """--storage-option KEY=VALUE pairs -> (key, value) pairs; true/false/null and numbers as such."""
    import json

    options = []
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DataError(f"--storage-option {pair!r}: expected KEY=VALUE (e.g. anon=true, endpoint_url=http://...)")
        try:
            options.append((key, json.loads(value)))
        except ValueError:
            options.append((key, value))
    return tuple(options)


def object_tag(info: dict) -> int:
    """An object's version as an int64: its ETag (or version id; its modification time where a store
    gives neither), hashed. With the size, the identity that tells a changed object."""
    tag = info.get("ETag") or info.get("etag") or info.get("VersionId") or info.get("mtime") or info.get("LastModified")
    digest = hashlib.sha256(str(tag).encode()).digest()
    return int.from_bytes(digest[:8], "little", signed=True)


@dataclass(frozen=True)
class Remote:
    """How to reach one store: its protocol and storage options. Picklable (it goes to decoding workers
    and Ray actors); each process opens its own filesystem from it."""

    protocol: str
    options: tuple = ()

    @classmethod
    def of(cls, url: str, options: tuple = ()) -> Remote:
        return cls(SCHEME.match(url).group(1).lower(), tuple(options))

    def fs(self):
        key = (os.getpid(), self)
        if key not in _filesystems:
            _filesystems[key] = self._open()
        return _filesystems[key]

    def _open(self):
        try:
            import fsspec

            options = dict(self.options)
            if self.protocol in ("s3", "s3a"):  # an image in one GET (s3fs would first HEAD it to split it)
                options.setdefault("max_concurrency", 1)
            return fsspec.filesystem(self.protocol, skip_instance_cache=True, use_listings_cache=False, **options)
        except ImportError as error:
            needs = error.name or "its fsspec package"
            raise DataError(f"reading {self.protocol}:// needs {needs}: {INSTALL}") from None
        except (ValueError, TypeError) as error:
            raise DataError(f"{self.protocol}:// cannot be opened ({error})") from None

    def read(self, url: str, start: int | None = None, end: int | None = None) -> bytes:
        """The object's bytes (`start`..`end` of them); a transient failure is retried with backoff.
        Raises OSError (FileNotFoundError, PermissionError, ...) once it cannot be read."""
        wait = BACKOFF_S
        for attempt in range(READ_ATTEMPTS):
            try:
                return self.fs().cat_file(url, start=start, end=end)
            except (FileNotFoundError, PermissionError, IsADirectoryError):
                raise
            except Exception as error:  # noqa: BLE001 - a client's errors have no common base
                if attempt == READ_ATTEMPTS - 1:
                    raise OSError(f"{type(error).__name__}: {error}") from None
                time.sleep(wait * (1 + random.random()))
                wait *= 2
        raise AssertionError("unreachable")

    def info(self, url: str) -> dict:
        return self.fs().info(url)

    def walk(self, url: str):
        """(path relative to `url`, size, tag) of every object under `url`, directory by directory
        (memory of one directory's listing, never the whole tree at once)."""
        fs = self.fs()
        top = fs._strip_protocol(url).rstrip("/")
        for folder, _, files in fs.walk(top, detail=True):
            prefix = folder[len(top) :].strip("/")
            for name in sorted(files):
                info = files[name]
                yield (f"{prefix}/{name}" if prefix else name), int(info.get("size") or 0), object_tag(info)

    def check(self, url: str) -> None:
        """Fail in one line, before any work, when `url` cannot be listed: no credentials, no such
        bucket, access denied, no store answering."""
        try:
            if not self.fs().exists(url):
                raise FileNotFoundError(url)
        except Exception as error:  # noqa: BLE001
            raise access_error(public_url(url), error) from None


def list_objects(url: str, storage_options: tuple = ()) -> list[str]:
    """The URLs of the images under `url` (a folder of an object store), sorted; `url` itself when it is
    one object. One line (DataError) when the store refuses."""
    from .discovery import _is_image

    remote = Remote.of(url, storage_options)
    remote.check(url)
    url = url.rstrip("/")
    if remote.fs().isfile(url):
        return [url]
    return sorted(join(url, path) for path, _, _ in remote.walk(url) if _is_image(path.rsplit("/", 1)[-1]))


def access_error(url: str, error: Exception) -> DataError:
    """The one line for a store that refuses `url` (or a file under it) outright."""
    text = f"{type(error).__name__} {error}"
    if isinstance(error, DataError):
        return error
    if "NoCredentials" in text or "Unable to locate credentials" in text:
        why = (
            "no credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or ~/.aws/credentials; "
            "--storage-option anon=true for a public bucket)"
        )
    elif isinstance(error, PermissionError) or any(
        code in text for code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403")
    ):
        why = f"access denied ({_first_line(error)}): check the credentials and their permissions"
    elif isinstance(error, FileNotFoundError) and "bucket" in text.lower():
        why = "no such bucket"
    elif isinstance(error, FileNotFoundError):
        why = "nothing there (no such prefix or object)"
    else:
        why = f"cannot reach the store ({_first_line(error)}); for a store other than AWS set AWS_ENDPOINT_URL"
    return DataError(f"--data {url}: {why}")


def read_reason(error: Exception) -> str:
    """Why one object could not be read, for the skipped list."""
    if isinstance(error, FileNotFoundError):
        return "object not found (deleted since it was listed?)"
    if isinstance(error, PermissionError):
        return f"access denied ({_first_line(error)})"
    return f"could not fetch after {READ_ATTEMPTS} attempts ({_first_line(error)})"


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
