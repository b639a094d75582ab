"""Incremental `interaction_pairs`: recompute only the sessions that new events touched, exactly.

Every list-level signal (result lists, bounces, cart/purchase links, co-views, skip-above) belongs to one (user,
session), so the pairs build's partial aggregates add up over sessions (`interactions.user_partials`): `acc`
(anchor, image, product, kind, rank: events counted and bounced clicks among them), `hs` (query, product, rank,
skipped-list image: lists showing it, clicking it, skipping it above a click), `pop` (product: popularity events)
and `sig` (the signal-rule counts). Their sums over all sessions are kept as Parquet files under
`tables/events.parquet/_pairs/`: per partial a base (`g_acc`, ...) and the deltas of later updates (`d_acc`, ...),
whose rows add up by key. Every column is an integer count and the image ids the table takes a min() of are part
of the keys, so sums move exactly.

An update takes the (user, session)s of the parts committed since the last build (`EventLog.pairs_pending`: the
touched sessions) and recomputes their partials twice: over the settled parts (what the sums hold for them;
compaction never merges a pending part with a settled one) and over all parts (old and new events together: a
session spanning the old/new boundary, a late event of an old session and a duplicate across batches come out as
a whole-log build sees them). The sums move by (new - old), written as one more delta file (`_move_sums`); once
the deltas reach `DELTA_SHARE` of the base's rows (or `MAX_DELTAS` files) they are merged into a new base, where
keys whose counts reach zero are dropped, as a build from scratch would never have made them. Its cost is twice
the touched sessions' events, a scan of the user_id / session_id columns of the parts that may hold them, and a
write of the change (a merge every few updates).

The global terms (`interactions.write_pairs`) are recomputed from the summed partials on every update, never
patched: the rank propensities (intervention harvesting over every (query, product, rank) count), each pair's
exposures, each product's popularity and the popularity total and mean (log_q, debiased weight). Their sufficient
statistics are those sums, kept exactly; a new event anywhere moves them (log_q moves on every row), so every
row's weights are rewritten: the combine step, linear in the sums and the table, not in the events; at 10M events
it is most of an update (docs/events.md, "Incremental pairs").

Commit: new sum files (unlisted), then the table (temp file, rename), then one atomic checkpoint rewrite that
lists the new sums, empties the pending list and marks the pairs current. A kill before that rewrite leaves the
old sums listed and the parts still pending: `EventLog.recover` deletes the unlisted files and the next run redoes
the update, which gives the same table. Partials depend on the co-view window and the bounce rule (and DuckDB's
`hash()`): when one of those changed, the update is a full rebuild of the sums (the run record says why; with
`[engine] kind = "ray"` one Ray task per user group, `visprep.events.ray_pairs`); the weights, the propensity and
popularity options only enter the combine, so changing them costs a combine only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from visprep.config import EngineConfig, EventsConfig
from visprep.events.checkpoint import EventLog, content_hash_canary, part_bucket, user_bucket_sql
from visprep.events.duck import copy_to, scalar, sql_list, sql_str
from visprep.events.interactions import (
    _EMPTY_EVENTS,
    _EV_COLUMNS,
    PairsReport,
    _load_group,
    group_parts,
    load_user_partials,
    pair_groups,
    user_partial_tables,
    user_partials,
    write_pairs,
)

#: The options the partials depend on: a change to one rebuilds their sums from the whole log.
PARTIAL_FIELDS = ("coview_window_s", "bounce_policy", "bounce_s", "bounce_weight")
#: Layout of the partial files; bump to rebuild partials written by an older layout.
PARTIALS_VERSION = 2
_TABLES = {"acc": "uacc", "hs": "uhs", "pop": "upop", "sig": "usig"}
#: Each partial's key and summed columns: the `g_` files hold the sums over all users by these keys; the combine
#: reads them, and an update moves them by (touched sessions' new rows - their old rows).
_SUMS = {"acc": (("anchor_id", "anchor_type", "anchor_image_id", "product_id", "kind", "position"), ("cnt", "nb")),
         "hs": (("query_id", "product_id", "position", "query_image_id"), ("n", "k", "s")),
         "pop": (("product_id",), ("n",)),
         "sig": ((), ("bounced_clicks", "carts_with_purchase", "purchases_via_cart"))}
_SIGNALS = ("bounced_clicks", "carts_with_purchase", "purchases_via_cart")
#: An update writes the change of each sum as a delta file until the deltas hold this share of the base's rows,
#: then merges them into a new base (`_move_sums`).
DELTA_SHARE = 0.5
#: At most this many delta files per sum (each is one more file the combine reads).
MAX_DELTAS = 8


@dataclass
class IncrementalReport:
    """How an incremental pairs build went: mode (incremental | full), why it was full, and its phases."""

    pairs: PairsReport
    mode: str = "incremental"
    full_reason: str | None = None
    touched_users: int = 0
    touched_sessions: int = 0
    touched_events: int = 0
    groups: int = 1  # user groups of a full rebuild of the sums
    engine: str = "local"  # where they ran: local (this DuckDB) or ray (one task per group)
    phases_s: dict[str, float] = field(default_factory=dict)

    def as_metrics(self) -> dict[str, Any]:
        """JSON-able summary for the run record."""
        return {"mode": self.mode, "full_reason": self.full_reason, "touched_users": self.touched_users,
                "touched_sessions": self.touched_sessions, "touched_events": self.touched_events,
                "groups": self.groups, "engine": self.engine,
                "phases_s": {k: round(v, 4) for k, v in self.phases_s.items()}}


def partials_key(con: Any, cfg: EventsConfig) -> dict[str, Any]:
    """What the partial sums depend on: the options in `PARTIAL_FIELDS`, the layout, DuckDB's `hash()`."""
    return {**{f: getattr(cfg, f) for f in PARTIAL_FIELDS}, "version": PARTIALS_VERSION,
            "hash_canary": content_hash_canary(con)}


def update_pairs(con: Any, log: EventLog, out: Path, *, cfg: EventsConfig, trust_buckets: bool,
                 force_full: bool = False, crash: Callable[[str], None] | None = None,
                 engine: EngineConfig | None = None, temp_dir: Path | None = None) -> IncrementalReport:
    """Bring the partial sums and `interaction_pairs` (`out`) up to the committed log, recomputing only the
    sessions of the pending parts when the sums allow it, else all of them; commit both (module docstring).
    With `engine` kind ray, a rebuild of every user's sums runs one Ray task per user group
    (`visprep.events.ray_pairs`; DuckDB spills to `temp_dir` there)."""
    key = partials_key(con, cfg)
    state = log.pairs_state()
    reason = None
    if force_full:
        reason = "requested"
    elif state is None:
        reason = "no partial sums yet"
    elif state["key"] != key:
        changed = sorted(k for k in key if state["key"].get(k) != key[k])
        reason = "partials depend on changed " + ", ".join(changed)
    seq = int((state or {}).get("seq", 0)) + 1
    files: dict[str, list[str]] = {}
    log.pairs_dir.mkdir(parents=True, exist_ok=True)
    rep = IncrementalReport(pairs=PairsReport())
    t0 = time.perf_counter()
    parts = log.part_files()
    user_partial_tables(con)
    if reason is not None:
        rep.mode, rep.full_reason = "full", reason
        n = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
        groups = rep.groups = pair_groups(n, cfg.pairs_group_events)
        terms: dict[str, list[tuple[str, int]]] = {name: [(table, 1)] for name, table in _TABLES.items()}
        if engine is not None and engine.kind == "ray":
            from visprep.events.ray_pairs import ray_group_sums, register_sums

            results = ray_group_sums(engine, parts, groups, cfg=cfg, trust_buckets=trust_buckets,
                                     temp_dir=temp_dir)
            rep.engine = "ray"
            rep.touched_events = sum(r[1] for r in results)
            rep.pairs.key_retries = sum(r[2] for r in results)
            terms = {name: [(rel, 1) for rel in register_sums(con, results, name)] for name in _TABLES}
        else:
            for g in range(groups):
                _user_group(con, parts, g, groups, cfg=cfg, trust_buckets=trust_buckets, rep=rep)
        rep.phases_s["recompute"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        for name in _TABLES:
            files[name] = [f"g_{name}-{seq:08d}.parquet"]
            copy_to(con, _sum_sql(name, terms[name]), log.pairs_dir / files[name][0])
            for rel, _ in terms[name]:
                if rel.startswith("_rg"):
                    con.unregister(rel)
        every = f"SELECT count(DISTINCT hash(user_id)) FROM read_parquet({sql_list(parts)})"
        rep.touched_users = int(scalar(con, every)) if parts else 0
    else:
        pending = log.pairs_pending()
        # Every signal belongs to one (user, session): a result list, a bounce, a cart's purchase, a co-view. So
        # only the sessions the new events fall in are recomputed, not their users' whole history. (A hash
        # collision only adds a session whose old and new partials are equal: it moves nothing.)
        con.execute("CREATE OR REPLACE TEMP TABLE touched AS SELECT DISTINCT hash(user_id) AS uh, "
                    "hash(user_id, session_id) AS sh FROM "
                    + (f"read_parquet({sql_list(pending)})" if pending else f"({_EMPTY_EVENTS})"))
        rep.touched_sessions = int(scalar(con, "SELECT count(*) FROM touched"))
        rep.touched_users = int(scalar(con, "SELECT count(DISTINCT uh) FROM touched"))
        rep.phases_s["touched_users"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        assert state is not None  # no reason for a full build: the sums exist
        if rep.touched_users:
            # Parts named for a user bucket that no touched user falls in are not read at all.
            wanted = _touched_buckets(con, parts, trust_buckets=trust_buckets)
            mine = [p for p in parts if wanted(p)]
            # One scan: the touched sessions' events, flagged by whether the sums already hold them (compaction
            # never mixes pending and settled parts). Their share in the sums is recomputed from the settled ones
            # rather than stored per session; their new partials from all of them.
            fresh = ", ".join(sql_str(str(p)) for p in pending)
            con.execute(f"""CREATE OR REPLACE TEMP TABLE tev AS
                SELECT user_id, session_id, {_EV_COLUMNS}, filename IN ({fresh}) AS fresh
                FROM read_parquet({sql_list(mine)}, filename = true)
                WHERE hash(user_id, session_id) IN (SELECT sh FROM touched)""")
            n = int(scalar(con, "SELECT count(*) FROM tev"))
            rep.phases_s["recompute_scan"] = time.perf_counter() - t1
            groups = pair_groups(n, cfg.pairs_group_events)
            scratch = IncrementalReport(pairs=PairsReport())
            for src, into in (("(SELECT * FROM tev WHERE NOT fresh)", scratch), ("tev", rep)):
                for g in range(groups):
                    where = f"WHERE {user_bucket_sql('user_id', groups)} = {g}" if groups > 1 else ""
                    into.pairs.key_retries += _load_group(con, src, where, by_user=True)
                    user_partials(con, cfg=cfg)
                if into is scratch:
                    for table in _TABLES.values():
                        con.execute(f"CREATE OR REPLACE TEMP TABLE was_{table} AS SELECT * FROM {table}")
                    user_partial_tables(con)
            rep.pairs.key_retries += scratch.pairs.key_retries
            rep.touched_events = n
            con.execute("DROP TABLE IF EXISTS tev")
        rep.phases_s["recompute"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        for name, table in _TABLES.items():
            files[name] = _move_sums(con, log.pairs_dir, name, state["files"][name], seq,
                                     [(f"was_{table}", -1), (table, 1)] if rep.touched_users else [])
            con.execute(f"DROP TABLE IF EXISTS was_{table}")
        con.execute("DROP TABLE IF EXISTS touched")
    rep.phases_s["write_sums"] = time.perf_counter() - t1
    for t in _TABLES.values():
        con.execute(f"DROP TABLE IF EXISTS {t}")
    con.execute("DROP TABLE IF EXISTS ev")
    if crash:
        crash("pairs_after_partials")
    t1 = time.perf_counter()
    read = {name: f"read_parquet({sql_list([log.pairs_dir / f for f in files[name]])})" for name in _TABLES}
    acc = read["acc"]
    if len(files["acc"]) > 1:
        # A delta moves a key's counts: the combine weighs each key once, from its net counts (a float weight
        # split over base and delta rows would add up in another order than a build from scratch).
        keys = ", ".join(_SUMS["acc"][0])
        acc = f"(SELECT {keys}, sum(cnt) AS cnt, sum(nb) AS nb FROM {acc} GROUP BY ALL HAVING sum(cnt) <> 0)"
    load_user_partials(con, acc, read["hs"], read["pop"], cfg=cfg)
    sums = ", ".join(f"coalesce(sum({s}), 0)" for s in _SIGNALS)
    sig = con.execute(f"SELECT {sums} FROM {read['sig']}").fetchone()
    rep.pairs.signals = {s: int(v) for s, v in zip(_SIGNALS, sig)}
    sub: dict[str, float] = {"load": time.perf_counter() - t1}
    write_pairs(con, out, cfg=cfg, report=rep.pairs, phases=sub)
    rep.phases_s["combine"] = time.perf_counter() - t1
    rep.phases_s.update({f"combine_{k}": v for k, v in sub.items()})
    if crash:
        crash("pairs_after_table")
    log.commit_pairs(files, key, seq)
    rep.phases_s["total"] = time.perf_counter() - t0
    return rep


def _move_sums(con: Any, folder: Path, name: str, listed: list[str], seq: int,
               terms: list[tuple[str, int]]) -> list[str]:
    """Move partial `name`'s sums (files `listed` in `folder`: a base, then deltas) by `terms` (the touched
    sessions' new rows, +1, and old rows, -1); return the files that hold the moved sums.

    The change is written as one more delta file, as small as what changed. Once the deltas hold more than
    `DELTA_SHARE` of the base's rows, or there would be more than `MAX_DELTAS` of them, the base and every delta
    are merged into a new base instead: the sums are rewritten every few updates rather than on every one, and
    the combine that reads them all stays bounded.
    """
    if not terms:
        return listed
    con.execute(f"CREATE OR REPLACE TEMP TABLE delta AS {_sum_sql(name, terms, delta=True)}")
    new_rows = int(scalar(con, "SELECT count(*) FROM delta"))
    if not new_rows:
        return listed
    rows = [pq.ParquetFile(folder / f).metadata.num_rows for f in listed]
    if len(listed) >= MAX_DELTAS + 1 or sum(rows[1:]) + new_rows > DELTA_SHARE * rows[0]:
        merged = f"g_{name}-{seq:08d}.parquet"
        copy_to(con, _sum_sql(name, [(f"read_parquet({sql_list([folder / f for f in listed])})", 1),
                                     ("delta", 1)]), folder / merged)
        out = [merged]
    else:
        d = f"d_{name}-{seq:08d}.parquet"
        copy_to(con, "SELECT * FROM delta", folder / d)
        out = [*listed, d]
    con.execute("DROP TABLE delta")
    return out


def _sum_sql(name: str, terms: list[tuple[str, int]], *, delta: bool = False) -> str:
    """SELECT of partial `name`'s sums over the relations of `terms` (relation, sign: +1 adds, -1 subtracts), by
    its key. Of the sums themselves, keys whose counts fall to zero are dropped, as a build from scratch would
    never have produced them; of a `delta`, the keys whose sums all stay as they were."""
    keys, sums = _SUMS[name]
    cols = ", ".join(keys)
    union = " UNION ALL ".join(
        f"SELECT {cols + ', ' if keys else ''}{', '.join(f'{sign} * {c} AS {c}' for c in sums)} FROM {rel}"
        for rel, sign in terms)
    totals = ", ".join(f"coalesce(sum({c}), 0)::BIGINT AS {c}" for c in sums)
    if not keys:
        return f"SELECT {totals} FROM ({union})"
    if delta:  # a key's count may stay while another sum moves (a click that became a bounce)
        return f"SELECT {cols}, {totals} FROM ({union}) GROUP BY {cols} HAVING " + " OR ".join(
            f"sum({c}) <> 0" for c in sums)
    # Every row of a partial counts at least one event in its first sum (a list, an event, a product's event).
    return f"SELECT {cols}, {totals} FROM ({union}) GROUP BY {cols} HAVING sum({sums[0]}) <> 0"


def _user_group(con: Any, parts: list[Path], g: int, groups: int, *, cfg: EventsConfig, trust_buckets: bool,
                rep: IncrementalReport, only: str | None = None) -> None:
    """Add user group g's per-user partials (restricted to the users `only` selects) to `uacc` etc.; count its
    events and key retries in `rep`."""
    mine = group_parts(parts, g, groups, trust_buckets=trust_buckets)
    src = f"read_parquet({sql_list(mine)})" if mine else f"({_EMPTY_EVENTS})"
    exact = trust_buckets and all(part_bucket(p.name) == (g, groups) for p in mine)
    conds = [f"{user_bucket_sql('user_id', groups)} = {g}"] if groups > 1 and not exact else []
    if only:
        conds.append(only)
    salt = _load_group(con, src, ("WHERE " + " AND ".join(conds)) if conds else "", by_user=True)
    rep.pairs.key_retries += salt
    rep.touched_events += int(scalar(con, "SELECT count(*) FROM ev"))
    user_partials(con, cfg=cfg)


def _touched_buckets(con: Any, parts: list[Path], *, trust_buckets: bool) -> Callable[[Path], bool]:
    """A test of whether a part may hold a touched user (temp table `touched`), from the bucket in its name."""
    if not trust_buckets:
        return lambda p: True
    sizes = sorted({part_bucket(p.name)[1] for p in parts} - {1})
    hit: dict[int, set[int]] = {}
    for size in sizes:
        hit[size] = {int(r[0]) for r in con.execute(f"SELECT DISTINCT uh % {size} FROM touched").fetchall()}

    def wanted(p: Path) -> bool:
        g, size = part_bucket(p.name)
        return size == 1 or g in hit[size]
    return wanted

