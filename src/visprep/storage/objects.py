"""Objects under a URL prefix (any fsspec filesystem), with the one primitive the commit protocol needs: a
conditional PUT (create only if absent, or replace only if the ETag is still the one read).

S3 (and S3-compatible stores) do conditional PUTs natively (`If-None-Match: *`, `If-Match: <etag>`); `memory://`
emulates them within one process (for unit tests). Other filesystems are refused with the reason: without a
conditional write two writers could both believe they committed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STORAGE_OPTIONS_ENV = "VISPREP_STORAGE_OPTIONS"
_CONDITIONAL = ("s3", "s3a", "memory")
_MEMORY_GUARD = threading.Lock()  # memory:// emulates conditional PUTs; one process is its whole world


class PreconditionFailed(Exception):
    """A conditional PUT lost: the object exists (create) or changed since it was read (replace)."""


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key under the store's prefix, size, ETag and last-modified time (the store's clock,
    seconds since the epoch)."""

    key: str
    size: int
    etag: str
    modified: float


def is_url(root: str | os.PathLike[str]) -> bool:
    """Whether `root` names a location on an fsspec filesystem other than the local disk (`s3://b/p`)."""
    text = str(root)
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.isidentifier() and scheme.lower() not in ("file", "local")


# s3fs's argument -> the environment variables botocore reads for it, first found wins.
_S3_ENV = {"endpoint_url": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"), "key": ("AWS_ACCESS_KEY_ID",),
           "secret": ("AWS_SECRET_ACCESS_KEY",), "token": ("AWS_SESSION_TOKEN",)}


def env_storage_options() -> dict[str, Any]:
    """fsspec options from `VISPREP_STORAGE_OPTIONS` (a JSON object), for what the AWS variables cannot say."""
    text = os.environ.get(STORAGE_OPTIONS_ENV, "").strip()
    if not text:
        return {}
    try:
        found = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{STORAGE_OPTIONS_ENV}={text[:200]!r} is not a JSON object: {exc}") from None
    if not isinstance(found, dict):
        raise TypeError(f"{STORAGE_OPTIONS_ENV}={text[:200]!r} is not a JSON object")
    return found


class ObjectStore:
    """The objects under `url` (e.g. `s3://bucket/prefix`), addressed by keys relative to it.

    Credentials and endpoint come from `options` (fsspec's storage options) or, for S3, from what botocore reads:
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL(_S3) / AWS_DEFAULT_REGION, a profile or a role.
    """

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        import fsspec

        protocol, _, rest = url.partition("://")
        self.protocol = protocol.lower()
        if self.protocol not in _CONDITIONAL:
            raise ValueError(f"{url}: a workspace on {protocol}:// needs conditional writes (create-if-absent, "
                             f"replace-if-unchanged), which visprep implements for {', '.join(_CONDITIONAL)}")
        self.url = f"{protocol}://{rest.strip('/')}"
        opts = {**env_storage_options(), **dict(options or {})}
        if self.protocol in ("s3", "s3a"):
            try:
                import s3fs  # noqa: F401
            except ImportError as exc:
                raise ImportError(f"{url}: s3:// needs s3fs: pip install 'visprep[s3]'") from exc
            # Another process's writes must be seen: no cached listings.
            opts.setdefault("use_listings_cache", False)
            # fsspec keeps one filesystem per set of arguments for the process's life: what botocore would read
            # from the environment is passed explicitly, so a changed endpoint or key gets a filesystem of its own
            # rather than the one made for the previous (a test's earlier server, a notebook's earlier store).
            for option, names in _S3_ENV.items():
                found = next((os.environ[n] for n in names if os.environ.get(n)), None)
                if found is not None:
                    opts.setdefault(option, found)
        self.fs = fsspec.filesystem(self.protocol, **opts)
        self.base = self.fs._strip_protocol(self.url).rstrip("/")

    def path(self, key: str) -> str:
        """The filesystem path of `key`."""
        return f"{self.base}/{key}" if key else self.base

    def uri(self, key: str) -> str:
        """The URL of `key`."""
        return f"{self.protocol}://{self.path(key)}"

    # --- reading ---
    def info(self, key: str) -> ObjectInfo | None:
        """`key`'s size, ETag and time, or None when it does not exist."""
        try:
            found = self.fs.info(self.path(key), refresh=True) if self._is_s3 else self.fs.info(self.path(key))
        except FileNotFoundError:
            return None
        if found.get("type") == "directory":
            return None
        return self._info(key, found)

    def get(self, key: str) -> bytes | None:
        """`key`'s bytes, or None when it does not exist."""
        try:
            return self.fs.cat_file(self.path(key))
        except FileNotFoundError:
            return None

    def get_with_etag(self, key: str) -> tuple[bytes, str] | None:
        """`key`'s bytes and an ETag no newer than them (so a replace conditional on it fails if they are stale),
        or None when it does not exist."""
        # The ETag is read first: the bytes read after it are that version or a newer one, and a replace
        # conditional on an older ETag than the bytes' loses, which is safe.
        found = self.info(key)
        if found is None:
            return None
        data = self.get(key)
        if data is None:
            return None
        if not self._is_s3:
            return data, _md5(data)
        return data, found.etag

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with `prefix` (a folder: end it with '/'), sorted by key."""
        root = self.path(prefix.rstrip("/"))
        try:
            found = self.fs.find(root, detail=True)
        except FileNotFoundError:
            return []
        out = []
        for path, meta in found.items():
            if meta.get("type") == "directory":
                continue
            key = path[len(self.base) + 1:] if path.startswith(self.base + "/") else path
            if key.startswith(prefix):
                out.append(self._info(key, meta))
        return sorted(out, key=lambda o: o.key)

    def download(self, key: str, target: Path) -> None:
        """Copy `key` to the local file `target`, atomically (a temporary name, then rename)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp")
        os.close(fd)
        try:
            self.fs.get_file(self.path(key), tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # --- writing ---
    def put(self, key: str, data: bytes) -> str:
        """Store `data` as `key` (one PUT: readers see the old object or the whole new one); return its ETag."""
        if self.protocol == "memory":
            with _MEMORY_GUARD:
                self.fs.pipe_file(self.path(key), data)
            return _md5(data)
        out = self.fs.pipe_file(self.path(key), data)
        return _etag_of(out) or self._etag_after_put(key)

    def upload(self, source: Path, key: str) -> str:
        """Store the local file `source` as `key`; return its ETag."""
        return self.put(key, source.read_bytes())

    def put_if(self, key: str, data: bytes, *, etag: str | None) -> str:
        """Store `data` as `key` only if `key` does not exist (`etag` None) or still has `etag`; return the new ETag,
        or raise `PreconditionFailed`."""
        if self.protocol == "memory":
            with _MEMORY_GUARD:
                current = self.fs.cat_file(self.path(key)) if self.fs.exists(self.path(key)) else None
                if (current is None) != (etag is None) or (current is not None and _md5(current) != etag):
                    raise PreconditionFailed(f"{self.uri(key)} changed (expected {etag or 'absent'})")
                self.fs.pipe_file(self.path(key), data)
            return _md5(data)
        try:
            if etag is None:
                out = self.fs.pipe_file(self.path(key), data, mode="create")
            else:
                out = self.fs.pipe_file(self.path(key), data, IfMatch=etag)
        except (FileExistsError, OSError) as exc:
            if isinstance(exc, FileExistsError) or _lost_condition(exc):
                raise PreconditionFailed(f"{self.uri(key)} changed (expected {etag or 'absent'})") from exc
            raise
        return _etag_of(out) or self._etag_after_put(key)

    def delete(self, keys: Iterable[str]) -> int:
        """Delete `keys` (missing ones are ignored); return how many were asked for."""
        paths = [self.path(k) for k in keys]
        if not paths:
            return 0
        try:
            self.fs.rm(paths)
        except FileNotFoundError:
            for p in paths:
                try:
                    self.fs.rm_file(p)
                except FileNotFoundError:
                    pass
        return len(paths)

    # --- helpers ---
    @property
    def _is_s3(self) -> bool:
        return self.protocol in ("s3", "s3a")

    def _etag_after_put(self, key: str) -> str:
        found = self.info(key)
        return found.etag if found else ""

    def _info(self, key: str, meta: Mapping[str, Any]) -> ObjectInfo:
        modified = meta.get("LastModified") or meta.get("created") or meta.get("mtime") or 0
        if isinstance(modified, dt.datetime):
            modified = modified.timestamp()
        etag = str(meta.get("ETag") or meta.get("etag") or "")
        if not etag and self.protocol == "memory":
            etag = _md5(self.fs.cat_file(self.path(key)))
        return ObjectInfo(key=key, size=int(meta.get("size") or 0), etag=etag, modified=float(modified))


def _md5(data: bytes) -> str:
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'


def _etag_of(out: Any) -> str | None:
    if isinstance(out, Mapping) and out.get("ETag"):
        return str(out["ETag"])
    return None


def _lost_condition(exc: BaseException) -> bool:
    """Whether an S3 error is a lost condition (412 PreconditionFailed, 409 ConditionalRequestConflict)."""
    cause = exc.__cause__ or exc.__context__
    response = getattr(cause, "response", None) or {}
    code = str((response.get("Error") or {}).get("Code", ""))
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "412") or status in (409, 412)
