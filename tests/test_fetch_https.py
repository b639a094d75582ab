"""Fetcher over HTTPS against loopback servers with certificates from a test CA made at test time."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from http_fixtures import LoopbackServer, check_fetch_invariants, make_jpeg
from tls_fixtures import HttpsLoopbackServer, LocalCA

from visprep.fetch import Fetcher, FetchResult, FetchSettings

IMAGES = [make_jpeg(seed=1), make_jpeg(32, 32, seed=2)]
FAKE_HOST = "images.visprep.test"  # resolved to 127.0.0.1 by the `fake_dns` fixture only
OTHER_FAKE_HOST = "other.visprep.test"


@pytest.fixture(scope="module")
def ca() -> LocalCA:
    return LocalCA()


@pytest.fixture(scope="module")
def ca_bundle(ca: LocalCA, tmp_path_factory: pytest.TempPathFactory) -> str:
    return ca.write_pem(tmp_path_factory.mktemp("tls") / "ca.pem")


@pytest.fixture(scope="module")
def https_server(ca: LocalCA) -> Iterator[HttpsLoopbackServer]:
    with HttpsLoopbackServer(ca, hostnames=("localhost", "127.0.0.1", FAKE_HOST), images=IMAGES) as srv:
        yield srv


@pytest.fixture(scope="module")
def http_server() -> Iterator[LoopbackServer]:
    with LoopbackServer(images=IMAGES) as srv:
        yield srv


def _settings(ca_bundle: str | None) -> FetchSettings:
    return FetchSettings(
        concurrency=4, timeout_s=3.0, retries=2, backoff_s=0.01, allow_loopback=True, ca_bundle=ca_bundle
    )


@pytest.fixture
def fetcher(ca_bundle: str) -> Iterator[Fetcher]:
    with Fetcher(_settings(ca_bundle)) as f:
        yield f


@pytest.fixture
def untrusting_fetcher() -> Iterator[Fetcher]:
    """Verifies against the default trust store, which does not hold the test CA."""
    with Fetcher(_settings(None)) as f:
        yield f


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolve FAKE_HOST and OTHER_FAKE_HOST to 127.0.0.1; every other name as before."""
    original = socket.getaddrinfo

    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host in (FAKE_HOST, OTHER_FAKE_HOST):
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", int(port)))]
        return original(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)


def _assert_certificate_failure(result: FetchResult, *words: str) -> None:
    """A refused certificate is a per-URL failure, reported once and not retried (retrying cannot help)."""
    check_fetch_invariants(result)
    assert (result.status, result.attempts, result.http_status) == ("connection_error", 1, None)
    assert "SSLError" in result.reason
    for word in words:
        assert word in result.reason


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_https_ok_when_ca_trusted(https_server: HttpsLoopbackServer, fetcher: Fetcher, host: str) -> None:
    result = fetcher.fetch(https_server.url("/image/1.jpg", host=host))
    check_fetch_invariants(result)
    assert result.ok and result.format == "jpeg" and result.http_status == 200
    assert result.data == IMAGES[1] and result.attempts == 1


def test_https_connections_are_reused(https_server: HttpsLoopbackServer, fetcher: Fetcher) -> None:
    before = len(https_server.sni_names)
    results = [fetcher.fetch(https_server.url(f"/image/{i}", host="localhost")) for i in range(5)]
    assert all(r.ok for r in results)
    assert len(https_server.sni_names) - before == 1  # one handshake, then keep-alive


@pytest.mark.usefixtures("fake_dns")
def test_one_tls_context_for_all_connections(https_server: HttpsLoopbackServer, ca_bundle: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The CA bundle is loaded once per fetcher, not once per new connection (tens of ms of CPU each)."""
    loads: list[object] = []
    original = ssl.SSLContext.load_verify_locations

    def counting(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> None:
        loads.append(args or kwargs)
        original(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counting)
    before = len(https_server.sni_names)
    with Fetcher(_settings(ca_bundle)) as fetcher:
        # Three names, three pools, three handshakes (each checks its own name).
        hosts = ("localhost", "127.0.0.1", FAKE_HOST)
        results = [fetcher.fetch(https_server.url("/image/0", host=h)) for h in hosts]
    assert all(r.ok for r in results)
    assert len(https_server.sni_names) - before == 3  # (an IP literal sends no SNI: None)
    assert len(loads) == 1


def test_unreadable_ca_bundle_is_a_tls_failure_not_retried(https_server: HttpsLoopbackServer,
                                                           tmp_path: Path) -> None:
    """A CA file that is no PEM fails each https URL once, as a TLS failure, whenever the store is loaded."""
    bad = tmp_path / "not-a-ca.pem"
    bad.write_text("not a certificate\n")
    with Fetcher(_settings(str(bad))) as fetcher:
        result = fetcher.fetch(https_server.url("/image/0", host="localhost"))
    _assert_certificate_failure(result)


def test_untrusted_certificate_is_a_clean_failure(
    https_server: HttpsLoopbackServer, untrusting_fetcher: Fetcher
) -> None:
    failures = https_server.tls_failures
    result = untrusting_fetcher.fetch(https_server.url("/image/0", host="localhost"))
    _assert_certificate_failure(result, "CERTIFICATE_VERIFY_FAILED")
    # The client gave up during the handshake: no request reached the server (its side records that late).
    deadline = time.monotonic() + 2.0
    while https_server.tls_failures == failures and time.monotonic() < deadline:
        time.sleep(0.01)
    assert https_server.tls_failures == failures + 1


def test_certificate_of_another_ca_is_refused(https_server: HttpsLoopbackServer, tmp_path: Path) -> None:
    other_bundle = LocalCA("some other CA").write_pem(tmp_path / "other.pem")
    with Fetcher(_settings(other_bundle)) as fetcher:
        result = fetcher.fetch(https_server.url("/image/0", host="localhost"))
    _assert_certificate_failure(result, "CERTIFICATE_VERIFY_FAILED")


def test_certificate_must_name_the_url_host(ca: LocalCA, fetcher: Fetcher) -> None:
    with HttpsLoopbackServer(ca, hostnames=("localhost",), images=IMAGES) as server:
        assert fetcher.fetch(server.url("/image/0", host="localhost")).ok
        result = fetcher.fetch(server.url("/image/0", host="127.0.0.1"))  # same server, name not in the cert
    _assert_certificate_failure(result, "127.0.0.1")


@pytest.mark.usefixtures("fake_dns")
def test_pinned_address_still_checks_certificate_and_sends_sni(
    ca: LocalCA, fetcher: Fetcher, connections: list[str]
) -> None:
    """The fetcher connects to the address it checked; TLS still uses the URL's host for SNI and the check."""
    with HttpsLoopbackServer(ca, hostnames=(FAKE_HOST,), images=IMAGES) as server:
        result = fetcher.fetch(server.url("/image/1", host=FAKE_HOST))
        check_fetch_invariants(result)
        assert result.ok and result.data == IMAGES[1]
        assert connections == ["127.0.0.1"]  # pinned: no second resolution by urllib3
        assert server.sni_names == [FAKE_HOST]
        assert server.last_host_header == f"{FAKE_HOST}:{server.port}"

        # Same address, same server, but a name the certificate does not cover: refused.
        wrong = fetcher.fetch(server.url("/image/1", host=OTHER_FAKE_HOST))
        _assert_certificate_failure(wrong, OTHER_FAKE_HOST)
        assert server.sni_names[-1] == OTHER_FAKE_HOST
        # And the IP literal is not accepted for a certificate that only names the host.
        by_ip = fetcher.fetch(server.url("/image/1", host="127.0.0.1"))
        _assert_certificate_failure(by_ip)


def test_https_to_http_redirect_is_followed(
    https_server: HttpsLoopbackServer, http_server: LoopbackServer, fetcher: Fetcher
) -> None:
    """Downgrades are followed like any redirect: the body is checked as an image either way."""
    target = http_server.url("/image/1")
    result = fetcher.fetch(https_server.url(f"/redirect-to?url={target}", host="localhost"))
    check_fetch_invariants(result)
    assert result.ok and result.data == IMAGES[1]
    assert result.final_url == target


def test_http_to_https_redirect_is_followed_and_verified(
    https_server: HttpsLoopbackServer, http_server: LoopbackServer, fetcher: Fetcher
) -> None:
    target = https_server.url("/image/0", host="localhost")
    result = fetcher.fetch(http_server.url(f"/redirect-to?url={target}"))
    check_fetch_invariants(result)
    assert result.ok and result.data == IMAGES[0]
    assert result.final_url == target


def test_http_to_untrusted_https_redirect_fails_at_the_https_hop(
    https_server: HttpsLoopbackServer, http_server: LoopbackServer, untrusting_fetcher: Fetcher
) -> None:
    target = https_server.url("/image/0", host="localhost")
    result = untrusting_fetcher.fetch(http_server.url(f"/redirect-to?url={target}"))
    _assert_certificate_failure(result, target)
    assert result.final_url == target


@pytest.mark.parametrize(("bad", "error"), [("/nonexistent/visprep-ca.pem", ValueError), (42, ValueError)])
def test_ca_bundle_must_be_an_existing_file(bad: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="ca_bundle"):
        FetchSettings(ca_bundle=bad)  # type: ignore[arg-type]
