"""What one fetch produced: the bytes, or a failure code and a reason a person can act on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

FetchStatus = Literal[
    "ok",
    "http_4xx",
    "http_5xx",
    "timeout",
    "connection_error",
    "too_large",
    "not_image",
    "redirect_loop",
    "too_many_redirects",
    "blocked_address",
    "unsupported_scheme",
    "not_found",
    "invalid_url",
    "local_path_refused",
]
"""Every value `FetchResult.status` can take: "ok" or one failure code."""

FETCH_STATUSES: frozenset[str] = frozenset(get_args(FetchStatus))


@dataclass(frozen=True)
class FetchResult:
    """The outcome of fetching one URL.

    Attributes:
        url: The URL as given.
        ok: True iff `status == "ok"`; then `data` holds the body and `format` its sniffed image format.
        data: The body bytes (at most `FetchSettings.max_bytes`), or None on failure.
        format: Image format sniffed from the leading bytes ("jpeg", "png", ...), or None.
        status: "ok" or a failure code from `FetchStatus`.
        reason: Human-readable explanation naming the URL and the offending value; "" when ok.
        http_status: The last HTTP status code received, or None (non-HTTP source, or no response).
        attempts: How many times the URL was tried (1 + retries used).
        final_url: The URL the body came from after redirects (== url when there were none).
        elapsed_s: Wall-clock seconds spent on this URL, retries and backoff included.
    """

    url: str
    ok: bool
    data: bytes | None
    format: str | None
    status: str
    reason: str
    http_status: int | None
    attempts: int
    final_url: str
    elapsed_s: float
