"""The events pairs' full builds per user bucket, one Ray task per bucket (`[engine] kind = "ray"`).

A rebuild of the partial sums (`incremental.update_pairs` with no usable sums) runs in user groups: group g of G
holds the users with `hash(user_id) % G == g`, and a committed part named for a bucket holds only its users, so a
group reads only its own parts. Every list-level signal belongs to one user, so a group's sums are final for its
users. Each group is one Ray task here: it opens its own DuckDB, reads its parts from the shared workspace, and
returns its sums (`g_` rows by key, as Arrow tables); the driver adds the groups' sums up, writes the sum files and
runs the combine, as the local build does, so the tables are the same. The whole-log build (`incremental =
false`) runs its groups the same way (`group_partials`). A task whose worker died is rerun up to
`engine.max_retries` times; nothing is written before every group is back, so a killed run leaves the previous
commit (`EventLog.recover`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from visprep.config import EngineConfig, EventsConfig


def group_sums(parts: list[str], g: int, groups: int, *, cfg: EventsConfig, trust_buckets: bool,
               temp_dir: str | None) -> tuple[dict[str, pa.Table], int, int]:
    """User group g's partial sums, in a DuckDB of its own: ({partial name: its rows by key}, events read, key
    retries). What a Ray task runs; also callable in-process."""
    from visprep.events.duck import to_arrow
    from visprep.events.incremental import _TABLES, IncrementalReport, _sum_sql, _user_group
    from visprep.events.interactions import PairsReport, user_partial_tables
    from visprep.views.db import connect as duck

    con = duck(memory_limit=cfg.duckdb_memory_limit, temp_dir=Path(temp_dir) if temp_dir else None,
               threads=cfg.threads or None, preserve_insertion_order=False)
    try:
        rep = IncrementalReport(pairs=PairsReport())
        user_partial_tables(con)
        _user_group(con, [Path(p) for p in parts], g, groups, cfg=cfg, trust_buckets=trust_buckets, rep=rep)
        sums = {name: to_arrow(con.sql(_sum_sql(name, [(table, 1)]))) for name, table in _TABLES.items()}
        return sums, rep.touched_events, rep.pairs.key_retries
    finally:
        con.close()


def ray_group_sums(engine: EngineConfig, parts: list[Path], groups: int, *, cfg: EventsConfig,
                   trust_buckets: bool, temp_dir: Path | None) -> list[tuple[dict[str, pa.Table], int, int]]:
    """`group_sums` of every group 0..groups-1, one Ray task each (on the cluster `engine` names, or a local
    Ray), in group order."""
    return _ray_map(group_sums, engine, parts, groups, cfg=cfg, trust_buckets=trust_buckets, temp_dir=temp_dir)


def group_partials(parts: list[str], g: int, groups: int, *, cfg: EventsConfig, trust_buckets: bool,
                   temp_dir: str | None) -> tuple[dict[str, pa.Table], dict[str, int], int]:
    """User group g's partial aggregates of the whole-log build (`incremental = false`), in a DuckDB of its own:
    ({"acc" | "hstats" | "pop": its rows}, its signal counts, its key salt). What a Ray task runs."""
    from visprep.events.duck import to_arrow
    from visprep.events.interactions import _SIGNALS, _group, _partial_tables
    from visprep.views.db import connect as duck

    con = duck(memory_limit=cfg.duckdb_memory_limit, temp_dir=Path(temp_dir) if temp_dir else None,
               threads=cfg.threads or None, preserve_insertion_order=False)
    try:
        _partial_tables(con)
        signals = dict.fromkeys(_SIGNALS, 0)
        salt = _group(con, [Path(p) for p in parts], g, groups, cfg=cfg, signals=signals,
                      trust_buckets=trust_buckets, key_mod=None)
        return {t: to_arrow(con.sql(f"SELECT * FROM {t}")) for t in ("acc", "hstats", "pop")}, signals, salt
    finally:
        con.close()


def ray_group_partials(engine: EngineConfig, parts: list[Path], groups: int, *, cfg: EventsConfig,
                       trust_buckets: bool,
                       temp_dir: Path | None) -> list[tuple[dict[str, pa.Table], dict[str, int], int]]:
    """`group_partials` of every group 0..groups-1, one Ray task each, in group order."""
    return _ray_map(group_partials, engine, parts, groups, cfg=cfg, trust_buckets=trust_buckets,
                    temp_dir=temp_dir)


def _ray_map(fn: Any, engine: EngineConfig, parts: list[Path], groups: int, *, cfg: EventsConfig,
             trust_buckets: bool, temp_dir: Path | None) -> list[Any]:
    """`fn(parts, g, groups, ...)` for every group, one Ray task each (retried `engine.max_retries` times when
    its worker dies), on the cluster `engine` names or a local Ray; results in group order."""
    import ray

    from visprep.engines.ray_engine import connect

    connect(engine)
    task = ray.remote(max_retries=engine.max_retries, retry_exceptions=False)(fn)
    names = [str(p) for p in parts]
    refs = [task.remote(names, g, groups, cfg=cfg, trust_buckets=trust_buckets,
                        temp_dir=str(temp_dir) if temp_dir else None) for g in range(groups)]
    return list(ray.get(refs))


def register_sums(con: Any, results: list[tuple[dict[str, pa.Table], int, int]], name: str) -> list[str]:
    """Register every group's rows of partial `name` with `con` (as `_rg{i}_{name}`); return the names."""
    out = []
    for i, (sums, _, _) in enumerate(results):
        rel = f"_rg{i}_{name}"
        con.register(rel, sums[name])
        out.append(rel)
    return out
