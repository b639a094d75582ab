"""A loopback HTTP server with the misbehaviours image fetchers meet in the wild, for tests and benchmarks.

Routes (all GET):
    /image/<i>[?delay=s]       images[i % len(images)] as image/jpeg (after an optional delay)
    /html-as-jpeg              an HTML error page served with Content-Type image/jpeg
    /status/<code>             an empty-ish response with that status (404, 403, 500, 429, ...)
    /flaky/<key>?fail=n        HTTP 500 for the first n hits on <key>, then an image (hits in `hits[key]`)
    /slow?delay=s              sleeps s seconds, then an image
    /redirect/<n>              302 to /redirect/<n-1>; /redirect/0 serves an image
    /loop/a, /loop/b           302 to each other
    /redirect-to?url=U         302 to U (e.g. a private address)
    /large?size=n              an image header followed by n bytes, with Content-Length
    /chunked?size=n            the same, chunked, without Content-Length

The server counts requests in flight and keeps the maximum (`max_active`), so tests can check a client's
concurrency bound.
"""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

from visprep.fetch import FETCH_STATUSES, FetchResult

HTML_PAGE = b"<!DOCTYPE html><html><head><title>Not found</title></head><body>gone</body></html>" * 4


def check_fetch_invariants(result: FetchResult) -> None:
    """Assert what every FetchResult must satisfy, whatever its status."""
    assert result.status in FETCH_STATUSES
    assert result.ok == (result.status == "ok")
    assert (result.data is not None) == result.ok
    if not result.ok:
        assert result.url in result.reason or result.final_url in result.reason


def make_jpeg(width: int = 64, height: int = 48, *, seed: int = 0, quality: int = 85) -> bytes:
    """A seeded synthetic JPEG (smooth gradient plus noise) of the given size."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # listen backlog: bursts of connections must not be refused
    allow_reuse_address = True


class LoopbackServer:
    """Threaded HTTP/1.1 server on 127.0.0.1 (ephemeral port), used as a context manager.

    Args:
        images: Bodies served by /image/<i> (cycled); default one small synthetic JPEG.
    """

    scheme = "http"

    def __init__(self, images: list[bytes] | None = None) -> None:
        self.images = images or [make_jpeg()]
        self.hits: Counter[str] = Counter()
        self.requests = 0
        self.active = 0
        self.max_active = 0
        self.last_host_header: str | None = None
        self._lock = threading.Lock()
        self._server = self._make_server(_make_handler(self))
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="loopback-http")

    def url(self, path: str, *, host: str = "127.0.0.1") -> str:
        """Absolute URL of `path` on this server, naming it `host` (which must resolve to 127.0.0.1)."""
        return f"{self.scheme}://{host}:{self.port}{path}"

    def _make_server(self, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
        """The listening server (a subclass may add TLS)."""
        return _Server(("127.0.0.1", 0), handler)

    def start(self) -> LoopbackServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _enter(self, key: str) -> int:
        with self._lock:
            self.requests += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.hits[key] += 1
            return self.hits[key]

    def _leave(self) -> None:
        with self._lock:
            self.active -= 1


def _make_handler(state: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real CDNs do
        # Headers and body are two writes; with Nagle's algorithm the body would wait for the client's delayed
        # ACK (40 ms on Linux) on a kept-alive connection, a stall no CDN adds (benchmarks would measure it).
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base-class signature
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            segments = parts.path.strip("/").split("/")
            hit = state._enter(parts.path)
            state.last_host_header = self.headers.get("Host")
            try:
                self._route(segments, query, hit)
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                state._leave()

        def _route(self, segments: list[str], query: dict[str, str], hit: int) -> None:
            head = segments[0]
            if head == "image":
                if "delay" in query:
                    time.sleep(float(query["delay"]))
                index = int(segments[1].split(".")[0]) if len(segments) > 1 else 0
                self._send(200, state.images[index % len(state.images)])
            elif head == "html-as-jpeg":
                self._send(200, HTML_PAGE, content_type="image/jpeg")
            elif head == "status":
                code = int(segments[1])
                headers = {"Retry-After": query["retry_after"]} if "retry_after" in query else {}
                self._send(code, b"error %d" % code, content_type="text/plain", headers=headers)
            elif head == "flaky":
                if hit <= int(query.get("fail", "2")):
                    self._send(500, b"try again", content_type="text/plain")
                else:
                    self._send(200, state.images[0])
            elif head == "slow":
                time.sleep(float(query.get("delay", "2")))
                self._send(200, state.images[0])
            elif head == "redirect":
                remaining = int(segments[1])
                if remaining <= 0:
                    self._send(200, state.images[0])
                else:
                    self._redirect(f"/redirect/{remaining - 1}")
            elif head == "loop":
                self._redirect("/loop/b" if segments[1] == "a" else "/loop/a")
            elif head == "redirect-to":
                self._redirect(query["url"])
            elif head == "large":
                self._send(200, _large_body(int(query["size"])))
            elif head == "chunked":
                self._send_chunked(_large_body(int(query["size"])))
            else:
                self._send(404, b"no route", content_type="text/plain")

        def _send(self, code: int, body: bytes, *, content_type: str = "image/jpeg",
                  headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _redirect(self, location: str) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _send_chunked(self, body: bytes, chunk: int = 64 * 1024) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(body), chunk):
                piece = body[start : start + chunk]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")

    return Handler


def _large_body(size: int) -> bytes:
    header = make_jpeg(8, 8)
    return header + b"\0" * max(0, size - len(header))
