"""s3:// URLs through fsspec + s3fs, imported on first use."""

from __future__ import annotations

import threading
from typing import Any

from visprep.fetch.settings import FetchSettings
from visprep.fetch.source import AttemptOutcome, read_image_body

S3_INSTALL_HINT = "s3:// URLs need s3fs: pip install 'visprep[s3]' (or: pip install s3fs)"


class S3Source:
    """Reads s3://bucket/key objects with `FetchSettings.s3_options` (endpoint, credentials, ...) or, when it
    is None, credentials from the usual AWS chain (environment, config, role).

    The filesystem is built once per Fetcher, on the first s3:// URL; without s3fs installed each s3:// URL
    fails with status "unsupported_scheme" and a reason that says what to install.
    """

    def __init__(self, settings: FetchSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._filesystem: Any = None
        self._boto_errors: Any = None  # botocore.exceptions, once s3fs (which needs botocore) is imported

    def _get_filesystem(self) -> Any:
        with self._lock:
            if self._filesystem is None:
                import fsspec  # noqa: PLC0415 - heavy optional backend, imported on first s3:// URL

                try:
                    import s3fs  # noqa: F401, PLC0415
                    from botocore import exceptions as boto_errors  # noqa: PLC0415
                except ImportError as exc:
                    raise ImportError(S3_INSTALL_HINT) from exc
                self._boto_errors = boto_errors
                self._filesystem = fsspec.filesystem("s3", **_storage_options(self._settings))
            return self._filesystem

    def fetch_once(self, url: str, *, deadline: float) -> AttemptOutcome:
        """Read the object `url` names, refusing it by size before reading when the size is known."""
        try:
            filesystem = self._get_filesystem()
        except ImportError as exc:
            return AttemptOutcome("unsupported_scheme", f"{url}: {exc}", url)
        path = url[len("s3://"):]
        if "/" not in path.strip("/"):
            return AttemptOutcome("invalid_url", f"{url}: expected s3://bucket/key", url)
        max_bytes = self._settings.max_bytes
        try:
            with filesystem.open(path, "rb") as handle:
                size = getattr(handle, "size", None)
                if isinstance(size, int) and size > max_bytes:
                    return AttemptOutcome("too_large", f"{url}: object size {size} exceeds max_bytes={max_bytes}", url)
                return read_image_body(handle.read, url=url, max_bytes=max_bytes, deadline=deadline)
        except FileNotFoundError as exc:
            return AttemptOutcome("not_found", f"{url}: no such object ({exc})", url)
        except PermissionError as exc:
            return AttemptOutcome("http_4xx", f"{url}: access denied ({exc})", url)
        except ValueError as exc:
            return AttemptOutcome("invalid_url", f"{url}: {exc}", url)
        except TimeoutError as exc:
            return AttemptOutcome("timeout", f"{url}: {type(exc).__name__}: {exc}", url, retryable=True)
        except OSError as exc:
            return AttemptOutcome("connection_error", f"{url}: {type(exc).__name__}: {exc}", url, retryable=True)
        except self._boto_errors.BotoCoreError as exc:
            # s3fs turns S3 error responses into OSErrors but lets botocore's own errors through: endpoint
            # unreachable, connection dropped, no credentials, ...
            return _botocore_failure(url, exc, self._boto_errors)


def _botocore_failure(url: str, exc: Exception, boto_errors: Any) -> AttemptOutcome:
    """Map a botocore error that s3fs did not translate: transport errors may pass, the rest will not."""
    reason = f"{url}: {type(exc).__name__}: {exc}"
    transient = isinstance(exc, (boto_errors.ConnectionError, boto_errors.HTTPClientError))
    return AttemptOutcome("connection_error", reason, url, retryable=transient)


def _storage_options(settings: FetchSettings) -> dict[str, Any]:
    """s3fs keyword arguments: `settings.s3_options` over defaults that keep one attempt near `timeout_s`.

    The defaults: connect/read timeouts of `settings.timeout_s`, and no retries inside botocore (they multiply
    with s3fs's own: about 25 tries and 10 s per attempt at an unreachable endpoint); the Fetcher retries
    with its own backoff and `settings.retries`.
    """
    options = dict(settings.s3_options or {})
    defaults = {
        "connect_timeout": settings.timeout_s,
        "read_timeout": settings.timeout_s,
        "retries": {"total_max_attempts": 1},
    }
    options["config_kwargs"] = {**defaults, **dict(options.get("config_kwargs") or {})}
    return options
