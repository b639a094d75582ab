"""HTTP(S) source: manual redirects, per-hop address guard, DNS pinning, streamed byte limit."""

from __future__ import annotations

import email.utils
import http.client
import ssl
import threading
import time
from urllib.parse import SplitResult, quote, urljoin, urlsplit, urlunsplit

import urllib3
from urllib3 import exceptions as u3exc
from urllib3.util.ssl_ import create_urllib3_context

from visprep.fetch.guard import (
    AddressPolicy,
    BlockedAddressError,
    CheckedResolver,
    IPAddress,
    ResolutionError,
)
from visprep.fetch.settings import FetchSettings
from visprep.fetch.source import AttemptOutcome, read_image_body

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_DRAIN_LIMIT_BYTES = 64 * 1024  # redirect bodies up to this size are read so the connection can be reused
# Characters left as they are when normalising a path or query for the request line (RFC 3986 reserved and
# unreserved, plus "%" so existing escapes survive); everything else (spaces, non-ASCII) is percent-encoded.
_SAFE_PATH_CHARS = "/%:@!$&'()*+,;=-._~"
_SAFE_QUERY_CHARS = _SAFE_PATH_CHARS + "?"


class HttpSource:
    """Fetches http:// and https:// URLs through a shared, thread-safe urllib3 `PoolManager`.

    Each hop of a redirect chain is parsed, checked for loops and hop count, its host resolved and every
    resolved address checked against the `AddressPolicy`; the connection then goes to a checked address (the
    pool is keyed by IP; the Host header, TLS SNI and certificate check use the host name). A DNS answer that
    changes after the check therefore cannot redirect the connection (no DNS-rebinding window).
    """

    def __init__(self, settings: FetchSettings, pool: urllib3.PoolManager) -> None:
        self._settings = settings
        self._pool = pool
        self._resolver = CheckedResolver(
            AddressPolicy(allow_private=settings.allow_private, allow_loopback=settings.allow_loopback)
        )
        self._tls: ssl.SSLContext | None = None
        self._tls_lock = threading.Lock()

    def fetch_once(self, url: str, *, deadline: float) -> AttemptOutcome:
        """Make one attempt at `url`, following redirects, giving up at `deadline` (monotonic seconds)."""
        current = _without_fragment(url)
        visited = {current}
        redirects = 0
        while True:
            outcome, location = self._hop(current, deadline)
            if location is None:
                return outcome
            target = _without_fragment(urljoin(current, location))
            if target in visited:
                return AttemptOutcome(
                    "redirect_loop",
                    f"{url}: redirect loop, {current} redirects back to {target}",
                    current,
                    http_status=outcome.http_status,
                )
            redirects += 1
            if redirects > self._settings.max_redirects:
                return AttemptOutcome(
                    "too_many_redirects",
                    f"{url}: more than max_redirects={self._settings.max_redirects} redirects "
                    f"(next hop {target})",
                    current,
                    http_status=outcome.http_status,
                )
            visited.add(target)
            current = target

    def _hop(self, url: str, deadline: float) -> tuple[AttemptOutcome, str | None]:
        """One request. Returns (outcome, None) when done, or (redirect outcome, Location) to follow."""
        try:
            parts = urlsplit(url)
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
        except ValueError as exc:
            return AttemptOutcome("invalid_url", f"{url}: cannot parse URL ({exc})", url), None
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            # Only reachable through a redirect: an http(s) server may not send us to file:// or s3://.
            return AttemptOutcome(
                "unsupported_scheme", f"{url}: redirect target scheme {scheme!r} is not http or https", url
            ), None
        host = parts.hostname
        if not host or port is None:
            return AttemptOutcome("invalid_url", f"{url}: URL has no host", url), None

        try:
            addresses = self._resolver.resolve(host, port)
        except BlockedAddressError as exc:
            return AttemptOutcome("blocked_address", f"{url}: {exc}", url), None
        except ResolutionError as exc:
            return AttemptOutcome("connection_error", f"{url}: {exc}", url, retryable=exc.transient), None

        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return AttemptOutcome("timeout", f"{url}: time budget spent before connecting", url, retryable=True), None
        try:
            response = self._request(parts, scheme, host, port, addresses, remaining)
        except (u3exc.ConnectTimeoutError, u3exc.ReadTimeoutError) as exc:
            if isinstance(exc, u3exc.NewConnectionError):
                return _connection_error(url, exc, retryable=True), None
            return AttemptOutcome(
                "timeout", f"{url}: no response within {remaining:.1f} s ({_short(exc)})", url, retryable=True
            ), None
        except u3exc.SSLError as exc:
            return _connection_error(url, exc, retryable=False), None
        except (u3exc.LocationValueError, http.client.InvalidURL, UnicodeError) as exc:
            return AttemptOutcome("invalid_url", f"{url}: cannot request URL ({_short(exc)})", url), None
        except (u3exc.HTTPError, http.client.HTTPException, OSError) as exc:
            return _connection_error(url, exc, retryable=True), None

        status = response.status
        if status in REDIRECT_CODES:
            location = response.headers.get("Location")
            _discard(response)
            if not location:
                return AttemptOutcome(
                    "invalid_url", f"{url}: HTTP {status} redirect without a Location header", url,
                    http_status=status,
                ), None
            return AttemptOutcome("ok", "", url, http_status=status), location
        if status >= 400 or status < 200 or status >= 300:
            outcome = _http_failure(url, status, response.headers.get("Retry-After"))
            _discard(response)
            return outcome, None
        return self._read_body(url, response, deadline), None

    def _request(
        self,
        parts: SplitResult,
        scheme: str,
        host: str,
        port: int,
        addresses: list[IPAddress],
        timeout_s: float,
    ) -> urllib3.BaseHTTPResponse:
        """Send GET to the first checked address that accepts a connection."""
        path = quote(parts.path, safe=_SAFE_PATH_CHARS) or "/"
        if parts.query:
            path += "?" + quote(parts.query, safe=_SAFE_QUERY_CHARS)
        headers = {
            "Host": parts.netloc.rpartition("@")[2],
            "User-Agent": self._settings.user_agent,
            "Accept": "image/avif,image/webp,image/*;q=0.9,*/*;q=0.5",
            "Accept-Encoding": "identity",
        }
        pool_kwargs: dict[str, object] | None = None
        if scheme == "https":
            # The pool is keyed by the checked IP; SNI and the certificate check must still use the host name.
            pool_kwargs = {"server_hostname": host, "assert_hostname": host, "ssl_context": self._tls_context()}
        timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)
        last_error: u3exc.NewConnectionError | None = None
        for address in addresses:
            pool = self._pool.connection_from_host(str(address), port, scheme, pool_kwargs=pool_kwargs)
            try:
                return pool.urlopen(
                    "GET",
                    path,
                    headers=headers,
                    redirect=False,
                    retries=False,
                    timeout=timeout,
                    preload_content=False,
                    release_conn=False,
                    assert_same_host=False,
                )
            except u3exc.NewConnectionError as exc:  # refused on this address: try the host's next one
                last_error = exc
        assert last_error is not None  # addresses is never empty (resolve_checked guarantees it)
        raise last_error

    def _tls_context(self) -> ssl.SSLContext:
        """The one TLS context of every https connection, its trust store loaded once.

        Left to urllib3, each new connection builds its own context and loads the CA store into it (tens of ms of
        CPU: with many hosts, or pools per IP, that is paid again and again). urllib3's defaults are kept:
        certificates required, TLS 1.2 or newer; the host name is checked by urllib3 (`assert_hostname`).
        """
        if self._tls is not None:
            return self._tls
        with self._tls_lock:
            if self._tls is None:
                context = create_urllib3_context()
                try:
                    if self._settings.ca_bundle is not None:
                        context.load_verify_locations(cafile=self._settings.ca_bundle)
                    else:
                        context.load_default_certs()
                except (ssl.SSLError, OSError) as exc:
                    # A TLS failure, as when urllib3 loaded the store per connection: not retried.
                    raise u3exc.SSLError(f"cannot load the CA certificates ({_short(exc)})") from exc
                self._tls = context
            return self._tls

    def _read_body(self, url: str, response: urllib3.BaseHTTPResponse, deadline: float) -> AttemptOutcome:
        status = response.status
        max_bytes = self._settings.max_bytes
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
            _discard(response, reuse=False)
            return AttemptOutcome(
                "too_large",
                f"{url}: Content-Length {int(declared)} exceeds max_bytes={max_bytes}",
                url,
                http_status=status,
            )
        reusable = False
        try:
            outcome = read_image_body(
                lambda n: response.read(n, decode_content=True),
                url=url,
                max_bytes=max_bytes,
                deadline=deadline,
                content_type=response.headers.get("Content-Type"),
                http_status=status,
            )
            reusable = outcome.ok
        except u3exc.ReadTimeoutError as exc:
            outcome = AttemptOutcome(
                "timeout", f"{url}: body read timed out ({_short(exc)})", url, http_status=status, retryable=True
            )
        except (u3exc.HTTPError, http.client.HTTPException, OSError) as exc:
            outcome = _connection_error(url, exc, retryable=True)
        finally:
            _discard(response, reuse=reusable)
        return outcome


def _http_failure(url: str, status: int, retry_after: str | None) -> AttemptOutcome:
    if status >= 500:
        return AttemptOutcome(
            "http_5xx", f"{url}: HTTP {status}", url, http_status=status, retryable=True,
            retry_after_s=_parse_retry_after(retry_after),
        )
    if status == 429:
        return AttemptOutcome(
            "http_4xx", f"{url}: HTTP 429 (rate limited)", url, http_status=status, retryable=True,
            retry_after_s=_parse_retry_after(retry_after),
        )
    if status >= 400:
        return AttemptOutcome("http_4xx", f"{url}: HTTP {status}", url, http_status=status)
    # 1xx leaking through, or a 3xx that is not a redirect (300, 304, 305): there is no image here.
    return AttemptOutcome("not_image", f"{url}: HTTP {status} carries no image", url, http_status=status)


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date); None when absent or unparsable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _discard(response: urllib3.BaseHTTPResponse, *, reuse: bool | None = None) -> None:
    """Give the connection back: reused when its body was read to the end (or is small), closed otherwise."""
    if reuse is None:
        declared = response.headers.get("Content-Length", "")
        reuse = declared.strip().isdigit() and int(declared) <= _DRAIN_LIMIT_BYTES
        if reuse:
            try:
                response.drain_conn()
            except (u3exc.HTTPError, OSError):
                reuse = False
    if not reuse:
        response.close()  # unread bytes would corrupt the next request on this connection
    response.release_conn()


def _connection_error(url: str, exc: BaseException, *, retryable: bool) -> AttemptOutcome:
    return AttemptOutcome("connection_error", f"{url}: {_short(exc)}", url, retryable=retryable)


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _without_fragment(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    return urlunsplit(parts._replace(fragment="")) if parts.fragment else url
