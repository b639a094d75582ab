"""Fetcher.fetch_many: every URL exactly once, bounded concurrency, bounded read-ahead."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator

from http_fixtures import LoopbackServer

from visprep.fetch import Fetcher, FetchSettings


def test_fetch_many_yields_each_url_once_with_bounded_concurrency() -> None:
    settings = FetchSettings(concurrency=8, timeout_s=5.0, retries=1, backoff_s=0.01, allow_loopback=True)
    with LoopbackServer() as server, Fetcher(settings) as fetcher:
        urls = [server.url(f"/image/{i}?delay=0.002") for i in range(480)]
        urls += [server.url(f"/status/404?n={i}") for i in range(10)] + [f"ftp://x/{i}" for i in range(10)]
        results = list(fetcher.fetch_many(urls))
    assert Counter(r.url for r in results) == Counter(urls)
    assert sum(r.ok for r in results) == 480
    assert Counter(r.status for r in results if not r.ok) == {"http_4xx": 10, "unsupported_scheme": 10}
    assert 1 < server.max_active <= settings.concurrency


def test_fetch_many_reads_input_lazily() -> None:
    settings = FetchSettings(concurrency=4, allow_loopback=True)
    pulled = 0

    def endless() -> Iterator[str]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield server.url(f"/image/{i}")

    with LoopbackServer() as server, Fetcher(settings) as fetcher:
        stream = fetcher.fetch_many(endless())
        first = list(itertools.islice(stream, 20))
        stream.close()
    assert len(first) == 20 and all(r.ok for r in first)
    assert pulled <= 20 + 2 * settings.concurrency + 1


def test_fetch_many_empty() -> None:
    with Fetcher(FetchSettings()) as fetcher:
        assert list(fetcher.fetch_many([])) == []
