"""Incremental `interaction_pairs`: recompute only the users that new events touched, exactly.

Every list-level signal (result lists, sessions, bounces, cart/purchase links, co-views, skip-above) belongs to
one user, so the pairs build's partial aggregates add up over users (`interactions.user_partials`, computed per
user hash `uh` = hash(user_id)): `acc` (anchor, image, product, kind, rank: events counted and bounced clicks
among them), `hs` (query, product, rank, skipped-list image: lists showing it, clicking it, skipping it above a
click), `pop` (product: popularity events) and `sig` (the signal-rule counts). Their sums over all users are kept
as Parquet files under `tables/events.parquet/_pairs/` (`g_acc`, `g_hs`, `g_pop`, `g_sig`). Every column is an
integer count and the image ids the table takes a min() of are part of the keys, so sums move exactly.

An update takes the users of the parts committed since the last build (`EventLog.pairs_pending`: the touched
users) and recomputes their partials twice: over the settled parts (what the sums hold for them; compaction never
merges a pending part with a settled one) and over all parts (old and new events together: a session spanning
the old/new boundary, a late event for an old user and a duplicate across batches come out as a whole-log build
sees them). The sums move by (new - old); keys whose sums reach zero are dropped, as a build from scratch would
never have made them. Its cost is twice the touched users' events, a scan of the parts that may hold them, and a
rewrite of the sums.

The global terms (`interactions.write_pairs`) are recomputed from the summed partials on every update, never
patched: the rank propensities (intervention harvesting over every (query, product, rank) count), each pair's
exposures, each product's popularity and the popularity total and mean (log_q, debiased weight). Their sufficient
statistics are those sums (`g_hs`, `g_pop`), kept exactly; a new event anywhere moves them, so every row's
weights are rewritten (the combine step, linear in the sums, not in the events).

Commit: new sum files (unlisted), then the table (temp file, rename), then one atomic checkpoint rewrite that
lists the new sums, empties the pending list and marks the pairs current. A kill before that rewrite leaves the
old sums listed and the parts still pending: `EventLog.recover` deletes the unlisted files and the next run redoes the update, which
gives the same table. Partials depend on the co-view window and the bounce rule (and DuckDB's `hash()`): when one
of those changed, the update is a full rebuild of the sums (the run record says why); the weights, the
propensity and popularity options only enter the combine, so changing them costs a combine only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from visprep.config import EventsConfig
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
#: reads them, and an update moves them by (touched users' new rows - their old rows).
_SUMS = {"acc": (("anchor_id", "anchor_type", "anchor_image_id", "product_id", "kind", "position"), ("cnt", "nb")),
         "hs": (("query_id", "product_id", "position", "query_image_id"), ("n", "k", "s")),
         "pop": (("product_id",), ("n",)),
         "sig": ((), ("bounced_clicks", "carts_with_purchase", "purchases_via_cart"))}
_SIGNALS = ("bounced_clicks", "carts_with_purchase", "purchases_via_cart")


@dataclass
class IncrementalReport:
    """How an incremental pairs build went: mode (incremental | full), why it was full, and its phases."""

    pairs: PairsReport
    mode: str = "incremental"
    full_reason: str | None = None
    touched_users: int = 0
    touched_events: int = 0
    phases_s: dict[str, float] = field(default_factory=dict)

    def as_metrics(self) -> dict[str, Any]:
        """JSON-able summary for the run record."""
        return {"mode": self.mode, "full_reason": self.full_reason, "touched_users": self.touched_users,
                "touched_events": self.touched_events,
                "phases_s": {k: round(v, 4) for k, v in self.phases_s.items()}}


def partials_key(con: Any, cfg: EventsConfig) -> dict[str, Any]:
    """What the partial sums depend on: the options in `PARTIAL_FIELDS`, the layout, DuckDB's `hash()`."""
    return {**{f: getattr(cfg, f) for f in PARTIAL_FIELDS}, "version": PARTIALS_VERSION,
            "hash_canary": content_hash_canary(con)}


def update_pairs(con: Any, log: EventLog, out: Path, *, cfg: EventsConfig, trust_buckets: bool,
                 force_full: bool = False, crash: Callable[[str], None] | None = None) -> IncrementalReport:
    """Bring the partial sums and `interaction_pairs` (`out`) up to the committed log, recomputing only the users
    of the pending parts when the sums allow it, else all users; commit both (module docstring)."""
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
    files = {name: f"g_{name}-{seq:08d}.parquet" for name in _TABLES}
    log.pairs_dir.mkdir(parents=True, exist_ok=True)
    rep = IncrementalReport(pairs=PairsReport())
    t0 = time.perf_counter()
    parts = log.part_files()
    user_partial_tables(con)
    if reason is not None:
        rep.mode, rep.full_reason = "full", reason
        n = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
        groups = pair_groups(n, cfg.pairs_group_events)
        for g in range(groups):
            _user_group(con, parts, g, groups, cfg=cfg, trust_buckets=trust_buckets, rep=rep)
        rep.phases_s["recompute"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        for name, table in _TABLES.items():
            copy_to(con, _sum_sql(name, [(table, 1)]), log.pairs_dir / files[name])
        every = f"SELECT count(DISTINCT hash(user_id)) FROM read_parquet({sql_list(parts)})"
        rep.touched_users = int(scalar(con, every)) if parts else 0
    else:
        pending = log.pairs_pending()
        con.execute("CREATE OR REPLACE TEMP TABLE touched AS SELECT DISTINCT hash(user_id) AS uh FROM "
                    + (f"read_parquet({sql_list(pending)})" if pending else f"({_EMPTY_EVENTS})"))
        rep.touched_users = int(scalar(con, "SELECT count(*) FROM touched"))
        rep.phases_s["touched_users"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        assert state is not None  # no reason for a full build: the sums exist
        old = {k: f"read_parquet({sql_str(str(log.pairs_dir / v))})" for k, v in state["files"].items()}
        if rep.touched_users:
            # Parts named for a user bucket that no touched user falls in are not read at all.
            wanted = _touched_buckets(con, parts, trust_buckets=trust_buckets)
            mine = [p for p in parts if wanted(p)]
            # One scan: the touched users' events, flagged by whether the sums already hold them (compaction never
            # mixes pending and settled parts). Their share in the sums is recomputed from the settled ones rather
            # than stored per user; their new partials from all of them.
            fresh = ", ".join(sql_str(str(p)) for p in pending)
            con.execute(f"""CREATE OR REPLACE TEMP TABLE tev AS
                SELECT user_id, session_id, {_EV_COLUMNS}, filename IN ({fresh}) AS fresh
                FROM read_parquet({sql_list(mine)}, filename = true)
                WHERE hash(user_id) IN (SELECT uh FROM touched)""")
            n = int(scalar(con, "SELECT count(*) FROM tev"))
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
            terms = [(old[name], 1)] + ([(f"was_{table}", -1), (table, 1)] if rep.touched_users else [])
            copy_to(con, _sum_sql(name, terms), log.pairs_dir / files[name])
            con.execute(f"DROP TABLE IF EXISTS was_{table}")
        con.execute("DROP TABLE IF EXISTS touched")
    rep.phases_s["write_sums"] = time.perf_counter() - t1
    for t in _TABLES.values():
        con.execute(f"DROP TABLE IF EXISTS {t}")
    con.execute("DROP TABLE IF EXISTS ev")
    if crash:
        crash("pairs_after_partials")
    t1 = time.perf_counter()
    read = {name: f"read_parquet({sql_str(str(log.pairs_dir / files[name]))})" for name in _TABLES}
    load_user_partials(con, read["acc"], read["hs"], read["pop"], cfg=cfg)
    sums = ", ".join(f"coalesce(sum({s}), 0)" for s in _SIGNALS)
    sig = con.execute(f"SELECT {sums} FROM {read['sig']}").fetchone()
    rep.pairs.signals = {s: int(v) for s, v in zip(_SIGNALS, sig)}
    write_pairs(con, out, cfg=cfg, report=rep.pairs)
    rep.phases_s["combine"] = time.perf_counter() - t1
    if crash:
        crash("pairs_after_table")
    log.commit_pairs(files, key, seq)
    rep.phases_s["total"] = time.perf_counter() - t0
    return rep


def _sum_sql(name: str, terms: list[tuple[str, int]]) -> str:
    """SELECT of partial `name`'s sums over the relations of `terms` (relation, sign: +1 adds, -1 subtracts), by
    its key; keys whose sums fall to zero are dropped, as a build from scratch would never have produced them."""
    keys, sums = _SUMS[name]
    cols = ", ".join(keys)
    union = " UNION ALL ".join(
        f"SELECT {cols + ', ' if keys else ''}{', '.join(f'{sign} * {c} AS {c}' for c in sums)} FROM {rel}"
        for rel, sign in terms)
    totals = ", ".join(f"coalesce(sum({c}), 0)::BIGINT AS {c}" for c in sums)
    if not keys:
        return f"SELECT {totals} FROM ({union})"
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

