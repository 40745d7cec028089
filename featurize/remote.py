"""Objects in a store that fsspec opens (S3 and kin): listing, reading with retries, and each failure
as a reason a person understands. Extra `[cloud]` installs s3fs; gcsfs and adlfs work the same way.

Credentials and endpoints come from each store's own standard places (for S3: the AWS_* variables,
AWS_ENDPOINT_URL included, ~/.aws/, instance roles); `--storage-option KEY=VALUE` passes the rest.
Nothing of them is ever written down: a dataset is named and recorded by `public_url`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from common.errors import DataError

INSTALL = "pip install -e '.[cloud]'"
FSSPEC_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}
REMOTE_REQUESTS = 16  # requests in flight by default: decoding threads when the images come over a network
SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
READ_ATTEMPTS = 3  # a dropped connection or a timeout; the client retries 5xx and throttling itself
BACKOFF_S = 0.5  # first wait; doubled after each failure, with jitter
TRANSIENT = (TimeoutError, ConnectionError)  # and the errors of the client's HTTP layer named below
TRANSIENT_NAMES = ("Timeout", "ClientPayloadError", "ServerDisconnectedError", "ClientConnectorError", "IncompleteRead")
_filesystems: dict = {}  # (process id, Remote) -> its filesystem: never shared across a fork


def is_url(text) -> bool:
    """A URL of a store fsspec opens (s3://, gs://, az://, http(s)://...); file:// and plain paths are local."""
    match = SCHEME.match(str(text))
    return bool(match) and match.group(1).lower() != "file"


def public_url(url: str) -> str:
    """`url` without what may be secret: a `user:password@` (a `container@account` of Azure stays) and a
    query string (a presigned signature)."""
    parts = urlsplit(url)
    user, at, host = parts.netloc.rpartition("@")
    netloc = host if ":" in user else parts.netloc
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")).rstrip("/")


def join(root: str, relative: str) -> str:
    return f"{root.rstrip('/')}/{relative}"


def parse_storage_options(pairs) -> tuple[tuple[str, str], ...]:
    """--storage-option KEY=VALUE pairs -> (key, JSON text) pairs: a value that is JSON (true, 3,
    {"region_name": "x"}) is read as such, any other as a string; JSON keeps them hashable."""
    options = []
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DataError(f"--storage-option {pair!r}: expected KEY=VALUE (e.g. anon=true, endpoint_url=http://...)")
        try:
            options.append((key, json.dumps(json.loads(value), sort_keys=True)))
        except ValueError:
            options.append((key, json.dumps(value)))
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
    options: tuple = field(default=(), repr=False)  # (key, JSON text) pairs: may hold a secret

    @classmethod
    def of(cls, url: str, options: tuple = ()) -> Remote:
        return cls(SCHEME.match(url).group(1).lower(), tuple(options))

    def client_options(self) -> dict:
        options = {key: json.loads(value) for key, value in self.options}
        if self.protocol in ("s3", "s3a"):
            options.setdefault("max_concurrency", 1)  # an image in one GET (s3fs would first HEAD it to split it)
            options.setdefault("config_kwargs", {}).setdefault("max_pool_connections", 4 * REMOTE_REQUESTS)
        return options

    def fs(self):
        key = (os.getpid(), self)
        if key not in _filesystems:
            _filesystems[key] = self._open()
        return _filesystems[key]

    def _open(self):
        try:
            import fsspec

            options = self.client_options()
            return fsspec.filesystem(self.protocol, skip_instance_cache=True, use_listings_cache=False, **options)
        except ImportError:
            package = FSSPEC_PACKAGES.get(self.protocol)
            how = INSTALL if package == "s3fs" else f"pip install {package}" if package else "its fsspec package"
            raise DataError(f"reading {self.protocol}:// needs {package or 'a package'}: {how}") from None
        except (ValueError, TypeError) as error:
            raise DataError(f"{self.protocol}:// cannot be opened ({error})") from None

    def read(self, url: str, start: int | None = None, end: int | None = None) -> bytes:
        """The object's bytes (`start`..`end` of them); a transient failure is retried with backoff.
        Raises OSError (FileNotFoundError, PermissionError, ...) once it cannot be read."""
        wait = BACKOFF_S
        for attempt in range(READ_ATTEMPTS):
            try:
                return self.fs().cat_file(url, start=start, end=end)
            except Exception as error:  # noqa: BLE001 - a client's errors have no common base
                if attempt == READ_ATTEMPTS - 1 or not _transient(error):
                    if isinstance(error, OSError):
                        raise
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
        for folder, _, files in fs.walk(top, detail=True, on_error="raise"):  # never a failed folder as an empty one
            prefix = folder[len(top) :].strip("/")
            for name in sorted(files):
                info = files[name]
                yield (f"{prefix}/{name}" if prefix else name), int(info.get("size") or 0), object_tag(info)

    def check(self, url: str, option: str = "--data") -> dict:
        """`url`'s info (its "type": file or directory); one line, before any work, when it cannot be
        read: no credentials, no such bucket, access denied, nothing there, no store answering."""
        try:
            return self.fs().info(url)
        except Exception as error:  # noqa: BLE001
            raise access_error(public_url(url), error, option) from None


def list_objects(url: str, storage_options: tuple = ()) -> list[str]:
    """The URLs of the images under `url` (a folder of an object store), sorted; `url` itself when it is
    one object. One line (DataError) when the store refuses."""
    from .discovery import _is_image

    remote = Remote.of(url, storage_options)
    if remote.check(url, option="")["type"] == "file":
        return [url]
    url = url.rstrip("/")
    return sorted(join(url, path) for path, _, _ in remote.walk(url) if _is_image(path.rsplit("/", 1)[-1]))


def access_error(url: str, error: Exception, option: str = "--data") -> DataError:
    """The one line for a store that refuses `url` (or a file under it) outright, told by the kinds and
    codes of the error and its causes (never by its text, which holds the URL)."""
    if isinstance(error, DataError):
        return error
    kinds = _kinds(error)
    if "TypeError" in kinds:  # the client refused its arguments: a --storage-option it does not take
        why = f"the store's client refused its options ({_first_line(error)}): check each --storage-option"
    elif "NoCredentialsError" in kinds:
        why = (
            "no credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or ~/.aws/credentials; "
            "--storage-option anon=true for a public bucket)"
        )
    elif "NoSuchBucket" in kinds:
        why = "no such bucket"
    elif "PermissionError" in kinds:
        why = f"access denied ({_first_line(error)}): check the credentials and their permissions"
    elif "FileNotFoundError" in kinds:
        why = "nothing there (no such prefix or object)"
    else:
        why = f"cannot reach the store ({_first_line(error)}); for a store other than AWS set AWS_ENDPOINT_URL"
    return DataError(f"{option} {url}: {why}".strip())


def _kinds(error: BaseException) -> set[str]:
    """The class names of `error` and of its causes, and the error codes of the responses among them."""
    kinds = set()
    while error is not None:
        kinds |= {cls.__name__ for cls in type(error).__mro__}
        code = (getattr(error, "response", None) or {}).get("Error", {}).get("Code")
        kinds |= {str(code)} if code else set()
        error = error.__cause__ or error.__context__
    return kinds


def _transient(error: BaseException) -> bool:
    """A dropped connection or a timeout (worth another try), not an answer of the store's."""
    kinds = _kinds(error)
    return not ({"ClientError", "FileNotFoundError", "PermissionError"} & kinds) and (
        isinstance(error, TRANSIENT) or any(name in kind for kind in kinds for name in TRANSIENT_NAMES)
    )


def read_reason(error: Exception) -> str:
    """Why one object could not be read, for the skipped list."""
    if isinstance(error, FileNotFoundError):
        return "object not found"
    if isinstance(error, PermissionError):
        return f"access denied ({_first_line(error)})"
    return f"could not fetch ({_first_line(error)})"


def _first_line(error: Exception) -> str:
    """The error's message on one line (botocore puts the reason on the line after the first)."""
    return " ".join(str(error).split())[:240] or type(error).__name__
