"""Fixtures shared by the test modules."""

from __future__ import annotations

import socket

import pytest
import urllib3.util.connection


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Hosts the fetcher opened TCP connections to (urllib3's connect hook, patched)."""
    seen: list[str] = []
    original = urllib3.util.connection.create_connection

    def recording(address: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
        seen.append(address[0])
        return original(address, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(urllib3.util.connection, "create_connection", recording)
    return seen


@pytest.fixture(scope="module")
def ray_alone():
    """Hold a machine-wide lock while one test module uses Ray: with pytest-xdist each module runs in one worker,
    and two Ray instances started at once by both workers (clusters, drivers killed on purpose) hung a fresh-clone
    run once, in a child forked before its exec, and failed another's process accounting. Waiting here counts
    against the first test's timeout, so Ray modules allow 600 s."""
    import fcntl
    import tempfile
    from pathlib import Path

    with open(Path(tempfile.gettempdir()) / "visprep-tests-ray.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
