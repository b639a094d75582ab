"""The fetch stage in a workspace: failures recorded and quarantined, kill -9 and resume without loss or duplicates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc

from http_fixtures import LoopbackServer, make_jpeg
from visprep.catalog.stage import ingest_catalog
from visprep.fetch.stage import fetch_stage
from visprep.workspace import Workspace

CONFIG = """
[fetch]
allow_loopback = true
concurrency = {concurrency}
retries = 1
backoff_s = 0.01
timeout_s = 2.0
checkpoint_every = {checkpoint}
"""


def _workspace(tmp_path: Path, urls_by_product: dict[str, list[str]], *, concurrency: int = 8,
               checkpoint: int = 16) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir(parents=True)
    ws.config_path.write_text(CONFIG.format(concurrency=concurrency, checkpoint=checkpoint))
    cat = tmp_path / "catalog.jsonl"
    cat.write_text("".join(json.dumps({"product_id": pid, "title": f"Item {pid}", "category": "Apparel > Tops",
                                       "image_urls": urls}) + "\n" for pid, urls in urls_by_product.items()))
    ingest_catalog(ws, [cat])
    return ws


def test_failures_are_rows_with_reasons_and_quarantined(tmp_path: Path) -> None:
    with LoopbackServer([make_jpeg(seed=1), make_jpeg(seed=2)]) as srv:
        ws = _workspace(tmp_path, {
            "ok": [srv.url("/image/0"), srv.url("/image/1")],
            "dup": [srv.url("/image/2")],  # the same bytes as /image/0: stored once
            "html": [srv.url("/html-as-jpeg")],
            "gone": [srv.url("/status/404")],
            "loop": [srv.url("/loop/a")],
        })
        r = fetch_stage(ws)
    assert (r.ok, r.failed) == (3, 3)
    urls = {row["url"].rsplit(str(srv.port), 1)[1]: row for row in ws.latest_urls().to_pylist()}
    assert urls["/html-as-jpeg"]["status"] == "not_image"
    assert urls["/status/404"]["status"] == "http_4xx" and urls["/status/404"]["attempts"] == 1
    assert urls["/loop/a"]["status"] == "redirect_loop"
    assert urls["/image/0"]["image_id"] == urls["/image/2"]["image_id"]
    stored = [p for p in ws.store.root.rglob("*") if p.is_file()]
    assert len(stored) == 2
    q = ws.read_table("quarantine").to_pylist()
    assert {(row["record_id"], row["reason"]) for row in q} == {
        ("html", "not_image"), ("gone", "http_4xx"), ("loop", "redirect_loop")}
    assert all(row["value"] and row["detail"] for row in q)
    # A second run has nothing to do and does not duplicate the quarantine.
    r2 = fetch_stage(ws)
    assert (r2.attempted, r2.already) == (0, 6)
    assert ws.read_table("quarantine").num_rows == 3


def test_killed_fetch_resumes_without_loss_or_duplicates(tmp_path: Path) -> None:
    n = 240
    images = [make_jpeg(32, 32, seed=i) for i in range(n)]
    with LoopbackServer(images) as srv:
        ws = _workspace(tmp_path, {f"p{i:04d}": [srv.url(f"/image/{i}?delay=0.02")] for i in range(n)},
                        concurrency=4, checkpoint=10)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "visprep.cli", "fetch", "-w", str(ws.root)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        parts = ws.table_path("urls")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if parts.is_dir() and len(list(parts.glob("part-*.parquet"))) >= 3:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        done_before = ws.latest_urls().num_rows
        assert 0 < done_before < n, "the kill must land mid-run"
        hits_before = sum(srv.hits.values())
        r = fetch_stage(ws)
        hits_after = sum(srv.hits.values())
    latest = ws.latest_urls()
    assert latest.num_rows == n and set(pc.unique(latest["status"]).to_pylist()) == {"ok"}
    raw = ws.read_table("urls")
    assert raw.num_rows == n  # compacted: one row per URL
    assert r.already == done_before and r.attempted == n - done_before
    # Only results in flight at the kill (not yet checkpointed) are fetched twice.
    assert hits_after - hits_before == n - done_before
    assert hits_before - done_before <= 4 + 10
    stored = sorted(p.name for p in ws.store.root.rglob("*") if p.is_file())
    assert len(stored) == n and not any(name.startswith(".") for name in stored)
    assert sorted(f"{i}.jpg" for i in latest["image_id"].to_pylist()) == stored
