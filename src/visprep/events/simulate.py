"""A seeded click simulator with known truth, for tests and benchmarks.

World: products with a Zipf popularity; queries, each with a pool of candidates: a few truly relevant products
(grade 2 or 3, mostly unpopular), popular-but-irrelevant ones (grade 0) and random others (grade 0). A ranker
scores candidates by log-popularity plus a little relevance plus per-search noise, so popular items sit on top and
the same (query, product) lands at several ranks (what intervention harvesting needs). A user examines rank k with
probability 1/k^eta and clicks an examined item with a probability set by its grade; clicks lead to a product page
view, some to an add-to-cart, some of those to a purchase. Optional duplicate and malformed records exercise the
validation path.

Optional click noise, for the bounce rule of the pairs build (`events.bounce_policy`):
- *accidental clicks* (`accidental_click`): an examined irrelevant result the user did not mean to click is clicked
  and left within `bounce_ms`: the user is back on the results (the query's search is sent again) or clicks
  another result of the list. No product page view, cart or purchase follows.
- *tab opening* (`multi_tab`): in that share of result lists the user opens every result they mean to click within a
  second or two of each other, so genuine clicks look like bounces (a click on another result within seconds):
  the case the bounce rule cannot tell apart without dwell time.

`simulate(...)` returns the events (the producer's JSON fields) and the truth; `iter_event_chunks` streams big runs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: Click probability of an examined item, by true grade; popular irrelevant items get a curiosity click rate.
CLICK_PROB = {0: 0.04, 2: 0.45, 3: 0.75}
POPULAR_IRRELEVANT_CLICK = 0.25
_TYPES = ("search", "impression", "click", "add_to_cart", "purchase", "view")


@dataclass(frozen=True)
class SimConfig:
    """Size and behaviour of a simulated log."""

    seed: int = 0
    products: int = 400
    queries: int = 40
    users: int = 300
    searches: int = 4000
    results: int = 10  # impressions per result list
    relevant: int = 6  # relevant products per query
    popular_distractors: int = 10  # popular, irrelevant products in each pool
    random_distractors: int = 10
    zipf: float = 1.1
    eta: float = 1.0  # true examination: 1/rank^eta
    pop_weight: float = 1.0  # ranker: weight of log popularity
    rel_weight: float = 0.6  # ranker: weight of the true grade
    noise: float = 1.0  # ranker: Gumbel noise scale per search
    days: int = 3
    duplicate_rate: float = 0.0  # share of records sent twice (at-least-once producers)
    accidental_click: float = 0.0  # P(accidental, bounced click | examined, irrelevant, not clicked)
    bounce_ms: tuple[int, int] = (300, 3000)  # an accidental click is left this many ms later (uniform)
    multi_tab: float = 0.0  # share of result lists whose genuine clicks come 1.5 s apart (opened in tabs)
    start: dt.datetime = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)


@dataclass
class World:
    """The truth the simulator draws from."""

    product_ids: np.ndarray  # (P,) str
    popularity: np.ndarray  # (P,) float, sums to 1
    pools: np.ndarray  # (Q, C) product indices
    grades: np.ndarray  # (Q, C) true grade 0..3
    click_prob: np.ndarray  # (Q, C) click probability when examined
    popular_irrelevant: np.ndarray  # (Q, C) bool

    def truth(self) -> pa.Table:
        """(query_id, product_id, grade, popular_irrelevant) for every pool entry."""
        q, c = self.pools.shape
        return pa.table({
            "query_id": pa.array(np.repeat([f"q{i:04d}" for i in range(q)], c)),
            "product_id": pa.array(self.product_ids[self.pools.ravel()]),
            "grade": pa.array(self.grades.ravel().astype(np.int32)),
            "popular_irrelevant": pa.array(self.popular_irrelevant.ravel()),
        })


def _distinct_rows(rng: np.random.Generator, population: np.ndarray, rows: int, k: int,
                   exclude: np.ndarray | None = None) -> np.ndarray:
    """A (rows, k) draw from `population`, distinct within each row and disjoint from that row of `exclude`.

    Rejection sampling in numpy: draw every row with replacement, redraw only the rows with a clash. With k much
    smaller than the population (the simulator's case) a few rounds suffice; small populations use random sort keys.
    """
    n = len(population)
    if k > n:
        raise ValueError(f"cannot draw {k} distinct items from {n}")
    if n * rows <= 4_000_000:  # exact and cheap: per-row random keys, excluded items sorted last
        keys = rng.random((rows, n))
        if exclude is not None:
            pos = np.searchsorted(population, exclude)  # population is sorted by construction
            pos = np.clip(pos, 0, n - 1)
            hit = population[pos] == exclude
            r = np.broadcast_to(np.arange(rows)[:, None], exclude.shape)
            keys[r[hit], pos[hit]] = 2.0
        return population[np.argpartition(keys, k - 1, axis=1)[:, :k]] if k < n else population[
            np.argsort(keys, axis=1)]
    out = population[rng.integers(0, n, (rows, k))]
    bad = np.ones(rows, bool)
    while bad.any():
        idx = np.nonzero(bad)[0]
        out[idx] = population[rng.integers(0, n, (len(idx), k))]
        s = np.sort(out, axis=1)
        clash = (s[:, 1:] == s[:, :-1]).any(axis=1)
        if exclude is not None:
            clash |= (out[:, :, None] == exclude[:, None, :]).any(axis=(1, 2))
        bad = clash
    return out


def make_world(cfg: SimConfig) -> World:
    """Draw products, popularity and per-query candidate pools with grades (vectorised over queries)."""
    rng = np.random.default_rng([cfg.seed, 0])
    P, Q, R = cfg.products, cfg.queries, cfg.relevant
    ids = np.char.add("p", np.char.zfill(np.arange(P).astype(str), 6))
    ranks = rng.permutation(P) + 1
    pop = 1.0 / ranks ** cfg.zipf
    pop /= pop.sum()
    by_pop = np.argsort(-pop)
    head = np.sort(by_pop[: max(cfg.popular_distractors * 2, P // 20)])
    tail = np.sort(by_pop[P // 5:])
    rel = _distinct_rows(rng, tail, Q, R)
    popular = _distinct_rows(rng, head, Q, cfg.popular_distractors, exclude=rel)
    rest = _distinct_rows(rng, np.arange(P), Q, cfg.random_distractors, exclude=np.concatenate([rel, popular], 1))
    g = np.concatenate([rng.choice([2, 3], (Q, R)), np.zeros((Q, popular.shape[1] + rest.shape[1]), int)], axis=1)
    cp = np.select([g == 3, g == 2], [CLICK_PROB[3], CLICK_PROB[2]], CLICK_PROB[0]).astype(float)
    pirr = np.zeros(g.shape, bool)
    pirr[:, R: R + popular.shape[1]] = True
    cp[pirr] = POPULAR_IRRELEVANT_CLICK
    return World(ids, pop, np.concatenate([rel, popular, rest], axis=1), g, cp, pirr)


def _strings(prefix: str, n: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pa.array(n).cast(pa.string()), "")


def _chunk(world: World, cfg: SimConfig, first_search: int, n_search: int, rng: np.random.Generator) -> pa.Table:
    Q, C = world.pools.shape
    K = min(cfg.results, C)
    sidx = np.arange(first_search, first_search + n_search)
    q = rng.integers(0, Q, n_search)
    user = rng.integers(0, cfg.users, n_search)
    span_ms = cfg.days * 86_400_000
    t0 = int(cfg.start.timestamp() * 1000) + (rng.random(n_search) * (span_ms - 3_600_000)).astype(np.int64)
    score = (cfg.pop_weight * np.log(world.popularity[world.pools[q]]) + cfg.rel_weight * world.grades[q]
             + cfg.noise * rng.gumbel(size=(n_search, C)))
    order = np.argsort(-score, axis=1)[:, :K]  # (S, K) pool slots shown at ranks 1..K
    shown = np.take_along_axis(world.pools[q], order, axis=1)
    cprob = np.take_along_axis(world.click_prob[q], order, axis=1)
    grade = np.take_along_axis(world.grades[q], order, axis=1)
    rank = np.broadcast_to(np.arange(1, K + 1), (n_search, K))
    examined = rng.random((n_search, K)) < 1.0 / rank ** cfg.eta
    click = examined & (rng.random((n_search, K)) < cprob)
    cart = click & (rng.random((n_search, K)) < 0.15 + 0.15 * grade)
    buy = cart & (rng.random((n_search, K)) < 0.5)

    cols: dict[str, list] = {k: [] for k in ("sid", "type", "prod", "pos", "rank", "ts", "seq")}

    def add(mask: np.ndarray, typ: int, offset_ms: np.ndarray, with_pos: bool, seq: int) -> None:
        s, k = np.nonzero(mask)
        cols["sid"].append(s)
        cols["type"].append(np.full(len(s), typ, np.int8))
        cols["prod"].append(shown[s, k])
        cols["pos"].append(k + 1 if with_pos else np.zeros(len(s), np.int64))
        cols["rank"].append(k + 1)
        cols["ts"].append(t0[s] + offset_ms[s, k] if offset_ms.ndim == 2 else t0[s] + offset_ms)
        cols["seq"].append(np.full(len(s), seq, np.int8))

    zeros = np.zeros((n_search, K), np.int64)
    first = np.zeros((n_search, K), bool)
    first[:, 0] = True
    add(first, 0, np.zeros(1, np.int64)[0], False, 0)  # the search
    add(np.ones((n_search, K), bool), 1, zeros + 100, True, 1)
    click_ms = 2000 + 30_000 * rank  # clicks in rank order, tens of seconds apart
    first_click = np.where(click.any(axis=1), np.argmax(click, axis=1) + 1, 0)  # rank of a list's first click
    if cfg.multi_tab > 0:
        tabs = (rng.random(n_search) < cfg.multi_tab)[:, None]
        tab_ms = 2000 + 30_000 * first_click[:, None] + 1500 * (np.cumsum(click, axis=1) - 1)
        click_ms = np.where(tabs & click, tab_ms, click_ms)
    add(click, 2, click_ms, True, 2)
    add(click, 5, click_ms + 1000, False, 3)
    add(cart, 3, click_ms + 10_000, False, 4)
    add(buy, 4, click_ms + 20_000, False, 5)
    if cfg.accidental_click > 0:
        oops = examined & (grade == 0) & ~click & (rng.random((n_search, K)) < cfg.accidental_click)
        lo, hi = cfg.bounce_ms
        delay = rng.integers(lo, hi + 1, (n_search, K))
        # Half the bounces (where the list has a genuine click) are that click, `delay` after the accidental one;
        # the others are a return to the results (the search sent again), between the genuine clicks' slots.
        first_ms = np.take_along_axis(click_ms, np.maximum(first_click - 1, 0)[:, None], axis=1)
        to_click = oops & (first_click > 0)[:, None] & (rng.random((n_search, K)) < 0.5)
        oops_ms = np.where(to_click, first_ms - delay, click_ms + 7000)
        add(oops, 2, oops_ms, True, 6)
        back = oops & ~to_click
        add(back, 0, oops_ms + delay, False, 7)

    s = np.concatenate(cols["sid"])
    typ = np.concatenate(cols["type"])
    pos = np.concatenate(cols["pos"])
    prod = np.concatenate(cols["prod"])
    gsid = sidx[s]
    n = len(s)
    eid = pc.binary_join_element_wise(_strings("e", gsid), pa.array(np.concatenate(cols["seq"])).cast(pa.string()),
                                      pa.array(np.concatenate(cols["rank"])).cast(pa.string()), "-")
    # Strings by Arrow `take` from small dictionaries: no per-row Python objects.
    qids = _strings("q", np.arange(Q)).cast(pa.string())
    qids = pc.utf8_lpad(pc.utf8_slice_codeunits(qids, 1), 4, "0")
    qids = pc.binary_join_element_wise("q", qids, "")
    no_query = pa.array(typ == 5)
    query_id = pc.if_else(no_query, pa.scalar(None, pa.string()), qids.take(pa.array(q[s])))
    table = pa.table({
        "event_id": eid,
        "ts": pa.array(np.concatenate(cols["ts"]).astype(np.int64)),
        "user_id": _strings("u", user[s]),
        "session_id": _strings("s", gsid),
        "type": pa.array(list(_TYPES)).take(pa.array(typ)),
        "query_id": query_id,
        "query_image_id": pc.binary_join_element_wise("img-", query_id, ""),
        "product_id": pc.if_else(pa.array(typ == 0), pa.scalar(None, pa.string()),
                                 pa.array(world.product_ids).take(pa.array(prod))),
        "position": pa.array(pos.astype(np.int32), mask=pos == 0),
    })
    if cfg.duplicate_rate > 0:
        dup = np.nonzero(rng.random(n) < cfg.duplicate_rate)[0]
        table = pa.concat_tables([table, table.take(pa.array(dup))])
    return table


def iter_event_chunks(cfg: SimConfig, *, searches_per_chunk: int = 50_000,
                      world: World | None = None) -> Iterator[pa.Table]:
    """Yield the simulated events of `cfg.searches` result lists, `searches_per_chunk` at a time (seeded)."""
    world = world or make_world(cfg)
    for i, first in enumerate(range(0, cfg.searches, searches_per_chunk)):
        n = min(searches_per_chunk, cfg.searches - first)
        yield _chunk(world, cfg, first, n, np.random.default_rng([cfg.seed, 1, i]))


def simulate(cfg: SimConfig = SimConfig()) -> tuple[pa.Table, World]:
    """Return `(events, world)`: the producer-side records (ts in epoch ms) and the truth."""
    world = make_world(cfg)
    return pa.concat_tables(list(iter_event_chunks(cfg, world=world))), world


def ndcg_at_k(ranked: list[str], grades: dict[str, int], *, k: int = 10) -> float:
    """nDCG@k with linear gain (gain = grade) and log2 discount; `ranked` best first."""
    dcg = sum(grades.get(p, 0) / np.log2(i + 2) for i, p in enumerate(ranked[:k]))
    ideal = sorted(grades.values(), reverse=True)[:k]
    idcg = sum(g / np.log2(i + 2) for i, g in enumerate(ideal))
    return float(dcg / idcg) if idcg > 0 else 0.0


def ranking_quality(pairs: pa.Table, world: World, *, weight: str, k: int = 10) -> float:
    """Mean nDCG@k over queries of ranking each query's pool by its summed positive `weight` column."""
    pos = pairs.filter(pc.and_(pc.equal(pairs["anchor_type"], "query"),
                               pc.is_in(pairs["kind"], pa.array(["click", "add_to_cart", "purchase"]))))
    sums = pos.group_by(["anchor_id", "product_id"]).aggregate([(weight, "sum")])
    score = {(a, p): w for a, p, w in zip(sums["anchor_id"].to_pylist(), sums["product_id"].to_pylist(),
                                          sums[f"{weight}_sum"].to_pylist())}
    out = []
    for qi in range(world.pools.shape[0]):
        qid = f"q{qi:04d}"
        pool = [str(world.product_ids[j]) for j in world.pools[qi]]
        grades = {p: int(g) for p, g in zip(pool, world.grades[qi])}
        ranked = sorted(pool, key=lambda p: (-score.get((qid, p), 0.0), p))
        out.append(ndcg_at_k(ranked, grades, k=k))
    return float(np.mean(out))


def click_agreement(pairs: pa.Table, events: pa.Table, world: World, *, weight: str = "ips_weight") -> float:
    """How well per-(query, product) click weights follow the truth: the Pearson correlation, over the (query,
    pool product) pairs shown at least once in `events`, between the pair's summed click `weight` per impression
    (an estimate of its click rate when examined, with `ips_weight`) and its true grade.

    `events` are the simulated records (`simulate(...)[0]`, without duplicates: each impression is counted).
    """
    imp = events.filter(pc.equal(events["type"], "impression"))
    shown = imp.group_by(["query_id", "product_id"]).aggregate([("product_id", "count")])
    n = {(q, p): c for q, p, c in zip(shown["query_id"].to_pylist(), shown["product_id"].to_pylist(),
                                      shown["product_id_count"].to_pylist())}
    clicks = pairs.filter(pc.and_(pc.equal(pairs["anchor_type"], "query"), pc.equal(pairs["kind"], "click")))
    sums = clicks.group_by(["anchor_id", "product_id"]).aggregate([(weight, "sum")])
    w = {(q, p): x for q, p, x in zip(sums["anchor_id"].to_pylist(), sums["product_id"].to_pylist(),
                                      sums[f"{weight}_sum"].to_pylist())}
    truth = world.truth()
    rate, grade = [], []
    for q, p, g in zip(truth["query_id"].to_pylist(), truth["product_id"].to_pylist(), truth["grade"].to_pylist()):
        if (q, p) in n:
            rate.append(w.get((q, p), 0.0) / n[(q, p)])
            grade.append(g)
    if len(rate) < 2 or np.std(rate) == 0 or np.std(grade) == 0:
        raise ValueError(f"click_agreement needs shown pool pairs with varying weight and grade; got {len(rate)}")
    return float(np.corrcoef(rate, grade)[0, 1])
