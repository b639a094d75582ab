"""Fetcher settings: one frozen record, validated once when built."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, get_args

LocalPathPolicy = Literal["catalog_dir", "any", "none"]
"""Which local paths (bare or file://) may be read: see `FetchSettings.local_paths`."""

LOCAL_PATH_POLICIES: tuple[str, ...] = get_args(LocalPathPolicy)


@dataclass(frozen=True)
class FetchSettings:
    """How `Fetcher` downloads.

    Attributes:
        concurrency: Worker threads of `Fetcher.fetch_many`, and connections kept per host.
        timeout_s: Budget in seconds for one attempt (connect, redirects and body together). A single blocked
            socket operation is also cut off after at most this long.
        retries: Extra attempts after a retryable failure (timeout, connection error, HTTP 5xx, HTTP 429).
        backoff_s: Base delay before the first retry; doubles per retry, jittered to 50-100 %, capped at
            `max_backoff_s`.
        max_backoff_s: Cap on one backoff delay, and the longest `Retry-After` (HTTP 429/503) honoured;
            a longer `Retry-After` ends the retries.
        max_bytes: Largest body accepted, in bytes; enforced while streaming.
        max_redirects: Most redirects followed for one URL.
        allow_private: Permit private-network addresses (RFC 1918, CGNAT, ULA, ...).
        allow_loopback: Permit loopback addresses (127.0.0.0/8, ::1).
        user_agent: Value of the User-Agent header.
        ca_bundle: Path of a PEM file of CA certificates that https:// servers are verified against instead
            of the system trust store (e.g. a company CA); None uses the default store. Verification is never
            off.
        s3_options: Storage options passed to `s3fs.S3FileSystem` for s3:// URLs (e.g. `endpoint_url`, `key`,
            `secret`, `client_kwargs`, `anon`); None uses the usual AWS credential chain. Kept as a read-only
            copy, left out of `repr` (it may hold secrets) and of the hash. `config_kwargs` given here are
            merged over the connect/read timeouts derived from `timeout_s`.
        local_paths: Which local paths (bare or file://) are read. "catalog_dir": only a path that, symlinks
            resolved, lies inside one of the folders the caller names for that URL (`local_roots` of
            `Fetcher.fetch`: the folder of the catalog file that named it); a URL fetched without `local_roots`
            was named by the caller itself and is not restricted by folder. "any": any regular file. "none":
            no local path. Whatever the policy, only regular files are read: FIFOs, devices, sockets,
            directories and anything under /proc, /sys or /dev are refused before they are opened.
    """

    concurrency: int = 32
    timeout_s: float = 10.0
    retries: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_bytes: int = 20_000_000
    max_redirects: int = 5
    allow_private: bool = False
    allow_loopback: bool = False
    user_agent: str = "visprep/0.1 (+https://github.com/visprep)"
    ca_bundle: str | None = None
    s3_options: Mapping[str, Any] | None = field(default=None, repr=False, hash=False)
    local_paths: LocalPathPolicy = "catalog_dir"

    def __post_init__(self) -> None:
        _check_int("concurrency", self.concurrency, minimum=1)
        _check_int("retries", self.retries, minimum=0)
        _check_int("max_bytes", self.max_bytes, minimum=1)
        _check_int("max_redirects", self.max_redirects, minimum=0)
        _check_number("timeout_s", self.timeout_s, positive=True)
        _check_number("backoff_s", self.backoff_s, positive=False)
        _check_number("max_backoff_s", self.max_backoff_s, positive=False)
        for name in ("allow_private", "allow_loopback"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"FetchSettings.{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.user_agent, str) or not self.user_agent or "\n" in self.user_agent:
            raise ValueError(f"FetchSettings.user_agent must be a one-line non-empty str, got {self.user_agent!r}")
        if self.local_paths not in LOCAL_PATH_POLICIES:
            raise ValueError(f"FetchSettings.local_paths must be one of {', '.join(LOCAL_PATH_POLICIES)}, "
                             f"got {self.local_paths!r}")
        if self.ca_bundle is not None:
            if not isinstance(self.ca_bundle, str):
                raise TypeError(f"FetchSettings.ca_bundle must be a str path or None, got {self.ca_bundle!r}")
            if not os.path.isfile(self.ca_bundle):
                raise ValueError(
                    f"FetchSettings.ca_bundle must name an existing PEM file, got {self.ca_bundle!r}"
                )
        if self.s3_options is not None:
            if not isinstance(self.s3_options, Mapping):
                kind = type(self.s3_options).__name__
                raise TypeError(f"FetchSettings.s3_options must be a mapping or None, got {kind}")
            bad = [key for key in self.s3_options if not isinstance(key, str)]
            if bad:
                raise TypeError(f"FetchSettings.s3_options keys must be str, got {bad[0]!r}")
            # A private read-only copy: the caller mutating its dict later cannot change a built Fetcher.
            object.__setattr__(self, "s3_options", MappingProxyType(dict(self.s3_options)))


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"FetchSettings.{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"FetchSettings.{name} must be >= {minimum}, got {value!r}")


def _check_number(name: str, value: object, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"FetchSettings.{name} must be a number, got {value!r}")
    if value != value or value < 0 or (positive and value == 0) or value == float("inf"):
        kind = "> 0" if positive else ">= 0"
        raise ValueError(f"FetchSettings.{name} must be finite and {kind}, got {value!r}")
