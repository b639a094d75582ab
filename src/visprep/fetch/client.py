"""`Fetcher`: one URL or millions, any supported scheme, with retries and bounded concurrency."""

from __future__ import annotations

import functools
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import urllib3

from visprep.fetch.http_source import HttpSource
from visprep.fetch.local_source import LocalFileSource
from visprep.fetch.result import FetchResult
from visprep.fetch.s3_source import S3Source
from visprep.fetch.settings import FetchSettings
from visprep.fetch.source import AttemptOutcome, FetchSource

LOCAL_PATH_SCHEME = ""
"""Registry key for bare local paths (a string without a URL scheme)."""


class Fetcher:
    """Downloads images from http(s)://, file://, bare local paths and s3:// URLs.

    Thread-safe: `fetch` may be called from many threads at once. Owns a urllib3 `PoolManager` (connections
    are reused across calls); use it as a context manager or call `close`.

    Example:
        >>> with Fetcher(FetchSettings(concurrency=16)) as fetcher:
        ...     for result in fetcher.fetch_many(urls):
        ...         if result.ok: store(result.data, result.format)
    """

    def __init__(self, settings: FetchSettings) -> None:
        if not isinstance(settings, FetchSettings):
            raise TypeError(f"Fetcher needs a FetchSettings, got {type(settings).__name__}")
        self.settings = settings
        self._pool = urllib3.PoolManager(
            num_pools=max(64, 2 * settings.concurrency),
            maxsize=settings.concurrency,
            block=False,
            retries=False,
        )
        http_source = HttpSource(settings, self._pool)
        local_source = LocalFileSource(settings)
        self._sources: dict[str, FetchSource] = {
            "http": http_source,
            "https": http_source,
            "file": local_source,
            LOCAL_PATH_SCHEME: local_source,
            "s3": S3Source(settings),
        }
        self._closed = threading.Event()

    @property
    def schemes(self) -> tuple[str, ...]:
        """URL schemes this fetcher accepts ("" stands for a bare local path)."""
        return tuple(self._sources)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close pooled connections. Further `fetch` calls raise RuntimeError."""
        self._closed.set()
        self._pool.clear()

    def fetch(self, url: str, *, local_roots: Sequence[str] | None = None) -> FetchResult:
        """Fetch one URL, retrying retryable failures with jittered exponential backoff.

        Args:
            url: http(s)://, file://, s3:// URL or a bare local path.
            local_roots: For a local path under `local_paths="catalog_dir"`: the folders it must lie inside (the
                folders of the files, e.g. catalogs, that named `url`; empty refuses it). None means the caller
                names `url` itself and no folder rule applies. Ignored for remote URLs.

        Returns:
            A `FetchResult`; per-URL failures are reported in it, never raised.

        Raises:
            TypeError: if `url` is not a str, or `local_roots` is a single str instead of a sequence of them.
            RuntimeError: if the fetcher is closed.
        """
        if not isinstance(url, str):
            raise TypeError(f"Fetcher.fetch: url must be a str, got {type(url).__name__} {url!r}")
        if isinstance(local_roots, (str, bytes)):
            raise TypeError(f"Fetcher.fetch: local_roots must be a sequence of folders, got the single "
                            f"{type(local_roots).__name__} {local_roots!r} (for url {url!r})")
        if self._closed.is_set():
            raise RuntimeError("Fetcher.fetch called after close()")
        start = time.monotonic()
        source, failure = self._source_for(url)
        if source is None:
            return _result(url, failure, attempts=0, start=start)
        attempt: Callable[..., AttemptOutcome] = source.fetch_once
        if local_roots is not None and isinstance(source, LocalFileSource):
            attempt = functools.partial(source.fetch_once, local_roots=tuple(local_roots))
        settings = self.settings
        attempts = 0
        while True:
            attempts += 1
            outcome = attempt(url, deadline=time.monotonic() + settings.timeout_s)
            if outcome.ok or not outcome.retryable or attempts > settings.retries:
                break
            delay = self._backoff_delay(attempts, outcome.retry_after_s)
            if delay is None:
                outcome = AttemptOutcome(
                    outcome.status,
                    f"{outcome.reason}; Retry-After {outcome.retry_after_s:.0f} s exceeds "
                    f"max_backoff_s={settings.max_backoff_s}, not retried",
                    outcome.final_url,
                    http_status=outcome.http_status,
                )
                break
            time.sleep(delay)
        return _result(url, outcome, attempts=attempts, start=start)

    def fetch_many(
        self, urls: Iterable[str], *, local_roots: Mapping[str, Sequence[str]] | None = None
    ) -> Iterator[FetchResult]:
        """Fetch `urls` concurrently and yield each result as it finishes (not in input order).

        Uses `settings.concurrency` worker threads and pulls at most `2 * concurrency` URLs ahead of the
        consumer, so memory stays flat however long `urls` is. Each URL yields exactly one result. Closing the
        generator early cancels URLs not yet started and waits for the ones in flight.

        Args:
            urls: URLs as `fetch` takes them.
            local_roots: URL -> the folders its local path must lie inside (see `fetch`). When given, a URL
                missing from it has no known folder: under `local_paths="catalog_dir"` its local path is refused.

        Raises:
            TypeError: if an item of `urls` is not a str (raised when that item is reached).
        """
        url_iter = iter(urls)
        concurrency = self.settings.concurrency
        max_in_flight = 2 * concurrency
        executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="visprep-fetch")
        # Finished futures arrive on a queue from their done-callbacks: one wake-up per result, where
        # `concurrent.futures.wait` would hook and unhook a waiter on every pending future each time.
        finished: queue.SimpleQueue[Future[FetchResult]] = queue.SimpleQueue()
        pending: set[Future[FetchResult]] = set()
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < max_in_flight:
                    try:
                        url = next(url_iter)
                    except StopIteration:
                        exhausted = True
                        break
                    if not isinstance(url, str):
                        raise TypeError(f"Fetcher.fetch_many: every url must be a str, got {url!r}")
                    roots = None if local_roots is None else local_roots.get(url, ())
                    future = executor.submit(self.fetch, url, local_roots=roots)
                    pending.add(future)
                    future.add_done_callback(finished.put)
                if not pending:
                    return
                future = finished.get()
                pending.discard(future)
                yield future.result()
        finally:
            for future in pending:
                future.cancel()
            executor.shutdown(wait=True, cancel_futures=True)

    def _source_for(self, url: str) -> tuple[FetchSource | None, AttemptOutcome]:
        if not url.strip():
            return None, AttemptOutcome("invalid_url", f"{url!r}: empty URL", url)
        try:
            scheme = urlsplit(url).scheme.lower()
        except ValueError as exc:
            return None, AttemptOutcome("invalid_url", f"{url}: cannot parse URL ({exc})", url)
        source = self._sources.get(scheme)
        if source is None:
            known = ", ".join(f"{s}://" for s in self._sources if s) + ", or a local path"
            return None, AttemptOutcome(
                "unsupported_scheme", f"{url}: scheme {scheme!r} is not supported (use {known})", url
            )
        return source, AttemptOutcome("ok", "", url)

    def _backoff_delay(self, attempt: int, retry_after_s: float | None) -> float | None:
        """Seconds to wait before retry number `attempt`; None if the server asks for longer than the cap."""
        cap = self.settings.max_backoff_s
        if retry_after_s is not None:
            return None if retry_after_s > cap else retry_after_s
        base = min(cap, self.settings.backoff_s * 2 ** (attempt - 1))
        return base * random.uniform(0.5, 1.0)  # jitter spreads retries of many workers hitting one host


def _result(url: str, outcome: AttemptOutcome, *, attempts: int, start: float) -> FetchResult:
    return FetchResult(
        url=url,
        ok=outcome.ok,
        data=outcome.data,
        format=outcome.format,
        status=outcome.status,
        reason=outcome.reason,
        http_status=outcome.http_status,
        attempts=attempts,
        final_url=outcome.final_url,
        elapsed_s=time.monotonic() - start,
    )
