"""Interaction pairs from the `events` table, in DuckDB SQL over Parquet (out of core; no per-row Python).

Kinds (anchor -> product):
- `click`, `add_to_cart`, `purchase` (anchor: the query): positives with signal weights (default
  purchase 3 > click 1 > add-to-cart 0.5). The rank of an add-to-cart or purchase is its own `position`, else the
  rank the product had in that result list.
  - An add-to-cart is a weak positive only *without purchase*: when the same (user, session) also buys the product
    (before or after), the purchase counts and the cart does not. A purchase naming no query (a checkout) is
    counted under the query of the session's latest add-to-cart of the product (it would give no pair otherwise).
    The link is per session: a cart in one session and a purchase in another both count (see docs/events.md).
  - A click is a *bounce* (an accidental click) when, within `bounce_s`, the same result list is shown again (a
    search or impression of the query in the session) or another result of it is clicked, and the session neither
    carts nor buys the product. `bounce_policy` discounts it (`bounce_weight`), drops it from the click
    positives, or keeps it. Skip-above and the propensities still count it: it shows the list was examined.
- `coview` (anchor: product A): A viewed, then B viewed or clicked in the same (user, session) within
  `coview_window_s`; counted once per session.
- `skip_above` (anchor: the query): shown above the lowest click of a result list (one user's session, one query)
  and never clicked in that list (Joachims' skip-above); hard negatives.

A result list is (user_id, session_id, query_id); `query_id` identifies a query (text or image) that recurs across
lists, which is what lets intervention harvesting see the same (query, product) at several ranks.

Weights: `raw_weight` = signal weight x count (a discounted bounce counts `bounce_weight`); `ips_weight` = signal
weight x sum of 1/propensity(rank) (clipped; bounces discounted the same way);
`debiased_weight` = ips_weight x (popularity / mean popularity)^-alpha for positives, where popularity counts a
product's click / add-to-cart / purchase / view events; skip-above negatives are not reweighted (under the cascade
reading of skip-above the skipped items were examined). `log_q` = log(popularity / total): subtract it from a logit
for the logQ correction of Yi et al. 2019 (a popular product has the larger log_q, so it loses the more).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from visprep.config import EngineConfig, EventsConfig
from visprep.events.checkpoint import part_bucket, user_bucket_sql
from visprep.events.debias import Propensities, concentration, estimate_propensities, ordered_sum
from visprep.events.duck import sql_list, sql_str

#: The signal rules' counts a pairs build reports (`PairsReport.signals`).
_SIGNALS = ("bounced_clicks", "carts_with_purchase", "purchases_via_cart")


@dataclass
class PairsReport:
    """What a pairs build produced."""

    rows: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    propensities: Propensities | None = None
    concentration: dict[str, float] = field(default_factory=dict)
    key_retries: int = 0  # user groups whose list keys were rebuilt after a hash collision
    groups: int = 0  # user groups of the whole-log build (`build_pairs`)
    engine: str = "local"  # where they ran: local (this DuckDB) or ray (one task per group)
    #: bounced_clicks (found, whatever the policy), carts_with_purchase (carts not counted: the session bought the
    #: product), purchases_via_cart (purchases naming no query, counted under a cart's query).
    signals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_SIGNALS, 0))


def _signal_weight(cfg: EventsConfig) -> str:
    return (f"CASE kind WHEN 'click' THEN {cfg.click_weight} WHEN 'add_to_cart' THEN {cfg.add_to_cart_weight} "
            f"WHEN 'purchase' THEN {cfg.purchase_weight} WHEN 'coview' THEN {cfg.coview_weight} "
            f"WHEN 'skip_above' THEN {cfg.skip_above_weight} END")


_EMPTY_EVENTS = """SELECT NULL::VARCHAR AS event_id, NULL::TIMESTAMPTZ AS ts, NULL::VARCHAR AS user_id,
    NULL::VARCHAR AS session_id, NULL::VARCHAR AS type, NULL::VARCHAR AS query_id, NULL::VARCHAR AS query_image_id,
    NULL::VARCHAR AS product_id, NULL::INTEGER AS position WHERE false"""


def pair_groups(events: int, group_events: int) -> int:
    """How many user-hash groups the pairs build runs in for `events` events (a power of two, at most 64)."""
    g = 1
    while events > g * group_events and g < 64:
        g *= 2
    return g


def group_parts(parts: list[Path], g: int, groups: int, *, trust_buckets: bool) -> list[Path]:
    """The parts that may hold events of user group g of `groups` (by the user bucket in their names)."""
    out = []
    for p in parts:
        bg, bn = part_bucket(p.name) if trust_buckets else (0, 1)
        if bn == 1 or (bn >= groups and bg % groups == g) or (bn < groups and g % bn == bg):
            out.append(p)
    return out


def build_pairs(con: Any, parts: list[Path], out: Path, *, cfg: EventsConfig, groups: int | None = None,
                trust_buckets: bool = True, engine: EngineConfig | None = None, temp_dir: Path | None = None,
                _key_mod: int | None = None) -> PairsReport:
    """Compute `interaction_pairs` from event `parts` and write it to `out` atomically (temp file, rename).

    Every list-level signal (a result list is one user's, a co-view one user's session) is computed per group of
    users (`hash(user_id) % groups`), each group reading only its users' events, into small partial aggregates
    keyed by (anchor, product, kind, rank); propensities need every group's (query, product, rank) counts, so
    the weights are applied once, over the partials, at the end. Memory is bounded by a group, not the log.

    Args:
        con: a DuckDB connection from `visprep.views.db.connect` (preserve_insertion_order off).
        parts: the committed event part files.
        out: the target Parquet file (`tables/interaction_pairs.parquet`).
        cfg: weights, co-view window, bounce rule, propensity and popularity options.
        groups: user-hash groups; default from the event count and `cfg.pairs_group_events`.
        trust_buckets: read for each group only the parts whose names declare its users (`EventLog.buckets_trusted`).
        engine: with kind ray, each group is one Ray task (`visprep.events.ray_pairs`; its DuckDB spills to
            `temp_dir`), its partials added to this connection's; the table is the same.
        _key_mod: test hook: reduce the list keys modulo this, to force hash collisions (see `_load_group`).
    """
    report = PairsReport()
    if groups is None:
        n = sum(pq.ParquetFile(p).metadata.num_rows for p in parts)
        groups = pair_groups(n, cfg.pairs_group_events)
    _partial_tables(con)
    if engine is not None and engine.kind == "ray" and _key_mod is None:
        from visprep.events.ray_pairs import ray_group_partials

        results = ray_group_partials(engine, parts, groups, cfg=cfg, trust_buckets=trust_buckets,
                                     temp_dir=temp_dir)
        for tables, signals, salt in results:
            for name, t in tables.items():
                con.register("_rg", t)
                con.execute(f"INSERT INTO {name} SELECT * FROM _rg")
                con.unregister("_rg")
            for k, v in signals.items():
                report.signals[k] += v
            report.key_retries += salt
        report.engine = "ray"
    else:
        for g in range(groups):
            report.key_retries += _group(con, parts, g, groups, cfg=cfg, signals=report.signals,
                                         trust_buckets=trust_buckets, key_mod=_key_mod)
    report.groups = groups
    con.execute("DROP TABLE IF EXISTS ev")
    write_pairs(con, out, cfg=cfg, report=report)
    return report


def write_pairs(con: Any, out: Path, *, cfg: EventsConfig, report: PairsReport,
                phases: dict[str, float] | None = None) -> None:
    """Weigh the summed partials in temp tables `acc`, `hstats` and `pop` (skip-above negatives, propensities,
    exposures, popularity) and write `interaction_pairs` to `out` atomically; fill `report`'s counts.

    Every term here is global (a sum over all users): the propensities (from all of `hstats`), a pair's exposures,
    a product's popularity and the popularity total and mean. So this step reads all the partials, however few
    users changed (`visprep.events.incremental` keeps the partials per user so that only they are recomputed).
    `phases` (when given) gets each step's seconds: propensities, write (the weighted table), report.
    """
    t0 = time.perf_counter()
    # Summed by key first: the incremental build's hstats may hold a key's count in several rows (a base and the
    # deltas that moved it). Skip-above counts are whole numbers weighed 1.0, so this changes no float.
    con.execute("""INSERT INTO acc SELECT query_id, 'query', query_image_id, product_id, 'skip_above', position,
                          sum(s), sum(s)
                   FROM hstats WHERE s <> 0 GROUP BY query_id, query_image_id, product_id, position
                   HAVING sum(s) > 0""")

    props = estimate_propensities(con, cfg=cfg)
    report.propensities = props
    values = ", ".join(f"({r}, {p!r})" for r, p in props.by_rank.items())
    con.execute(f"CREATE OR REPLACE TEMP TABLE prop AS SELECT * FROM (VALUES {values}) v(rank, p)")
    eta, clip = cfg.examination_eta, cfg.propensity_clip
    inv_prop = (f"CASE WHEN a.position IS NULL OR a.kind IN ('coview', 'skip_above') THEN 1.0 "
                f"ELSE 1.0 / coalesce(p.p, greatest({clip}, pow(a.position, -{eta}))) END")
    weight = _signal_weight(cfg)
    alpha = float(cfg.popularity_alpha)

    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    t1 = time.perf_counter()
    con.execute(f"""
        COPY (
        WITH exposure AS (SELECT query_id, product_id, sum(n) AS exposures FROM hstats GROUP BY ALL),
        all_pairs AS (
            SELECT a.anchor_id, a.anchor_type, min(a.anchor_image_id) AS anchor_image_id, a.product_id, a.kind,
                   sum(a.cnt) AS cnt, {ordered_sum('a.w')} AS w,
                   sum(a.position * a.cnt) / sum(CASE WHEN a.position IS NOT NULL THEN a.cnt END) AS mean_position,
                   {ordered_sum(f'a.w * {inv_prop}')} AS ips
            FROM acc a LEFT JOIN prop p ON p.rank = a.position
            GROUP BY a.anchor_id, a.anchor_type, a.product_id, a.kind),
        popularity AS (SELECT product_id, sum(n)::DOUBLE AS n FROM pop GROUP BY 1 HAVING sum(n) <> 0),
        pop_stats AS (SELECT sum(n)::BIGINT::DOUBLE AS total, sum(n)::BIGINT / count(*) AS mean FROM popularity)
        SELECT x.anchor_id, x.anchor_type, x.anchor_image_id, x.product_id, x.kind, x.cnt AS count,
               CASE WHEN x.anchor_type = 'query' THEN coalesce(e.exposures, 0) END AS exposures,
               x.mean_position,
               round(({weight}) * x.w, 9) AS raw_weight,
               round(({weight}) * x.ips, 9) AS ips_weight,
               ln(coalesce(pop.n, 1.0) / s.total) AS log_q,
               round(CASE WHEN x.kind = 'skip_above' THEN ({weight}) * x.ips
                          ELSE ({weight}) * x.ips * pow(coalesce(pop.n, 1.0) / s.mean, -{alpha}) END, 9)
                 AS debiased_weight
        FROM all_pairs x
        LEFT JOIN exposure e ON x.anchor_type = 'query' AND e.query_id = x.anchor_id AND e.product_id = x.product_id
        LEFT JOIN popularity pop ON pop.product_id = x.product_id
        CROSS JOIN pop_stats s
        ORDER BY x.anchor_type, x.anchor_id, x.kind, x.product_id
        ) TO {sql_str(str(tmp))} (FORMAT parquet, COMPRESSION zstd)""")
    try:
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    t2 = time.perf_counter()
    for kind, n in con.sql(f"SELECT kind, count(*) FROM read_parquet({sql_str(str(out))}) GROUP BY 1").fetchall():
        report.by_kind[kind] = int(n)
    report.rows = sum(report.by_kind.values())
    report.concentration = concentration(con, str(out))
    for t in ("acc", "hstats", "pop", "prop"):
        con.execute(f"DROP TABLE IF EXISTS {t}")
    if phases is not None:
        phases.update(propensities=t1 - t0, write=t2 - t1, report=time.perf_counter() - t2)


def _partial_tables(con: Any) -> None:
    # cnt: events; w: what they weigh in signal units (a discounted bounce is a fraction of a click).
    con.execute("""CREATE OR REPLACE TEMP TABLE acc (anchor_id VARCHAR, anchor_type VARCHAR, anchor_image_id VARCHAR,
                       product_id VARCHAR, kind VARCHAR, position INTEGER, cnt BIGINT, w DOUBLE)""")
    # Per (query, product, rank): result lists showing it (n), clicking it (k), skipping it above a click (s).
    con.execute("CREATE OR REPLACE TEMP TABLE hstats (query_id VARCHAR, product_id VARCHAR, position INTEGER, "
                "n BIGINT, k BIGINT, s BIGINT, query_image_id VARCHAR)")
    con.execute("CREATE OR REPLACE TEMP TABLE pop (product_id VARCHAR, n BIGINT)")


def _group(con: Any, parts: list[Path], g: int, groups: int, *, cfg: EventsConfig, signals: dict[str, int],
           trust_buckets: bool, key_mod: int | None) -> int:
    """Add user group g's partial aggregates to `con`'s partial tables; return its key salt (0 = no collision)."""
    mine = group_parts(parts, g, groups, trust_buckets=trust_buckets)
    src = f"read_parquet({sql_list(mine)})" if mine else f"({_EMPTY_EVENTS})"
    exact = trust_buckets and all(part_bucket(p.name) == (g, groups) for p in mine)
    where = f"WHERE {user_bucket_sql('user_id', groups)} = {g}" if groups > 1 and not exact else ""
    salt = _load_group(con, src, where, key_mod=key_mod)
    _group_partials(con, cfg=cfg, signals=signals)
    return salt


_EV_COLUMNS = "ts, type, query_id, query_image_id, product_id, position"
#: Salts tried for the list / session keys before giving up (each retry follows a detected hash collision).
_KEY_SALTS = 4


def _other(col: str) -> str:
    """`col` with a unit separator appended: a different string for every value, so its hash is independent."""
    return f"({col} || chr(31))"


def _load_group(con: Any, src: str, where: str, *, key_mod: int | None = None, by_user: bool = False) -> int:
    """Materialise one user group's events as temp table `ev`, with integer keys for its result lists and sessions.

    `lk` = hash(user, session, query) names a result list and `sk` = hash(user, session) a session, so the joins
    below run on one integer and a product id instead of four strings, and the user and session strings are not
    kept at all. Keys are checked to be one-to-one with what they name through a second hash (`lk2`, `sk2`,
    computed in the same read: comparing integers costs a fraction of comparing the strings) of *other inputs*:
    each field with a separator appended. A hash of several fields combines the fields' own hashes, so a check
    over the same fields would collide again whenever two user (or session, or query) ids collide; over changed
    strings it needs a second, independent 64-bit collision. On a collision the keys are rebuilt with another
    salt. The salt is hashed first: appended last it would be combined with an already colliding hash and collide
    again. Returns the salt used. `key_mod` (tests) reduces the first salt's keys modulo it, forcing collisions.
    `by_user` adds the column `uh` that `user_partials` groups by, as a constant: the incremental build keeps
    only sums over users (of all users, or of the touched ones), so a per-user key (hash(user_id)) would only
    multiply the rows its aggregates carry, by the users sharing a (query, product, rank) key (docs/events.md,
    "Full rebuild").
    """
    for salt in range(_KEY_SALTS):
        mod = f" % {int(key_mod)}" if key_mod and salt == 0 else ""
        check = 1000 + salt
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE ev AS
            SELECT {_EV_COLUMNS},{" 0::UBIGINT AS uh," if by_user else ""}
                   hash({salt}, user_id, session_id, query_id){mod} AS lk,
                   hash({salt}, user_id, session_id){mod} AS sk,
                   hash({check}, {_other('user_id')}, {_other('session_id')}, {_other('query_id')}) AS lk2,
                   hash({check}, {_other('user_id')}, {_other('session_id')}) AS sk2
            FROM {src} {where}""")
        collisions = con.execute("""
            SELECT (SELECT count(*) FROM (SELECT lk FROM ev WHERE query_id IS NOT NULL GROUP BY lk
                                          HAVING min(lk2) <> max(lk2)))
                 + (SELECT count(*) FROM (SELECT sk FROM ev GROUP BY sk HAVING min(sk2) <> max(sk2)))
            """).fetchall()[0][0]
        if not collisions:
            return salt
    raise RuntimeError(f"list keys still collide after {_KEY_SALTS} salts ({collisions} keys): "
                       "the events of this user group cannot be keyed exactly")


def _bounced_clicks_sql(bounce_s: float) -> str:
    """SELECT of the (lk, product_id, ts) of the clicks in `act0` that bounced (module docstring), from the
    temp tables `act0`, `ev` and `engaged`."""
    within = f"to_seconds({float(bounce_s)!r})"
    # Joins from the few clicked lists into the group's events (hash on the list key, then the time window): the
    # lists nobody clicked, most of the impressions, drop out at the hash probe.
    return f"""
        WITH clk AS (SELECT DISTINCT lk, sk, product_id, ts FROM act0 WHERE kind = 'click'),
        returned AS (
            SELECT DISTINCT c.lk, c.product_id, c.ts FROM clk c
            JOIN ev l ON l.lk = c.lk AND l.ts > c.ts AND l.ts <= c.ts + {within}
            WHERE l.type IN ('search', 'impression') AND l.query_id IS NOT NULL
            UNION
            SELECT c.lk, c.product_id, c.ts FROM clk c
            JOIN clk d ON d.lk = c.lk AND d.product_id <> c.product_id AND d.ts > c.ts AND d.ts <= c.ts + {within})
        SELECT r.lk, r.product_id, r.ts FROM returned r
        JOIN clk c ON c.lk = r.lk AND c.product_id = r.product_id AND c.ts = r.ts
        ANTI JOIN engaged g ON g.sk = c.sk AND g.product_id = c.product_id"""


def _signal_events(con: Any, cfg: EventsConfig, *, by_user: bool = False) -> None:
    """Temp table `act`: one group's query-attributed clicks, carts and purchases as they count (module docstring).

    Columns: kind, lk, query_id, product_id, query_image_id, position (its own, else the product's rank in the
    list), cnt (events), w (their weight in signal units: 0 for a dropped bounce), bounced, via_cart; and the user
    hash `uh` first when `by_user`.
    """
    u = "uh, " if by_user else ""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE act0 AS
        SELECT {"e.uh, " if by_user else ""}e.type AS kind, e.lk, e.sk, e.ts, e.query_id, e.product_id,
               coalesce(e.query_image_id, i.query_image_id) AS query_image_id,
               coalesce(e.position, i.position) AS position
        FROM ev e LEFT JOIN imp i ON i.lk = e.lk AND i.product_id = e.product_id
        WHERE e.type IN ('click', 'add_to_cart', 'purchase') AND e.query_id IS NOT NULL""")
    # The session's carts and purchases of a product, attributed to a query or not: any purchase makes its carts
    # part of a purchase rather than carts "without purchase"; any of them makes a click on it intended.
    con.execute("""
        CREATE OR REPLACE TEMP TABLE engaged AS
        SELECT sk, product_id, count(*) FILTER (WHERE type = 'purchase') AS purchases,
               count(*) FILTER (WHERE type = 'purchase' AND query_id IS NULL) AS unattributed
        FROM ev WHERE type IN ('add_to_cart', 'purchase') AND product_id IS NOT NULL GROUP BY sk, product_id""")
    if cfg.bounce_policy == "keep":
        flagged = "SELECT *, false AS bounced FROM act0"
    else:
        flagged = f"""
            SELECT a.*, b.lk IS NOT NULL AS bounced
            FROM act0 a LEFT JOIN ({_bounced_clicks_sql(cfg.bounce_s)}) b
              ON a.kind = 'click' AND b.lk = a.lk AND b.product_id = a.product_id AND b.ts = a.ts"""
    bounce_w = 0.0 if cfg.bounce_policy == "drop" else float(cfg.bounce_weight)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE act AS
        WITH flagged AS ({flagged})
        SELECT {"a.uh, " if by_user else ""}a.kind, a.lk, a.query_id, a.product_id, a.query_image_id, a.position,
               1 AS cnt,
               CASE WHEN a.bounced THEN {bounce_w!r} ELSE 1.0 END AS w, a.bounced, false AS via_cart
        FROM flagged a
        WHERE a.kind <> 'add_to_cart'
           OR NOT EXISTS (SELECT 1 FROM engaged b WHERE b.sk = a.sk AND b.product_id = a.product_id
                                                      AND b.purchases > 0)
        UNION ALL
        SELECT {u}'purchase', lk, query_id, product_id, query_image_id, position, unattributed,
               unattributed::DOUBLE, false, true
        FROM (SELECT a.*, b.unattributed,
                     row_number() OVER (PARTITION BY a.sk, a.product_id
                                        ORDER BY a.ts DESC, a.query_id, a.position, a.query_image_id) AS latest
              FROM act0 a JOIN engaged b ON b.sk = a.sk AND b.product_id = a.product_id
              WHERE a.kind = 'add_to_cart' AND b.unattributed > 0)
        WHERE latest = 1""")


def _group_partials(con: Any, *, cfg: EventsConfig, signals: dict[str, int]) -> None:
    """Add one user group's partial aggregates (temp table `ev`) to `acc`, `hstats` and `pop`; count its signals."""
    window = float(cfg.coview_window_s)
    # A list key names one query (checked by `_load_group`), so grouping by the query too changes nothing and
    # costs less than carrying it as an aggregate.
    con.execute("""
        CREATE OR REPLACE TEMP TABLE imp AS
        SELECT lk, product_id, query_id, min(position) AS position, min(query_image_id) AS query_image_id
        FROM ev WHERE type = 'impression' GROUP BY lk, product_id, query_id""")
    _signal_events(con, cfg)
    bounced, carts_kept, carts_all, via_cart = con.execute("""
        SELECT (SELECT count(*) FROM act WHERE bounced),
               (SELECT count(*) FROM act WHERE kind = 'add_to_cart'),
               (SELECT count(*) FROM act0 WHERE kind = 'add_to_cart'),
               (SELECT coalesce(sum(cnt), 0) FROM act WHERE via_cart)""").fetchall()[0]
    signals["bounced_clicks"] += int(bounced)
    signals["carts_with_purchase"] += int(carts_all - carts_kept)
    signals["purchases_via_cart"] += int(via_cart)
    # One pass over the impressions gives the harvesting counts, the exposures and the skip-above negatives:
    # a product shown above the lowest click of its list and never clicked in it.
    con.execute("""
        INSERT INTO hstats
        WITH clicked AS (SELECT DISTINCT lk, product_id FROM act WHERE kind = 'click'),
        lists AS (SELECT lk, max(position) AS lowest_click FROM act
                  WHERE kind = 'click' AND position IS NOT NULL GROUP BY lk)
        SELECT i.query_id, i.product_id, i.position, count(*) AS n, count(c.lk) AS k,
               count(*) FILTER (WHERE l.lowest_click > i.position AND c.lk IS NULL) AS s,
               min(i.query_image_id) FILTER (WHERE l.lowest_click > i.position AND c.lk IS NULL) AS query_image_id
        FROM imp i LEFT JOIN clicked c ON c.lk = i.lk AND c.product_id = i.product_id
                   LEFT JOIN lists l ON l.lk = i.lk
        GROUP BY i.query_id, i.product_id, i.position""")
    con.execute("""INSERT INTO pop SELECT product_id, count(*) FROM ev
                   WHERE type IN ('click', 'add_to_cart', 'purchase', 'view') AND product_id IS NOT NULL
                   GROUP BY 1""")
    con.execute(f"""
        INSERT INTO acc
        WITH seen AS (
            SELECT sk, product_id, ts, type FROM ev
            WHERE type IN ('view', 'click') AND product_id IS NOT NULL),
        coviews AS (
            SELECT DISTINCT a.product_id AS anchor_id, b.product_id, a.sk
            FROM seen a JOIN seen b
              ON a.sk = b.sk AND b.ts > a.ts AND b.ts <= a.ts + to_seconds({window})
            WHERE a.type = 'view' AND a.product_id <> b.product_id)
        SELECT query_id, 'query', min(query_image_id), product_id, kind, position, sum(cnt), sum(w)
        FROM act WHERE w > 0 GROUP BY query_id, product_id, kind, position
        UNION ALL
        SELECT anchor_id, 'product', NULL, product_id, 'coview', NULL, count(*), count(*)
        FROM coviews GROUP BY anchor_id, product_id""")
    for t in ("imp", "act", "act0", "engaged"):
        con.execute(f"DROP TABLE IF EXISTS {t}")


def user_partial_tables(con: Any) -> None:
    """Create the empty partial tables `uacc`, `uhs`, `upop` and `usig` (all keyed by `uh`, a constant: see
    `_load_group`).

    They hold what `_group_partials` adds to `acc`, `hstats` and `pop`, with every column a sum of integers, so
    sums over sessions can be moved by a session's rows exactly (`visprep.events.incremental`):
    `acc`'s float weight becomes (cnt - nb) + nb x bounce_weight (nb = bounced clicks counted), and the image ids
    that `acc` and `hstats` take a min() of are part of the key.
    """
    con.execute("""CREATE OR REPLACE TEMP TABLE uacc (uh UBIGINT, anchor_id VARCHAR, anchor_type VARCHAR,
                       anchor_image_id VARCHAR, product_id VARCHAR, kind VARCHAR, position INTEGER, cnt BIGINT,
                       nb BIGINT)""")
    con.execute("CREATE OR REPLACE TEMP TABLE uhs (uh UBIGINT, query_id VARCHAR, product_id VARCHAR, "
                "position INTEGER, query_image_id VARCHAR, n BIGINT, k BIGINT, s BIGINT)")
    con.execute("CREATE OR REPLACE TEMP TABLE upop (uh UBIGINT, product_id VARCHAR, n BIGINT)")
    con.execute("CREATE OR REPLACE TEMP TABLE usig (uh UBIGINT, bounced_clicks BIGINT, carts_with_purchase BIGINT, "
                "purchases_via_cart BIGINT)")


def user_partials(con: Any, *, cfg: EventsConfig) -> None:
    """Add the per-user partials of the events in temp table `ev` (loaded with `by_user`) to `uacc`, `uhs`, `upop`
    and `usig`: the same rules as `_group_partials`, grouped by user hash as well."""
    window = float(cfg.coview_window_s)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE imp AS
        SELECT uh, lk, product_id, query_id, min(position) AS position, min(query_image_id) AS query_image_id
        FROM ev WHERE type = 'impression' GROUP BY uh, lk, product_id, query_id""")
    _signal_events(con, cfg, by_user=True)
    con.execute("""
        INSERT INTO usig
        WITH a AS (SELECT uh, count(*) FILTER (WHERE bounced) AS b,
                          count(*) FILTER (WHERE kind = 'add_to_cart' AND NOT via_cart) AS kept,
                          coalesce(sum(cnt) FILTER (WHERE via_cart), 0) AS via FROM act GROUP BY uh),
             z AS (SELECT uh, count(*) AS carts FROM act0 WHERE kind = 'add_to_cart' GROUP BY uh)
        SELECT coalesce(a.uh, z.uh), coalesce(a.b, 0), coalesce(z.carts, 0) - coalesce(a.kept, 0),
               coalesce(a.via, 0)
        FROM a FULL JOIN z ON z.uh = a.uh""")
    con.execute("""
        INSERT INTO uhs
        WITH clicked AS (SELECT DISTINCT lk, product_id FROM act WHERE kind = 'click'),
        lists AS (SELECT lk, max(position) AS lowest_click FROM act
                  WHERE kind = 'click' AND position IS NOT NULL GROUP BY lk),
        flagged AS (
            SELECT i.uh, i.query_id, i.product_id, i.position, c.lk IS NOT NULL AS clicked,
                   l.lowest_click > i.position AND c.lk IS NULL AS skipped, i.query_image_id
            FROM imp i LEFT JOIN clicked c ON c.lk = i.lk AND c.product_id = i.product_id
                       LEFT JOIN lists l ON l.lk = i.lk)
        SELECT uh, query_id, product_id, position, CASE WHEN skipped THEN query_image_id END AS qi,
               count(*), count(*) FILTER (WHERE clicked), count(*) FILTER (WHERE skipped)
        FROM flagged GROUP BY uh, query_id, product_id, position, qi""")
    con.execute("""INSERT INTO upop SELECT uh, product_id, count(*) FROM ev
                   WHERE type IN ('click', 'add_to_cart', 'purchase', 'view') AND product_id IS NOT NULL
                   GROUP BY 1, 2""")
    con.execute(f"""
        INSERT INTO uacc
        WITH seen AS (
            SELECT uh, sk, product_id, ts, type FROM ev
            WHERE type IN ('view', 'click') AND product_id IS NOT NULL),
        coviews AS (
            SELECT DISTINCT a.uh, a.product_id AS anchor_id, b.product_id, a.sk
            FROM seen a JOIN seen b
              ON a.sk = b.sk AND b.ts > a.ts AND b.ts <= a.ts + to_seconds({window})
            WHERE a.type = 'view' AND a.product_id <> b.product_id)
        SELECT uh, query_id, 'query', query_image_id, product_id, kind, position, sum(cnt),
               coalesce(sum(cnt) FILTER (WHERE bounced), 0)
        FROM act WHERE w > 0 GROUP BY uh, query_id, query_image_id, product_id, kind, position
        UNION ALL
        SELECT uh, anchor_id, 'product', NULL, product_id, 'coview', NULL, count(*), 0
        FROM coviews GROUP BY uh, anchor_id, product_id""")
    for t in ("imp", "act", "act0", "engaged"):
        con.execute(f"DROP TABLE IF EXISTS {t}")


def load_user_partials(con: Any, acc: str, hs: str, pop: str, *, cfg: EventsConfig) -> None:
    """Fill the temp tables `acc`, `hstats` and `pop` that `write_pairs` reads from partials summed over users
    (SQL relations with the columns of `uacc`, `uhs`, `upop` but `uh`). `write_pairs` adds rows of one key up
    itself, so they are copied as they are; a row's float weight is made here from its integer counts."""
    bw = 0.0 if cfg.bounce_policy == "drop" else float(cfg.bounce_weight)
    _partial_tables(con)
    con.execute(f"""INSERT INTO acc SELECT anchor_id, anchor_type, anchor_image_id, product_id, kind, position, cnt,
                       (cnt - nb)::DOUBLE + nb::DOUBLE * {bw!r} FROM {acc}""")
    con.execute(f"INSERT INTO hstats SELECT query_id, product_id, position, n, k, s, query_image_id FROM {hs}")
    con.execute(f"INSERT INTO pop SELECT product_id, n FROM {pop}")
