"""A bounded Kafka consumer whose offsets live in the workspace, not in the broker.

The consumer joins a group (so partitions are assigned and lag is visible to Kafka tooling) but seeks, on every
assignment, to the offsets committed in the workspace beside the events they produced. The group commit after each
batch is informational; a crash between the two commits can therefore neither lose nor double-count an event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Self

import pyarrow as pa

from visprep.events.readers import utf8_problem

log = logging.getLogger(__name__)


def _kafka() -> Any:
    try:
        import confluent_kafka
    except ImportError as exc:
        raise ImportError("the Kafka events source needs confluent-kafka: pip install confluent-kafka") from exc
    return confluent_kafka


@dataclass
class KafkaBatch:
    """Messages of one poll, with the next offset of each partition they came from."""

    topic: str
    partitions: list[int]
    offsets: list[int]
    values: list[bytes | None]
    next_offsets: dict[int, int]

    def chunks(self) -> Iterator[tuple[str, pa.Table]]:
        """Yield `(source, (line, text, seq))` per partition; `line` is the message offset, `seq` the position in
        the batch (which version of a conflicting event id came first)."""
        for part in sorted(set(self.partitions)):
            idx = [i for i, p in enumerate(self.partitions) if p == part]
            raw = [self.values[i] or b"" for i in idx]
            arr = pa.array(raw, type=pa.binary())
            columns: dict[str, pa.Array] = {"line": pa.array([self.offsets[i] for i in idx], pa.int64())}
            try:
                columns["text"] = arr.cast(pa.string())
            except pa.ArrowInvalid:
                # A message that is not UTF-8 is refused like a file's line (`utf8_problem`); the U+FFFD text is
                # for display only, never parsed.
                flags = [None if _is_utf8(v) else utf8_problem(v) for v in raw]
                columns["text"] = pa.array([v.decode("utf-8", errors="replace") for v in raw], pa.string())
                columns["utf8_problem"] = pa.array([f and f[0] for f in flags], pa.string())
                columns["utf8_value"] = pa.array([f and f[1] for f in flags], pa.string())
            columns["seq"] = pa.array(idx, pa.int64())
            yield f"kafka://{self.topic}/{part}", pa.table(columns)


class KafkaBatches:
    """Iterate batches of `topic` from the workspace offsets until caught up or `max_seconds` have passed."""

    def __init__(self, *, bootstrap: str, topic: str, group: str, start_offsets: dict[int, int], batch_size: int,
                 poll_s: float, max_seconds: float | None, assign_timeout_s: float = 30.0,
                 session_timeout_ms: int = 6000) -> None:
        self.topic, self.batch_size, self.poll_s = topic, batch_size, poll_s
        self.max_seconds, self.assign_timeout_s = max_seconds, assign_timeout_s
        self.start = dict(start_offsets)
        self.next: dict[int, int] = {}
        self.assigned: list[int] = []
        self.caught_up = False
        ck = _kafka()
        self._ck = ck
        self.consumer = ck.Consumer({
            "bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "enable.partition.eof": False,
            # A consumer killed with -9 holds its partitions until the session times out: keep that short.
            "session.timeout.ms": session_timeout_ms,
            "heartbeat.interval.ms": max(100, min(1000, session_timeout_ms // 3)), "socket.timeout.ms": 10000,
        })

    def __enter__(self) -> Self:
        self.consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        return self

    def __exit__(self, *exc: object) -> None:
        self.consumer.close()

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        for tp in partitions:
            if tp.partition in self.next:
                tp.offset = self.next[tp.partition]
            elif tp.partition in self.start:
                tp.offset = self.start[tp.partition]
            else:
                tp.offset = self._ck.OFFSET_BEGINNING
        consumer.assign(partitions)
        self.assigned = sorted(tp.partition for tp in partitions)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        self.assigned = []

    def _position(self, partition: int, low: int) -> int:
        return self.next.get(partition, self.start.get(partition, low))

    def _is_caught_up(self) -> bool:
        if not self.assigned:
            return False
        for p in self.assigned:
            low, high = self.consumer.get_watermark_offsets(self._ck.TopicPartition(self.topic, p), timeout=10)
            if self._position(p, low) < high:
                return False
        return True

    def __iter__(self) -> Iterator[KafkaBatch]:
        t0 = time.monotonic()
        while True:
            msgs = self.consumer.consume(num_messages=self.batch_size, timeout=self.poll_s)
            good = []
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == self._ck.KafkaError._PARTITION_EOF:
                        continue
                    raise self._ck.KafkaException(err)
                good.append(m)
            if good:
                parts = [m.partition() for m in good]
                offs = [m.offset() for m in good]
                nxt: dict[int, int] = {}
                for p, o in zip(parts, offs):
                    nxt[p] = max(nxt.get(p, 0), o + 1)
                yield KafkaBatch(self.topic, parts, offs, [m.value() for m in good], nxt)
                self.next.update(nxt)
            # An empty poll, or a short one: a short poll usually ends the backlog, and asking the watermarks now
            # saves waiting `poll_s` for an empty poll (about a second per run).
            if len(good) < self.batch_size and self._is_caught_up():
                self.caught_up = True
                return
            elapsed = time.monotonic() - t0
            if not self.assigned and elapsed > self.assign_timeout_s:
                raise TimeoutError(f"no partition of topic {self.topic!r} was assigned within "
                                   f"{self.assign_timeout_s:.0f} s")
            if self.max_seconds is not None and elapsed > self.max_seconds:
                self.caught_up = self._is_caught_up()
                return

    def commit(self, batch: KafkaBatch) -> None:
        """Commit the batch's offsets to the group (informational; the workspace holds the truth)."""
        tps = [self._ck.TopicPartition(self.topic, p, o) for p, o in batch.next_offsets.items()]
        try:
            self.consumer.commit(offsets=tps, asynchronous=False)
        except self._ck.KafkaException as exc:  # the next start seeks to the workspace offsets anyway
            log.warning("group offset commit failed (workspace offsets stand): %s", exc)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False
