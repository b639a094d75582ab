"""Fetcher settings: one frozen record, validated once when built, by the `[fetch]` section's own model."""

from __future__ import annotations

import os
from types import MappingProxyType

from pydantic import model_validator

from visprep.config import FetchClientConfig, FetchConfig


class FetchSettings(FetchClientConfig):
    """How `Fetcher` downloads: the `[fetch]` section's client options, with their defaults and validation
    (`visprep.config.FetchClientConfig`); built from a workspace's config by `from_config`.

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

    @model_validator(mode="after")
    def _usable_here(self) -> FetchSettings:
        # Checked when a fetcher is set up, not at config load: the file must exist on the machine that fetches.
        if self.ca_bundle is not None and not os.path.isfile(self.ca_bundle):
            raise ValueError(f"FetchSettings.ca_bundle must name an existing PEM file, got {self.ca_bundle!r}")
        if self.s3_options is not None:
            # A private read-only copy: the caller mutating its dict later cannot change a built Fetcher.
            object.__setattr__(self, "s3_options", MappingProxyType(dict(self.s3_options)))
        return self

    def __hash__(self) -> int:
        """Hash of every option but `s3_options` (a mapping), so settings can key a dict."""
        return hash(tuple(getattr(self, name) for name in type(self).model_fields if name != "s3_options"))

    @classmethod
    def from_config(cls, cfg: FetchConfig) -> FetchSettings:
        """The settings of a workspace's `[fetch]` section (its client options; the rest belong to the stage)."""
        return cls(**cfg.model_dump(include=set(FetchClientConfig.model_fields)))
