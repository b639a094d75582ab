"""Local files: file:// URLs and bare paths."""

from __future__ import annotations

import os
import stat
from urllib.parse import urlsplit
from urllib.request import url2pathname

from visprep.fetch.settings import FetchSettings
from visprep.fetch.source import AttemptOutcome, read_image_body


class LocalFileSource:
    """Reads file:// URLs (host empty or "localhost", path percent-decoded) and bare local paths (as given)."""

    def __init__(self, settings: FetchSettings) -> None:
        self._max_bytes = settings.max_bytes

    def fetch_once(self, url: str, *, deadline: float) -> AttemptOutcome:
        """Read the file `url` names; `deadline` bounds the read loop (local reads rarely hit it)."""
        if url.lower().startswith("file:"):
            parts = urlsplit(url)
            if parts.netloc not in ("", "localhost"):
                return AttemptOutcome(
                    "invalid_url", f"{url}: file:// URL names remote host {parts.netloc!r}", url
                )
            path = url2pathname(parts.path)
        else:
            path = url
        if not path:
            return AttemptOutcome("invalid_url", f"{url!r}: empty path", url)
        try:
            with open(path, "rb") as handle:
                info = os.fstat(handle.fileno())
                if stat.S_ISREG(info.st_mode) and info.st_size > self._max_bytes:
                    return AttemptOutcome(
                        "too_large", f"{url}: file size {info.st_size} exceeds max_bytes={self._max_bytes}", url
                    )
                return read_image_body(handle.read, url=url, max_bytes=self._max_bytes, deadline=deadline)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            return AttemptOutcome("not_found", f"{url}: no such file ({exc.strerror}: {path})", url)
        except PermissionError as exc:
            return AttemptOutcome("not_found", f"{url}: cannot read file ({exc.strerror}: {path})", url)
        except (OSError, ValueError) as exc:  # ValueError: embedded NUL byte in the path
            return AttemptOutcome("invalid_url" if isinstance(exc, ValueError) else "connection_error",
                                  f"{url}: cannot read {path!r} ({exc})", url)
