"""Incremental `interaction_pairs`: recompute only the users that new events touched, exactly.

Every list-level signal (result lists, sessions, bounces, cart/purchase links, co-views, skip-above) belongs to
one user, so the pairs build's partial aggregates are kept *per user hash* (`uh` = hash(user_id)) as Parquet
files under `tables/events.parquet/_pairs/` (`interactions.user_partials`): `uacc` (anchor, product, kind, rank:
events counted and bounced clicks among them), `uhs` (query, product, rank: lists showing it, clicking it,
skipping it above a click), `upop` (product: popularity events) and `usig` (the signal-rule counts). Every column
is a sum of integers, and the image ids the table takes a min() of are part of the keys, so replacing a user's rows
and adding all users up gives exactly the sums a build over the whole log gives.

An update reads the users of the parts committed since the last build (`EventLog.pairs_pending`), loads *all*
events of those users (old and new: a session that spans the old/new boundary, a late event for an old user and
a duplicate across batches all come out as a whole-log build would see them), recomputes their partials, and
writes the partials with those users' rows replaced. Its cost is the touched users' events plus a filtered scan
of the log and a copy of the partials.

The global terms (`interactions.write_pairs`) are recomputed from the summed partials on every update, never
patched: the rank propensities (intervention harvesting over every (query, product, rank) count), each pair's
exposures, each product's popularity and the popularity total and mean (log_q, debiased weight). Their sufficient
statistics are those sums (`hstats`, `pop`), which the per-user partials hold exactly; a new event anywhere moves
them, so every row's weights are rewritten (the combine step, linear in the partials, not in the events).

Commit: new partial files (unlisted), then the table (temp file, rename), then one atomic checkpoint rewrite that
lists the new partials and marks the pairs current. A kill before that rewrite leaves the old partials listed and
the parts still pending: `EventLog.recover` deletes the unlisted files and the next run redoes the update, which
gives the same table. Partials depend on the co-view window and the bounce rule (and DuckDB's `hash()`): when one
of those changed, the update is a full rebuild of the partials (the run record says why); the weights, the
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
from visprep.events.checkpoint import EventLog, content_hash_canary, part_bucket
from visprep.events.duck import copy_to, scalar, sql_list, sql_str
from visprep.events.interactions import (
    _EMPTY_EVENTS,
    PairsReport,
    _load_group,
    group_parts,
    load_user_partials,
    pair_groups,
    user_partial_tables,
    user_partials,
    write_pairs,
)

#: The options the per-user partials depend on: a change to one rebuilds them from the whole log.
PARTIAL_FIELDS = ("coview_window_s", "bounce_policy", "bounce_s", "bounce_weight")
#: Layout of the partial files; bump to rebuild partials written by an older layout.
PARTIALS_VERSION = 1
_TABLES = {"acc": "uacc", "hs": "uhs", "pop": "upop", "sig": "usig"}
#: Each partial's key and summed columns. The `g_` files hold the sums over all users under the same keys: the
#: combine reads them, and an update moves them by (touched users' new rows - their old rows).
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
    """What the per-user partials depend on: the options in `PARTIAL_FIELDS`, the layout, DuckDB's `hash()`."""
    return {**{f: getattr(cfg, f) for f in PARTIAL_FIELDS}, "version": PARTIALS_VERSION,
            "hash_canary": content_hash_canary(con)}


def update_pairs(con: Any, log: EventLog, out: Path, *, cfg: EventsConfig, trust_buckets: bool, force_full: bool = False,
                 crash: Callable[[str], None] | None = None) -> IncrementalReport:
    """Bring the per-user partials and `interaction_pairs` (`out`) up to the committed log, recomputing only the
    users of the pending parts when the partials allow it, else all of them; commit both (module docstring)."""
    key = partials_key(con, cfg)
    state = log.pairs_state()
    reason = None
    if force_full:
        reason = "requested"
    elif state is None:
        reason = "no per-user partials yet"
    elif state["key"] != key:
        changed = sorted(k for k in key if state["key"].get(k) != key[k])
        reason = "partials depend on changed " + ", ".join(changed)
    seq = int((state or {}).get("seq", 0)) + 1
    files = {f"{pre}{name}": f"{pre}{name}-{seq:08d}.parquet" for name in _TABLES for pre in ("", "g_")}
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
            copy_to(con, f"SELECT * FROM {table}", log.pairs_dir / files[name])
            copy_to(con, _sum_sql(name, [(table, 1)]), log.pairs_dir / files[f"g_{name}"])
        rep.touched_users = int(scalar(con, f"SELECT count(DISTINCT hash(user_id)) FROM read_parquet({sql_list(parts)})"
                                           )) if parts else 0
    else:
        pending = log.pairs_pending()
        con.execute("CREATE OR REPLACE TEMP TABLE touched AS SELECT DISTINCT hash(user_id) AS uh FROM "
                    + (f"read_parquet({sql_list(pending)})" if pending else f"({_EMPTY_EVENTS})"))
        rep.touched_users = int(scalar(con, "SELECT count(*) FROM touched"))
        rep.phases_s["touched_users"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        if rep.touched_users:
            # Parts named for a user bucket that no touched user falls in are not read at all.
            wanted = _touched_buckets(con, parts, trust_buckets=trust_buckets)
            mine = [p for p in parts if wanted(p)]
            n = sum(pq.ParquetFile(p).metadata.num_rows for p in mine)
            # Touched users' events load in user groups as a whole build's do, sized by the parts read (bounds memory).
            groups = pair_groups(n, cfg.pairs_group_events)
            for g in range(groups):
                _user_group(con, mine, g, groups, cfg=cfg, trust_buckets=trust_buckets, rep=rep,
                            only="hash(user_id) IN (SELECT uh FROM touched)")
        rep.phases_s["recompute"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        old = {k: f"read_parquet({sql_str(str(log.pairs_dir / v))})" for k, v in state["files"].items()}  # type: ignore[index]
        for name, table in _TABLES.items():
            # The touched users' old rows leave the sums and the per-user file; their new rows enter both.
            con.execute(f"CREATE OR REPLACE TEMP TABLE was AS SELECT o.* FROM {old[name]} o "
                        "SEMI JOIN touched t ON t.uh = o.uh")
            copy_to(con, f"SELECT o.* FROM {old[name]} o ANTI JOIN touched t ON t.uh = o.uh "
                         f"UNION ALL SELECT * FROM {table}", log.pairs_dir / files[name])
            copy_to(con, _sum_sql(name, [(old[f"g_{name}"], 1), ("was", -1), (table, 1)]),
                    log.pairs_dir / files[f"g_{name}"])
        con.execute("DROP TABLE IF EXISTS was")
        con.execute("DROP TABLE IF EXISTS touched")
    rep.phases_s["write_partials"] = time.perf_counter() - t1
    for t in _TABLES.values():
        con.execute(f"DROP TABLE IF EXISTS {t}")
    con.execute("DROP TABLE IF EXISTS ev")
    if crash:
        crash("pairs_after_partials")
    t1 = time.perf_counter()
    read = {name: f"read_parquet({sql_str(str(log.pairs_dir / files['g_' + name]))})" for name in _TABLES}
    load_user_partials(con, read["acc"], read["hs"], read["pop"], cfg=cfg)
    sig = con.execute(f"SELECT {', '.join(f'coalesce(sum({s}), 0)' for s in _SIGNALS)} FROM {read['sig']}").fetchone()
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
    from visprep.events.checkpoint import user_bucket_sql

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

