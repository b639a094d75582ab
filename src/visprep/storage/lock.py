"""The writer lock of a workspace on an object store: one lock object taken with a conditional PUT and held by a
lease that a heartbeat thread renews.

    locks/workspace.lock   {"pid", "host", "command", "since", "token", "expires_at", "lease_s"}
                           or {"released": true, ...} once its holder let it go

Taking it: create the object (`If-None-Match: *`), or replace a released or expired one conditional on the ETag
read (`If-Match`), so of two writers racing for it exactly one wins. The heartbeat renews the lease every third of
it, again conditional on the ETag, so a writer that was taken over learns it at its next renewal. Before each
commit the holder checks it still holds the lock (`check`: the object still carries its token and its lease has
not run out): a writer that lost its lease cannot commit afterwards.

What remains: a holder paused (stopped, swapped out, partitioned) for longer than its lease between `check` and the
manifest PUT that follows it may still publish that one commit after another writer took over; object stores
offer no compare-and-swap across two objects. Expiry compares the holder's clock with the taker's: clocks must
agree to well within the lease (default 60 s).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import socket
import sys
import threading
import time
from typing import Any

from visprep.storage.objects import ObjectStore, PreconditionFailed

LOCK_KEY = "locks/workspace.lock"
LEASE_ENV = "VISPREP_LOCK_LEASE_S"
DEFAULT_LEASE_S = 60.0


class LockLost(RuntimeError):
    """This process no longer holds the workspace's writer lock (its lease ran out or another writer took it)."""


def default_lease_s() -> float:
    """The lease from `VISPREP_LOCK_LEASE_S` (seconds), else 60."""
    text = os.environ.get(LEASE_ENV, "").strip()
    if not text:
        return DEFAULT_LEASE_S
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{LEASE_ENV}={text!r} is not a number of seconds") from None
    if value <= 0:
        raise ValueError(f"{LEASE_ENV}={text!r} must be positive")
    return value


class ObjectLock:
    """The lock object `key` in `store`; `acquire`, then `release` (and `check` before each commit)."""

    def __init__(self, store: ObjectStore, key: str = LOCK_KEY, *, lease_s: float | None = None) -> None:
        self.store = store
        self.key = key
        self.lease_s = lease_s if lease_s is not None else default_lease_s()
        self.token: str | None = None
        self.etag: str | None = None
        self.expires_at = 0.0
        self.acquired_at = 0.0  # the store's clock: the lock object's last-modified time when taken
        self.taken_over: dict[str, Any] | None = None  # the expired holder this writer replaced
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()
        self._since: str | None = None
        self._command = ""

    # --- who holds it ---
    def read(self) -> tuple[dict[str, Any] | None, str | None]:
        """The lock object's record and ETag (None, None when it was never created)."""
        found = self.store.get_with_etag(self.key)
        if found is None:
            return None, None
        data, etag = found
        try:
            record = json.loads(data)
        except json.JSONDecodeError:
            record = {"record": data[:200].decode("utf-8", "replace")}
        return (record if isinstance(record, dict) else {"record": str(record)[:200]}), etag

    def holder(self) -> dict[str, Any] | None:
        """The live holder (pid, host, command, since, expires_at), or None when the lock is free."""
        record, _ = self.read()
        if record is None or _free(record):
            return None
        return _public(record)

    # --- taking and giving back ---
    def acquire(self, command: str | None = None, *, busy: str, wait_s: float | None = None) -> None:
        """Take the lock or raise `WorkspaceLocked` naming the holder; `wait_s` polls that long first."""
        from visprep.workspace import WorkspaceLocked

        deadline = None if not wait_s else time.monotonic() + wait_s
        token = secrets.token_hex(8)
        while True:
            record, etag = self.read()
            if record is not None and record.get("token") == token and not record.get("released"):
                # Our PUT took effect though its answer was lost (a retried request then met its own condition).
                self.etag, body = etag, json.dumps(record).encode()
                record = None
            elif record is None or _free(record):
                body = self._body(token, command, since=None)
                try:
                    self.etag = self.store.put_if(self.key, body, etag=etag)
                except PreconditionFailed:
                    continue  # another writer moved first: look again
            else:
                body = b""
            if body:
                self.token = token
                self.taken_over = _public(record) if record is not None and not record.get("released") else None
                self.expires_at = json.loads(body)["expires_at"]
                info = self.store.info(self.key)
                self.acquired_at = info.modified if info else time.time()
                self.lost = False
                self._start_heartbeat()
                return
            if deadline is None or time.monotonic() >= deadline:
                holder = _public(record)
                raise WorkspaceLocked(f"{busy} is busy: another visprep writer holds {self.store.uri(self.key)} "
                                      f"({json.dumps(holder, sort_keys=True)}); wait for it to finish, or pass "
                                      "--wait to queue behind it", holder=holder)
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))

    def release(self) -> None:
        """Stop the heartbeat and mark the lock released (only if it is still this holder's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._guard:
            if self.token is None or self.lost:
                self.token = None
                return
            record = {**json.loads(self._body(self.token, None, since=self._since)), "released": True}
            try:
                self.store.put_if(self.key, json.dumps(record).encode(), etag=self.etag)
            except PreconditionFailed:
                pass  # taken over after our lease ran out: it is not ours to release
            self.token = None

    def check(self) -> None:
        """Raise `LockLost` unless this process still holds the lock (fencing, before each commit)."""
        if self.token is None:
            raise LockLost(f"{self.store.uri(self.key)}: this process does not hold the writer lock")
        if self.lost or time.time() >= self.expires_at:
            raise LockLost(f"{self.store.uri(self.key)}: this writer's lease ran out "
                           f"({'taken over' if self.lost else 'not renewed in time'}); it may not commit")
        record, _ = self.read()
        if record is None or record.get("token") != self.token or record.get("released"):
            self.lost = True
            raise LockLost(f"{self.store.uri(self.key)}: another writer took the lock "
                           f"({json.dumps(_public(record or {}), sort_keys=True)}); this writer may not commit")

    # --- the lease ---
    def renew(self) -> bool:
        """Extend the lease once (conditional on the lock object being as this holder left it); False when lost."""
        with self._guard:
            if self.token is None or self.lost:
                return False
            body = self._body(self.token, None, since=self._since)
            try:
                self.etag = self.store.put_if(self.key, body, etag=self.etag)
            except PreconditionFailed:
                self.lost = True
                return False
            self.expires_at = json.loads(body)["expires_at"]
            return True

    def _start_heartbeat(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="visprep-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                if not self.renew():
                    return
            except Exception:  # noqa: BLE001, S112 - a failed renewal (network) is retried; check() sees the expiry
                continue

    def _body(self, token: str, command: str | None, *, since: str | None) -> bytes:
        if since is None:
            since = dt.datetime.now(dt.UTC).isoformat()
            self._since = since
            self._command = command or " ".join(sys.argv)[:200]
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": self._command,
                           "since": since, "token": token, "lease_s": self.lease_s,
                           "expires_at": time.time() + self.lease_s}, sort_keys=True).encode()


def _free(record: dict[str, Any]) -> bool:
    """Whether a lock record is free to take: released, or its lease ran out."""
    if record.get("released"):
        return True
    try:
        return float(record.get("expires_at", 0)) <= time.time()
    except (TypeError, ValueError):
        return True


def _public(record: dict[str, Any]) -> dict[str, Any]:
    """The holder as `WorkspaceLocked` names it (no token)."""
    return {k: v for k, v in record.items() if k in ("pid", "host", "command", "since", "expires_at")}
