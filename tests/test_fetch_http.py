"""Fetcher over HTTP against the loopback fixture server: statuses, retries, redirects, limits."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from http_fixtures import LoopbackServer, check_fetch_invariants, make_jpeg

from visprep.fetch import Fetcher, FetchSettings

FAST = FetchSettings(concurrency=4, timeout_s=2.0, retries=3, backoff_s=0.01, allow_loopback=True)


@pytest.fixture(scope="module")
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer(images=[make_jpeg(seed=1), make_jpeg(32, 32, seed=2)]) as srv:
        yield srv


@pytest.fixture
def fetcher() -> Iterator[Fetcher]:
    with Fetcher(FAST) as f:
        yield f


def test_image_ok(server: LoopbackServer, fetcher: Fetcher) -> None:
    result = fetcher.fetch(server.url("/image/1.jpg"))
    check_fetch_invariants(result)
    assert result.ok and result.format == "jpeg" and result.http_status == 200
    assert result.data == server.images[1]
    assert result.attempts == 1 and result.final_url == result.url and result.elapsed_s > 0


def test_html_served_as_jpeg_is_not_image(server: LoopbackServer, fetcher: Fetcher) -> None:
    result = fetcher.fetch(server.url("/html-as-jpeg"))
    check_fetch_invariants(result)
    assert result.status == "not_image" and "image/jpeg" in result.reason and result.attempts == 1


def test_404_is_not_retried(server: LoopbackServer, fetcher: Fetcher) -> None:
    before = server.hits["/status/404"]
    result = fetcher.fetch(server.url("/status/404"))
    check_fetch_invariants(result)
    assert (result.status, result.http_status, result.attempts) == ("http_4xx", 404, 1)
    assert "404" in result.reason
    assert server.hits["/status/404"] - before == 1


def test_500_twice_then_200_is_ok_after_three_attempts(server: LoopbackServer, fetcher: Fetcher) -> None:
    result = fetcher.fetch(server.url("/flaky/a?fail=2"))
    check_fetch_invariants(result)
    assert result.ok and result.attempts == 3
    assert server.hits["/flaky/a"] == 3


def test_500_forever_gives_up_after_retries(server: LoopbackServer, fetcher: Fetcher) -> None:
    result = fetcher.fetch(server.url("/status/503"))
    check_fetch_invariants(result)
    assert (result.status, result.http_status, result.attempts) == ("http_5xx", 503, FAST.retries + 1)


def test_429_honours_short_retry_after_and_gives_up_on_long(server: LoopbackServer, fetcher: Fetcher) -> None:
    short = fetcher.fetch(server.url("/status/429?retry_after=0"))
    assert (short.status, short.attempts) == ("http_4xx", FAST.retries + 1)
    long = fetcher.fetch(server.url("/status/429?retry_after=3600"))
    assert (long.status, long.attempts) == ("http_4xx", 1)
    assert "Retry-After" in long.reason


def test_timeout_is_retried_then_reported(server: LoopbackServer) -> None:
    settings = FetchSettings(timeout_s=0.3, retries=1, backoff_s=0.01, allow_loopback=True)
    with Fetcher(settings) as fetcher:
        result = fetcher.fetch(server.url("/slow?delay=1.5"))
    check_fetch_invariants(result)
    assert (result.status, result.attempts) == ("timeout", 2)
    assert result.elapsed_s < 1.5


def test_redirect_chain_within_limit(server: LoopbackServer, fetcher: Fetcher) -> None:
    result = fetcher.fetch(server.url("/redirect/5"))
    check_fetch_invariants(result)
    assert result.ok and result.final_url == server.url("/redirect/0")


def test_redirect_chain_too_long(server: LoopbackServer, fetcher: Fetcher) -> None:
    result = fetcher.fetch(server.url("/redirect/6"))
    check_fetch_invariants(result)
    assert result.status == "too_many_redirects" and "max_redirects=5" in result.reason


def test_redirect_loop(server: LoopbackServer, fetcher: Fetcher) -> None:
    result = fetcher.fetch(server.url("/loop/a"))
    check_fetch_invariants(result)
    assert result.status == "redirect_loop" and result.attempts == 1


@pytest.mark.parametrize("target", ["http://10.0.0.1/x.jpg", "http://169.254.169.254/latest/meta-data/",
                                    "http://[::ffff:10.0.0.1]/x.jpg", "http://0.0.0.0:1/x.jpg"])
def test_redirect_to_blocked_address_never_connects(
    server: LoopbackServer, fetcher: Fetcher, connections: list[str], target: str
) -> None:
    result = fetcher.fetch(server.url(f"/redirect-to?url={target}"))
    check_fetch_invariants(result)
    assert result.status == "blocked_address" and result.final_url == target
    host = target.split("//")[1].split("/")[0].rsplit(":", 1)[0].strip("[]")
    assert host.removeprefix("::ffff:") in result.reason
    assert all(address == "127.0.0.1" for address in connections)


def test_redirect_to_file_scheme_is_refused(server: LoopbackServer, fetcher: Fetcher) -> None:
    result = fetcher.fetch(server.url("/redirect-to?url=file:///etc/hostname"))
    assert result.status == "unsupported_scheme" and result.data is None


def test_loopback_refused_unless_allowed(server: LoopbackServer, connections: list[str]) -> None:
    before = server.requests
    with Fetcher(FetchSettings(allow_private=True)) as fetcher:  # private does not imply loopback
        literal = fetcher.fetch(server.url("/image/0"))
        named = fetcher.fetch(f"http://localhost:{server.port}/image/0")
    for result in (literal, named):
        check_fetch_invariants(result)
        assert result.status == "blocked_address" and "loopback" in result.reason
    assert server.requests == before and connections == []


def test_connection_pinned_to_checked_address(server: LoopbackServer, fetcher: Fetcher,
                                              monkeypatch: pytest.MonkeyPatch, connections: list[str]) -> None:
    """The name is resolved once, by the guard; the connection goes to that address with the name as Host."""
    calls: list[str] = []

    def fake_getaddrinfo(host: str, port: object, *args: object, **kwargs: object) -> list[tuple]:
        calls.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    result = fetcher.fetch(f"http://images.example.test:{server.port}/image/0")
    assert result.ok
    assert calls[0] == "images.example.test"
    assert set(calls[1:]) <= {"127.0.0.1"}  # urllib3 "resolves" the pinned literal; the name is never re-asked
    assert connections == ["127.0.0.1"] or connections == []  # [] when a pooled connection was reused
    assert server.last_host_header == f"images.example.test:{server.port}"


def test_a_host_is_resolved_once_per_fetcher_not_per_request(server: LoopbackServer, fetcher: Fetcher,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The checked DNS answer is reused (guard.DNS_CACHE_TTL_S) instead of asking the resolver for every image."""
    calls: list[str] = []

    def fake_getaddrinfo(host: str, port: object, *args: object, **kwargs: object) -> list[tuple]:
        calls.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    results = list(fetcher.fetch_many([f"http://images.example.test:{server.port}/image/{i}" for i in range(6)]))
    assert all(r.ok for r in results) and len(results) == 6
    assert calls.count("images.example.test") == 1


@pytest.mark.parametrize("path", ["/large?size=1000000", "/chunked?size=1000000"])
def test_oversized_body_is_too_large(server: LoopbackServer, path: str) -> None:
    with Fetcher(FetchSettings(max_bytes=100_000, allow_loopback=True)) as fetcher:
        result = fetcher.fetch(server.url(path))
        again = fetcher.fetch(server.url("/image/0"))  # the aborted connection must not poison the pool
    check_fetch_invariants(result)
    assert result.status == "too_large" and "100000" in result.reason and result.attempts == 1
    assert again.ok


def test_body_at_exactly_the_limit_is_accepted(server: LoopbackServer) -> None:
    with Fetcher(FetchSettings(max_bytes=50_000, allow_loopback=True)) as fetcher:
        assert fetcher.fetch(server.url("/chunked?size=50000")).ok
        assert fetcher.fetch(server.url("/chunked?size=50001")).status == "too_large"


def test_connection_refused_is_retried(fetcher: Fetcher) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = fetcher.fetch(f"http://127.0.0.1:{port}/x.jpg")
    check_fetch_invariants(result)
    assert (result.status, result.attempts) == ("connection_error", FAST.retries + 1)


@pytest.mark.parametrize("url", ["http://", "http://127.0.0.1:99999/x", "http:///nohost"])
def test_invalid_urls(fetcher: Fetcher, url: str) -> None:
    result = fetcher.fetch(url)
    check_fetch_invariants(result)
    assert result.status == "invalid_url"
