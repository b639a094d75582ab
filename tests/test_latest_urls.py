"""`Workspace.latest_urls` (one row per URL: its newest fetch result) against a brute-force oracle, over tables
with repeated URLs, equal fetch times and several parts, and the pending-URL rule the fetch stage builds on it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from visprep.fetch.stage import pending_urls
from visprep.schema import schema_for
from visprep.workspace import Workspace

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _rows(draws: list[tuple[int, int, str]]) -> list[dict]:
    return [{"url": f"http://h/{u}.jpg", "status": status, "image_id": f"id{i}" if status == "ok" else None,
             "format": "jpeg" if status == "ok" else None, "bytes": None, "http_status": None, "attempts": 1,
             "reason": None, "final_url": None, "fetched_at": T0 + dt.timedelta(seconds=t), "run_id": f"r{i}"}
            for i, (u, t, status) in enumerate(draws)]


def _oracle(parts: list[list[dict]]) -> dict[str, dict]:
    """Per URL the row with the latest time; of equal times the one stored first (parts in order, rows in order)."""
    best: dict[str, dict] = {}
    for row in (r for part in parts for r in part):
        kept = best.get(row["url"])
        if kept is None or row["fetched_at"] > kept["fetched_at"]:
            best[row["url"]] = row
    return best


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 3), st.sampled_from(["ok", "http_404"])),
                         min_size=1, max_size=12), min_size=1, max_size=3))
def test_latest_urls_keeps_each_urls_newest_row_and_the_first_stored_of_a_tie(tmp_path_factory, parts) -> None:
    ws = Workspace(tmp_path_factory.mktemp("ws"))
    start = 0
    stored: list[list[dict]] = []
    for n, part in enumerate(parts):
        rows = _rows(part)
        for k, row in enumerate(rows):  # ids unique across parts, so the oracle can tell rows apart
            row["run_id"] = f"p{n}-{start + k}"
        start += len(rows)
        ws.write_part("urls", pa.Table.from_pylist(rows, schema=schema_for("urls")), f"p{n:03d}")
        stored.append(rows)
    got = ws.latest_urls().to_pylist()
    assert len(got) == len({r["url"] for r in got})
    want = _oracle(stored)
    assert {r["url"]: r["run_id"] for r in got} == {u: r["run_id"] for u, r in want.items()}


def test_pending_urls_are_the_wanted_ones_not_stored_or_failed(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    wanted = [f"http://h/{u}.jpg" for u in range(5)]
    ws.write_table("product_images", pa.Table.from_pylist(
        [{"product_id": f"p{i}", "url": u, "position": 0, "source": "catalog", "recipe": None}
         for i, u in enumerate(wanted)], schema=schema_for("product_images")))
    image = ws.store.put(b"\xff\xd8\xff\xe0 not really a jpeg", "jpg")
    rows = _rows([(0, 0, "ok"), (1, 0, "ok"), (2, 0, "http_404"), (2, 1, "ok"), (3, 0, "http_404")])
    rows[0]["image_id"] = image  # stored; rows[1] names an image the store does not have; 2's newest is ok, unstored
    ws.write_table("urls", pa.Table.from_pylist(rows, schema=schema_for("urls")))
    todo, already = pending_urls(ws, retry_failed=False)
    assert sorted(todo) == [wanted[1], wanted[2], wanted[4]] and already == 2
    todo, already = pending_urls(ws, retry_failed=True)
    assert sorted(todo) == [wanted[1], wanted[2], wanted[3], wanted[4]] and already == 1
