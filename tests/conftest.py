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
