"""One door to the bytes: a filesystem (fsspec) plus the repository root.

Every read and write of the repository goes through a :class:`Storage` made from the repository URL
(a plain path, ``file://``, ``s3://bucket/prefix`` or ``memory://``), so that local disk and S3 behave
the same. Writes are atomic: on local disk the bytes go to a temporary file in the same directory
that is then renamed (or hard-linked, for an exclusive create) into place; on S3 a single PUT makes an
object appear whole, and ``If-None-Match: *`` makes an exclusive create. No reader ever sees half a
file.

S3 endpoint and credentials come from the usual AWS environment variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` ...) or from explicit storage options
(``endpoint_url=...``, ``key=...``, ``secret=...``, ``anon=true``).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import fsspec

from .errors import StorageError

TEMP_PREFIX = ".tmp-"


def parse_storage_options(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Turn ``key=value`` strings (from ``--storage-option``) into fsspec options.

    ``true``/``false`` become booleans, integers become ints; everything else stays a string.
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise StorageError(f"storage option {pair!r} is not of the form key=value")
        low = value.strip().lower()
        if low in ("true", "false"):
            options[key.strip()] = low == "true"
        elif low.lstrip("-").isdigit():
            options[key.strip()] = int(low)
        else:
            options[key.strip()] = value
    return options


def _s3_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """s3fs constructor arguments from user options and the AWS environment."""
    opts = dict(options)
    client_kwargs = dict(opts.pop("client_kwargs", {}) or {})
    endpoint = (
        opts.pop("endpoint_url", None)
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or (os.environ.get("AWS_ENDPOINT_URL"))
    )
    if endpoint:
        client_kwargs.setdefault("endpoint_url", endpoint)
    region = opts.pop("region", None) or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        client_kwargs.setdefault("region_name", region)
    if client_kwargs:
        opts["client_kwargs"] = client_kwargs
    config = dict(opts.pop("config_kwargs", {}) or {})
    # Fail fast on an unreachable endpoint instead of retrying for minutes.
    config.setdefault("connect_timeout", int(opts.pop("connect_timeout", 5)))
    config.setdefault("read_timeout", int(opts.pop("read_timeout", 60)))
    config.setdefault("retries", {"max_attempts": int(opts.pop("max_attempts", 3))})
    opts["config_kwargs"] = config
    # Listings must be fresh: the registry discovers other writers' files by listing.
    opts.setdefault("use_listings_cache", False)
    return opts


def _is_s3_connection_error(exc: BaseException) -> bool:
    name = type(exc).__name__
    return any(
        word in name
        for word in (
            "EndpointConnection",
            "ConnectTimeout",
            "ConnectionError",
            "ClientConnector",
            "ServerDisconnected",
            "ReadTimeout",
        )
    )


class Storage:
    """The repository's files: relative paths under a root on some fsspec filesystem.

    Parameters
    ----------
    url
        Repository location: a local path, ``file://...``, ``s3://bucket/prefix`` or ``memory://...``.
    storage_options
        Extra fsspec/s3fs options (see :func:`parse_storage_options`).
    """

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None):
        options = dict(storage_options or {})
        protocol, _, rest = url.partition("://")
        if not _:
            protocol, rest = "file", url
        protocol = protocol.lower()
        if protocol in ("file", "local"):
            self.protocol = "file"
            self.root = os.path.abspath(os.path.expanduser(rest))
            self.fs = fsspec.filesystem("file")
        elif protocol in ("s3", "s3a"):
            self.protocol = "s3"
            self.root = rest.strip("/")
            if not self.root:
                raise StorageError(
                    f"{url!r}: an S3 repository URL needs a bucket: s3://bucket/path"
                )
            try:
                self.fs = fsspec.filesystem("s3", **_s3_options(options))
            except Exception as exc:  # bad options are reported, not crashed on
                raise StorageError(f"cannot configure S3 for {url!r}: {exc}") from exc
        elif protocol == "memory":
            self.protocol = "memory"
            self.root = "/" + rest.strip("/")
            self.fs = fsspec.filesystem("memory")
        else:
            raise StorageError(
                f"{url!r}: unsupported storage protocol {protocol!r} "
                "(use a path, file://, s3:// or memory://)"
            )
        self.storage_options = options

    # -- naming ----------------------------------------------------------------------------------

    @property
    def is_local(self) -> bool:
        return self.protocol == "file"

    @property
    def url(self) -> str:
        """The canonical URL of the root (a plain absolute path for local repositories)."""
        if self.is_local:
            return self.root
        return f"{self.protocol}://{self.root.lstrip('/') if self.protocol == 's3' else self.root}"

    def full_path(self, relpath: str) -> str:
        """The filesystem path of a repository-relative path (no escaping the root)."""
        check_relpath(relpath)
        if self.is_local:
            return os.path.join(self.root, *relpath.split("/"))
        return f"{self.root}/{relpath}"

    def uri(self, relpath: str) -> str:
        """A URL for messages and for tools outside drp (DuckDB, polars)."""
        if self.is_local:
            return self.full_path(relpath)
        return f"{self.url}/{relpath}"

    # -- writing ---------------------------------------------------------------------------------

    def put_bytes(self, relpath: str, data: bytes, *, exclusive: bool = False) -> None:
        """Write ``data`` atomically at ``relpath``.

        With ``exclusive=True`` the write fails with ``FileExistsError`` if the file exists, and of
        several concurrent exclusive writers exactly one succeeds.
        """
        path = self.full_path(relpath)
        with self._errors(relpath, "write"):
            if self.is_local:
                self._put_local(path, data, exclusive)
            elif self.protocol == "s3":
                self.fs.pipe_file(path, data, mode="create" if exclusive else "overwrite")
            else:
                if exclusive and self.fs.exists(path):
                    raise FileExistsError(path)
                self.fs.pipe_file(path, data)

    @staticmethod
    def _put_local(path: str, data: bytes, exclusive: bool) -> None:
        directory = os.path.dirname(path)
        tmp = os.path.join(directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            os.makedirs(directory, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            if exclusive:
                os.link(tmp, path)  # atomic; fails if path exists
                os.unlink(tmp)
            else:
                os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def put_file(self, relpath: str, source: str, *, mode: str = "copy") -> None:
        """Bring a local file into the repository by ``copy`` or hard ``link`` (symlink fallback)."""
        if mode == "copy":
            with open(source, "rb") as f:
                self.put_bytes(relpath, f.read())
            return
        if mode != "link":
            raise StorageError(f"unknown transfer mode {mode!r}")
        if not self.is_local:
            raise StorageError(f"cannot link {source} into a {self.protocol} repository; use copy")
        path = self.full_path(relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with self._errors(relpath, "link"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            try:
                os.link(source, path)
            except OSError:  # different filesystem: fall back to a symbolic link
                os.symlink(os.path.abspath(source), path)

    def delete(self, relpath: str, *, missing_ok: bool = True) -> None:
        """Remove one file."""
        path = self.full_path(relpath)
        with self._errors(relpath, "delete"):
            try:
                if self.is_local:
                    os.unlink(path)
                else:
                    self.fs.rm_file(path)
            except FileNotFoundError:
                if not missing_ok:
                    raise

    # -- reading ---------------------------------------------------------------------------------

    def get_bytes(self, relpath: str) -> bytes:
        """All the bytes of one file."""
        path = self.full_path(relpath)
        with self._errors(relpath, "read"):
            if self.is_local:
                with open(path, "rb") as f:
                    return f.read()
            return self.fs.cat_file(path)

    def exists(self, relpath: str) -> bool:
        path = self.full_path(relpath)
        with self._errors(relpath, "check"):
            if self.is_local:
                return os.path.exists(path)
            return self.fs.exists(path)

    def size(self, relpath: str) -> int:
        path = self.full_path(relpath)
        with self._errors(relpath, "stat"):
            if self.is_local:
                return os.stat(path).st_size
            return int(self.fs.size(path))

    def list_names(self, reldir: str) -> list[str]:
        """Names of the files directly inside a directory (empty if it does not exist)."""
        if self.is_local:
            try:
                return [e.name for e in os.scandir(self.full_path(reldir)) if e.is_file()]
            except FileNotFoundError:
                return []
        path = self.full_path(reldir)
        with self._errors(reldir, "list"):
            try:
                entries = self.fs.ls(path, detail=True)
            except FileNotFoundError:
                return []
        return [posixpath.basename(e["name"].rstrip("/")) for e in entries if e["type"] == "file"]

    def walk_files(self, reldir: str = "") -> Iterator[tuple[str, int]]:
        """Every file under a directory, recursively, as (relative path, size)."""
        base = self.full_path(reldir) if reldir else self.root
        if self.is_local:
            for dirpath, _dirs, files in os.walk(base):
                for name in files:
                    full = os.path.join(dirpath, name)
                    rel = os.path.relpath(full, self.root).replace(os.sep, "/")
                    with contextlib.suppress(FileNotFoundError):
                        yield rel, os.lstat(full).st_size
            return
        with self._errors(reldir or ".", "list"):
            try:
                found = self.fs.find(base, detail=True)
            except FileNotFoundError:
                return
        prefix = self.root.rstrip("/") + "/"
        for name, info in sorted(found.items()):
            if info.get("type") == "file" and name.startswith(prefix):
                yield name[len(prefix) :], int(info.get("size") or 0)

    def modified(self, relpath: str) -> float:
        """The time a file was last modified (seconds since the epoch)."""
        path = self.full_path(relpath)
        with self._errors(relpath, "stat"):
            if self.is_local:
                return os.stat(path).st_mtime
            info = self.fs.info(path)
            stamp = info.get("LastModified") or info.get("mtime") or info.get("created")
            return stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp or 0.0)

    # -- errors ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, relpath: str, action: str) -> Iterator[None]:
        """Turn filesystem exceptions into StorageError naming the file and what failed.

        ``FileExistsError`` passes through unchanged: callers use it for exclusive creates.
        """
        try:
            yield
        except FileExistsError:
            raise
        except FileNotFoundError as exc:
            raise StorageError(f"{self.uri(relpath)}: no such file ({action})") from exc
        except PermissionError as exc:
            raise StorageError(f"{self.uri(relpath)}: permission denied ({action}): {exc}") from exc
        except StorageError:
            raise
        except Exception as exc:
            if _is_s3_connection_error(exc) or isinstance(exc, OSError):
                raise StorageError(f"{self.uri(relpath)}: cannot {action}: {exc}") from exc
            if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError"):
                raise StorageError(
                    f"{self.uri(relpath)}: cannot {action}: no S3 credentials ({exc}); set "
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for a "
                    "server other than AWS), or pass -o key=... -o secret=..."
                ) from exc
            raise


def check_relpath(relpath: str) -> None:
    """Refuse a repository-relative path that could escape the root or is malformed."""
    if (
        not relpath
        or relpath.startswith("/")
        or "\\" in relpath
        or "\x00" in relpath
        or any(part in ("", ".", "..") for part in relpath.split("/"))
        or len(relpath) > 1024
    ):
        raise StorageError(f"invalid repository path {relpath!r:.120}")
