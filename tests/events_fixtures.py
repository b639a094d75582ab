"""Hand-built event logs ingested into a fresh workspace, and the interaction pairs they give, keyed."""

from __future__ import annotations

import json
from pathlib import Path

from visprep.events.stage import ingest_event_files
from visprep.workspace import Workspace


def ingest_records(tmp_path: Path, records: list[dict], config: str = "") -> Workspace:
    """Write `records` as one JSON-lines file and ingest it into `tmp_path/ws` with `config` as its visprep.toml."""
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir(parents=True)
    ws.config_path.write_text(config)
    f = tmp_path / "ev.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in records))
    ingest_event_files(ws, [f])
    return ws


def pairs_by_key(ws: Workspace) -> dict[tuple[str, str, str], dict]:
    """`interaction_pairs` rows by (anchor_id, product_id, kind)."""
    return {(r["anchor_id"], r["product_id"], r["kind"]): r for r in ws.read_table("interaction_pairs").to_pylist()}
