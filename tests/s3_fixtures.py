"""A real S3-protocol server on loopback (moto's server in a child process), for tests and benchmarks.

The server runs in its own Python process, so moto's in-memory backends, its botocore hooks and any
environment it reads stay out of the test process; the child exits when the test closes its stdin (or dies).
Nothing global is set here: clients get the endpoint and the dummy credentials from
`S3Server.storage_options`.

Example:
    >>> with S3Server(objects={"images/0.jpg": make_jpeg()}) as s3:
    ...     settings = FetchSettings(s3_options=s3.storage_options)
    ...     Fetcher(settings).fetch(s3.url("images/0.jpg"))
"""

from __future__ import annotations

import selectors
import subprocess
import sys
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any

# Runs in the child: start moto on 127.0.0.1 (ephemeral port), print the port, serve until stdin closes.
_CHILD = """
import logging
import sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request; errors still reach stderr
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
"""
_START_TIMEOUT_S = 30.0
REGION = "us-east-1"
ACCESS_KEY = "visprep-test-key"
SECRET_KEY = "visprep-test-secret"  # a dummy credential moto accepts


class S3Server:
    """moto's S3 server on 127.0.0.1 (ephemeral port) holding one bucket, used as a context manager.

    Args:
        objects: Keys and bodies uploaded into the bucket on start.
        bucket: Bucket name; default a fresh random one.
    """

    def __init__(self, objects: Mapping[str, bytes] | None = None, *, bucket: str | None = None) -> None:
        self.bucket = bucket or f"visprep-test-{uuid.uuid4().hex[:12]}"
        self._objects = dict(objects or {})
        self._process: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage_options(self) -> dict[str, Any]:
        """s3fs options that reach this server and nothing else (pass as `FetchSettings.s3_options`)."""
        return {
            "endpoint_url": self.endpoint_url,
            "key": ACCESS_KEY,
            "secret": SECRET_KEY,
            "client_kwargs": {"region_name": REGION},
            # A filesystem of its own per Fetcher, not fsspec's process-wide instance shared between tests.
            "skip_instance_cache": True,
        }

    def url(self, key: str) -> str:
        """s3:// URL of `key` in this server's bucket."""
        return f"s3://{self.bucket}/{key}"

    def put(self, key: str, body: bytes) -> None:
        """Upload one object."""
        self._client().put_object(Bucket=self.bucket, Key=key, Body=body)

    def start(self) -> S3Server:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        line = _readline_within(self._process, _START_TIMEOUT_S)
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"moto server did not report its port (got {line!r})")
        self.port = int(line)
        try:
            client = self._client()
            client.create_bucket(Bucket=self.bucket)
            for key, body in self._objects.items():
                client.put_object(Bucket=self.bucket, Key=key, Body=body)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None and process.stdout is not None
        process.stdin.close()  # the child's stdin.read() returns and it exits
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        process.stdout.close()

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _client(self) -> Any:
        import boto3  # noqa: PLC0415 - only the fixture needs boto3 (a dependency of moto)

        session = boto3.session.Session(
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION
        )
        return session.client("s3", endpoint_url=self.endpoint_url)


def _readline_within(process: subprocess.Popen[str], timeout_s: float) -> str:
    """The child's first stdout line, or "" if it exits or stays silent for `timeout_s`."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            return ""
    return process.stdout.readline()
