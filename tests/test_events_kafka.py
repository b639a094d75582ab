"""Events from a real Kafka-protocol broker (Tansu on loopback): exactly once across kill -9 at both commit points."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kafka_fixtures import Broker, kafka_broker  # noqa: F401  (pytest fixture)

from visprep.events.checkpoint import EventLog
from visprep.events.simulate import SimConfig, simulate
from visprep.events.stage import ingest_event_files, ingest_kafka
from visprep.workspace import Workspace

TOPIC = "events"


@pytest.fixture(scope="module")
def produced(kafka_broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> tuple[Broker, Path]:  # noqa: F811
    ev, _ = simulate(SimConfig(searches=300, duplicate_rate=0.03, seed=5))
    rows = ev.to_pylist()
    conflict = {**rows[0], "user_id": "u-other"}  # the first event's id again, with another user: quarantined
    # Not UTF-8: refused as invalid_utf8 naming the field, from Kafka as from a file (never U+FFFD-replaced).
    bad_utf8 = json.dumps({**rows[1], "event_id": "bad-utf8", "user_id": "cafXX"}).encode().replace(b"cafXX",
                                                                                                  b"caf\xe9")
    values = [json.dumps(r).encode() for r in rows] + [b"{oops", b'{"event_id": "x", "type": "view"}',
                                                       json.dumps(conflict).encode(), bad_utf8]
    kafka_broker.create_topic(TOPIC, partitions=2)
    kafka_broker.produce(TOPIC, values)
    path = tmp_path_factory.mktemp("kafka") / "same.jsonl"
    path.write_bytes(b"\n".join(values) + b"\n")
    return kafka_broker, path


def _ws(root: Path, batch: int = 400) -> Workspace:
    ws = Workspace(root)
    ws.root.mkdir(parents=True)
    # A short session: the restarted consumer need not wait out the killed one's 6 s default.
    ws.config_path.write_text(f"[events]\nkafka_batch = {batch}\nkafka_poll_s = 0.5\nkafka_session_timeout_ms = 1500\n")
    return ws


def _content(ws: Workspace) -> tuple[list[dict], list[dict]]:
    ev = ws.read_table("events").drop_columns(["source", "line"]).sort_by("event_id").to_pylist()
    pairs = ws.read_table("interaction_pairs").to_pylist()
    for row in pairs:
        for k, v in row.items():
            if isinstance(v, float):
                row[k] = round(v, 6)
    return ev, pairs


def test_topic_ingest_matches_file_ingest_and_resumes(produced: tuple[Broker, Path], tmp_path: Path) -> None:
    broker, same = produced
    ws = _ws(tmp_path / "k")
    r = ingest_kafka(ws, bootstrap=broker.bootstrap, topic=TOPIC, group="g-ref", max_seconds=60)
    assert r.caught_up and r.batches >= 2 and r.quarantined == 4 and r.duplicates > 50
    assert r.by_reason["conflicting_duplicate"] == 1 and r.by_reason["invalid_utf8"] == 1
    bad = [q for q in ws.read_table("quarantine").to_pylist() if q["reason"] == "invalid_utf8"]
    assert len(bad) == 1 and bad[0]["field"] == "user_id" and "caf\\xe9" in bad[0]["value"], bad
    # The batches' small parts were compacted: one part per day, one id-index file.
    days = {p.name[5:15] for p in ws.table_path("events").glob("part-*.parquet")}
    assert r.compacted > 0 and ws.part_count("events") == len(days) and len(EventLog(ws).id_files()) == 1
    ref = Workspace(tmp_path / "f")
    ingest_event_files(ref, [same])
    assert _content(ws) == _content(ref)
    offsets = EventLog(ws).kafka_offsets(TOPIC)
    assert sum(offsets.values()) == r.records
    # Caught up: a second run reads nothing and rewrites nothing.
    r2 = ingest_kafka(ws, bootstrap=broker.bootstrap, topic=TOPIC, group="g-ref", max_seconds=30)
    assert (r2.records, r2.caught_up, r2.pairs_rebuilt) == (0, True, False)


@pytest.mark.parametrize("point", ["after_output", "after_checkpoint"])
def test_kill_between_output_and_offsets(produced: tuple[Broker, Path], tmp_path: Path, point: str) -> None:
    broker, same = produced
    ref = Workspace(tmp_path / "ref")
    ingest_event_files(ref, [same])
    ws = _ws(tmp_path / "ws")
    group = f"g-{point}"
    code = ("import sys; from visprep.workspace import Workspace; from visprep.events.stage import ingest_kafka; "
            f"ingest_kafka(Workspace(sys.argv[1]), bootstrap={broker.bootstrap!r}, topic={TOPIC!r}, "
            f"group={group!r}, max_seconds=60, _crash_at={point!r}, _crash_after_batches=3)")
    proc = subprocess.run([sys.executable, "-c", code, str(ws.root)], check=False, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    committed = EventLog(ws).generation
    assert committed == (2 if point == "after_output" else 3)
    r = ingest_kafka(ws, bootstrap=broker.bootstrap, topic=TOPIC, group=group, max_seconds=60)
    assert r.caught_up
    assert (r.recovered_parts > 0) == (point == "after_output")
    assert _content(ws) == _content(ref)
    assert ws.read_table("quarantine").num_rows == 4
    total = EventLog(ws).events_committed()
    assert total == ws.read_table("events").num_rows  # every event counted once over all batches
