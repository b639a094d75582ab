"""What every URL-scheme source implements, and the bounded, sniffing body reader they share."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from visprep.images.sniff import SNIFF_BYTES, describe_non_image, sniff_format

READ_CHUNK_BYTES = 256 * 1024
_MAX_HEADER_SHOWN = 80


@dataclass(frozen=True)
class AttemptOutcome:
    """The result of one attempt at one URL, before the client decides whether to retry.

    Attributes:
        status: "ok" or a failure code (see `visprep.fetch.result.FetchStatus`).
        reason: Human-readable explanation; "" when ok.
        final_url: Where the attempt ended (after redirects).
        data: Body bytes when ok.
        format: Sniffed image format when ok.
        http_status: Last HTTP status code seen, if any.
        retryable: Whether another attempt may succeed (timeouts, connection errors, 5xx, 429).
        retry_after_s: Delay the server asked for (Retry-After), if any.
    """

    status: str
    reason: str
    final_url: str
    data: bytes | None = None
    format: str | None = None
    http_status: int | None = None
    retryable: bool = False
    retry_after_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class FetchSource(Protocol):
    """One URL scheme's way of getting bytes. Sources never raise for per-URL failures."""

    def fetch_once(self, url: str, *, deadline: float) -> AttemptOutcome:
        """Make one attempt at `url`, giving up at `deadline` (a `time.monotonic()` value)."""
        ...


def read_image_body(
    read: Callable[[int], bytes],
    *,
    url: str,
    max_bytes: int,
    deadline: float | None = None,
    content_type: str | None = None,
    http_status: int | None = None,
) -> AttemptOutcome:
    """Read a body through `read(n)` into memory, stopping as soon as it is too large, late or not an image.

    Never holds more than `max_bytes + 1` bytes. The format is sniffed from the first `SNIFF_BYTES` bytes, so
    an HTML error page is refused after one chunk whatever its Content-Type.

    Args:
        read: Returns up to n bytes, b"" at end of body (a file's or an HTTP response's `read`).
        url: The URL being read, for the reason text.
        max_bytes: Largest body accepted.
        deadline: `time.monotonic()` value after which reading stops with "timeout".
        content_type: The declared Content-Type, quoted in the "not_image" reason.
        http_status: Copied into the outcome.

    Raises:
        Whatever `read` raises (timeouts, connection resets): the caller maps those to failure codes.
    """
    buffer = bytearray()
    fmt: str | None = None
    sniffed = False
    while True:
        chunk = read(min(READ_CHUNK_BYTES, max_bytes + 1 - len(buffer)))
        if not chunk:
            break
        buffer += chunk
        if len(buffer) > max_bytes:
            return AttemptOutcome(
                "too_large",
                f"{url}: body exceeds max_bytes={max_bytes} (read {len(buffer)} bytes, stopped)",
                url,
                http_status=http_status,
            )
        if not sniffed and len(buffer) >= SNIFF_BYTES:
            sniffed = True
            fmt = sniff_format(bytes(buffer[:SNIFF_BYTES]))
            if fmt is None:
                return _not_image(url, buffer, content_type, http_status)
        if deadline is not None and time.monotonic() > deadline:
            return AttemptOutcome(
                "timeout",
                f"{url}: body not complete within the time budget ({len(buffer)} bytes read)",
                url,
                http_status=http_status,
                retryable=True,
            )
    if not sniffed:
        fmt = sniff_format(bytes(buffer))
        if fmt is None:
            return _not_image(url, buffer, content_type, http_status)
    return AttemptOutcome("ok", "", url, data=bytes(buffer), format=fmt, http_status=http_status)


def _not_image(url: str, buffer: bytearray, content_type: str | None, http_status: int | None) -> AttemptOutcome:
    # The body itself is never quoted: a local secret or a hostile server's bytes would land in tables and logs.
    what = f"{len(buffer)} bytes read, {describe_non_image(buffer)}" if buffer else "empty body"
    declared = f", declared Content-Type {_quoted_header(content_type)}" if content_type else ""
    return AttemptOutcome(
        "not_image", f"{url}: not a recognised image format ({what}{declared})", url, http_status=http_status
    )


def _quoted_header(value: str) -> str:
    """A header value for a reason: repr-escaped (no control characters reach a log) and cut short."""
    shown = repr(value[:_MAX_HEADER_SHOWN])
    return shown + ("..." if len(value) > _MAX_HEADER_SHOWN else "")
