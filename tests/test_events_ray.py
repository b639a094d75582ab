"""The events pairs on Ray: with `[engine] kind = "ray"` a rebuild of the partial sums (and the whole-log build
of `incremental = false`) runs one Ray task per user group (a local Ray of 2 CPUs), and the tables equal the local
build's, after a rebuild and after an update."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_events_incremental import _build, _same_pairs_approx, _sim_records, _tables, _write, _ws

from visprep.events.stage import build_interaction_pairs, ingest_event_files

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("ray_alone")]


@pytest.fixture
def local_ray() -> Iterator[None]:
    yield
    ray.shutdown()


def test_pairs_per_user_group_on_ray_give_the_local_tables(tmp_path: Path, local_ray: None) -> None:
    records = _sim_records(300, 12, seed=5)
    first, second = _write(tmp_path / "a.jsonl", records[:3000]), _write(tmp_path / "b.jsonl", records[2990:])
    # 1000 events a group: the 3000 events of the first batch make 4 user groups, so 4 tasks.
    config = "pairs_group_events = 1000\n"
    local = _ws(tmp_path / "local", config)
    on_ray = _ws(tmp_path / "ray", config + '[engine]\nkind = "ray"\nnum_cpus = 2\n')
    for ws in (local, on_ray):
        r = ingest_event_files(ws, [first])
        build = _build(ws, r.run_id)
        assert build["mode"] == "full" and build["groups"] == 4
        assert build["engine"] == ("ray" if ws is on_ray else "local")
    assert ray.is_initialized()
    assert _tables(on_ray) == _tables(local)
    # An update (the touched users, on the driver) onto sums the Ray tasks made; then the sums rebuilt on Ray.
    for ws in (local, on_ray):
        r = ingest_event_files(ws, [second])
        assert _build(ws, r.run_id)["mode"] == "incremental"
    assert _tables(on_ray) == _tables(local)
    for ws in (local, on_ray):
        build_interaction_pairs(ws)
    assert _tables(on_ray) == _tables(local)


def test_the_whole_log_build_per_group_on_ray_gives_the_local_table(tmp_path: Path, local_ray: None) -> None:
    records = _write(tmp_path / "a.jsonl", _sim_records(300, 12, seed=7))
    config = "pairs_group_events = 1000\nincremental = false\n"
    local = _ws(tmp_path / "local", config)
    on_ray = _ws(tmp_path / "ray", config + '[engine]\nkind = "ray"\nnum_cpus = 2\n')
    for ws in (local, on_ray):
        r = ingest_event_files(ws, [records])
        assert _build(ws, r.run_id) == {"mode": "whole_log", "groups": 4,
                                        "engine": "ray" if ws is on_ray else "local"}
    (ev_local, p_local), (ev_ray, p_ray) = _tables(local), _tables(on_ray)
    # The whole-log build sums float weights per group in DuckDB's thread order, on Ray as locally: equal to
    # the last bits, not bit for bit.
    assert ev_ray == ev_local
    _same_pairs_approx(p_local, p_ray)
