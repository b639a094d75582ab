"""Behaviour logs: event files or a Kafka topic -> a deduplicated `events` table and weighted `interaction_pairs`.

Modules: `readers` (JSONL chunks), `normalize` (validation and normalisation in DuckDB), `batch` (one batch:
dedup against the id index, conflicts, day parts), `checkpoint` (the events table's commit log: live files, id
index, compaction, file checkpoints and Kafka offsets stored beside the parts they produced), `pairs`
(click / add-to-cart / purchase / co-view / skip-above pairs), `debias` (position propensities, popularity
correction, concentration report), `kafka_source` (the exactly-once consumer), `stage` (composition), `simulate`
(a seeded click simulator with known relevance).
"""

from visprep.events.stage import EventsResult, build_interaction_pairs, ingest_event_files, ingest_kafka

__all__ = ["EventsResult", "build_interaction_pairs", "ingest_event_files", "ingest_kafka"]
