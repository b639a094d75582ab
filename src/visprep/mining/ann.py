"""Offline ANN hard negatives: each anchor's nearest catalog images that are not positives, in a hardness band,
behind the false-negative guard.

Per anchor: search `band_max + (its known positive images) + margin` neighbours (over-fetch, so that anchors with
many positives still get enough candidates: sentence-transformers #3872), drop the query itself (FAISS returns it:
faiss #1143) and every positive (same group or a known positive pair), rank the rest 1, 2, ... by similarity, keep
ranks `skip_top+1 .. band_max`, apply the guard, and sample `k` of the survivors. Search runs in blocks of anchors,
so the full similarity matrix is never materialised (sentence-transformers #3164).

The draw is keyed per (anchor, candidate) pair (`keys.pair_keys`), not by a stream of random numbers, so an anchor's
negatives do not depend on the block it was searched in: an incremental re-mine can reuse the others' rows.

`search="auto"` picks the index by pool size (`auto_search`): exact below `AUTO_EXACT_MAX` items, else IVF-Flat
with about sqrt(N) lists and probes calibrated on the data, the setting measured in benchmarks/bench_mining.py
(docs/mining.md); when the calibration needs a quarter of the lists or misses its recall target, exact search.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from visprep.mining.guard import FalseNegativeGuard
from visprep.mining.keys import pair_keys
from visprep.mining.positives import PositiveSets

SEARCHES = ("auto", "exact", "ivf", "hnsw")
# Measured with benchmarks/bench_mining.py on 2 cores (docs/mining.md). Below AUTO_EXACT_MAX items, exact search in
# BLAS blocks is about as fast as building an IVF index. Above it: IVF-Flat with 2*sqrt(N) lists, and probes
# calibrated on the data. No fixed probe count is safe: 4 probes gave recall@50 1.0 on the clustered 1M set and 0.78
# on Fashion-MNIST embeddings.
AUTO_EXACT_MAX = 20_000
AUTO_IVF_TRAIN_MAX = 100_000
AUTO_RECALL_TARGET = 0.95  # on the calibration sample; leaves margin for the 0.9 target on the whole set
AUTO_CALIBRATION_SAMPLE = 500
AUTO_MAX_NPROBE = 256
# An IVF index that needs this share of its lists (or misses the recall target) scans about as much as exact search
# and pays its list overhead on top: unstructured vectors (random, or an embedding that spreads a pool evenly) took
# nprobe 256 of 512 lists for recall 0.94 on 54k items, 4x slower than exact search.
AUTO_IVF_MAX_SHARE = 0.25


def auto_search(n: int) -> tuple[str, dict[str, int]]:
    """The search and `build_search_index` options that `search="auto"` starts from for a pool of n items."""
    if n <= AUTO_EXACT_MAX:
        return "exact", {}
    nlist = 1 << round(np.log2(2 * np.sqrt(n)))  # 2*sqrt(N), rounded to a power of two: 2048 at 1M
    return "ivf", {"ivf_nlist": nlist, "ivf_train_max": AUTO_IVF_TRAIN_MAX}


def ivf_pays(calibration: dict[str, float], nlist: int) -> bool:
    """Whether a calibrated IVF index is worth it over exact search: it reached the recall target probing less than
    `AUTO_IVF_MAX_SHARE` of its lists."""
    return calibration["recall"] >= AUTO_RECALL_TARGET and calibration["nprobe"] < AUTO_IVF_MAX_SHARE * nlist


def calibrate_nprobe(index: Any, vectors: np.ndarray, *, k: int, target: float = AUTO_RECALL_TARGET,
                     sample: int = AUTO_CALIBRATION_SAMPLE, seed: int = 0) -> dict[str, float]:
    """Set an IVF index's nprobe to the smallest power of two whose recall@k reaches `target` on sampled anchors.

    Recall@k: share of each sampled anchor's exact top-k neighbours (self excluded; `faiss.knn`, no copy of the
    vectors) that the index returns in its top-k. Returns {"nprobe", "recall", "sample"}; the last tried nprobe
    (at most AUTO_MAX_NPROBE or nlist) when the target is not reached.
    """
    import faiss

    n = len(vectors)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False))
    kk = min(k + 1, n)
    _, exact = faiss.knn(np.ascontiguousarray(vectors[rows]), vectors, kk, metric=faiss.METRIC_INNER_PRODUCT)

    def top(ids: np.ndarray) -> np.ndarray:
        # Drop self where present, keep k: (A, k) padded with -2 (never an id).
        out = np.full((len(rows), kk - 1), -2, np.int64)
        for j in range(len(rows)):  # A is at most a few hundred: per-anchor set logic stays readable
            keep = ids[j][ids[j] != rows[j]][: kk - 1]
            out[j, : len(keep)] = keep
        return out

    truth = top(exact)
    nprobe, recall = 1, 0.0
    while True:
        index.nprobe = nprobe
        _, got = index.search(np.ascontiguousarray(vectors[rows]), kk)
        found = top(got)
        hits = (found[:, :, None] == truth[:, None, :]).any(axis=2) & (found >= 0)
        recall = float(hits.sum() / max((truth >= 0).sum(), 1))
        if recall >= target or nprobe >= min(AUTO_MAX_NPROBE, index.nlist):
            break
        nprobe *= 2
    return {"nprobe": nprobe, "recall": round(recall, 4), "sample": len(rows)}


@dataclass
class AnnNegatives:
    """Mined rows (indices into the pool) and what each rule dropped.

    Attributes:
        anchor, negative: (M,) int64 pool indices.
        score: (M,) float32 cosine similarity.
        rank: (M,) int32 rank of the negative among the anchor's non-positive candidates (1 = most similar).
        radius: (A,) float32 per mined anchor (when asked): similarity of its band_max-th non-positive candidate,
            -inf when it has fewer; anything new at least this similar changes its band.
        band: (A, band_max) int64 pool indices of its non-positive candidates of ranks 1..band_max, -1 padded.
        counts: self, positive, band_top (ranks <= skip_top), guard_absolute, guard_relative, unsampled (in band,
            passed the guard, not drawn), kept, anchors_short (fewer than k kept), anchors_without_positive_score.
    """

    anchor: np.ndarray
    negative: np.ndarray
    score: np.ndarray
    rank: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)
    radius: np.ndarray | None = None
    band: np.ndarray | None = None


def build_search_index(vectors: np.ndarray, search: str, *, ivf_nlist: int = 0, ivf_nprobe: int = 16,
                       ivf_train_max: int = 0, hnsw_m: int = 32, hnsw_ef_search: int = 128, seed: int = 0,
                       auto_k: int = 50) -> Any:
    """Build an inner-product FAISS index over `vectors` (N, D) float32 for `search` ("auto", "exact", "ivf", "hnsw").

    `ivf_train_max` caps the k-means training sample (0: 64 per list). `search="auto"` picks the index by size and,
    for IVF, calibrates nprobe to recall@`auto_k` (`calibrate_nprobe`; `build_auto_index` also returns the choice).
    """
    import faiss

    vectors = np.ascontiguousarray(vectors, np.float32)
    n, d = vectors.shape
    auto = search == "auto"
    if auto:
        search, options = auto_search(n)
        ivf_nlist = options.get("ivf_nlist", ivf_nlist)
        ivf_train_max = options.get("ivf_train_max", ivf_train_max)
    if search == "exact":
        index = faiss.IndexFlatIP(d)
    elif search == "ivf":
        nlist = ivf_nlist or max(1, min(n // 39, int(4 * np.sqrt(n))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        size = min(64 * nlist, ivf_train_max) if ivf_train_max else 64 * nlist
        train = vectors[np.sort(rng.choice(n, size=size, replace=False))] if n > size else vectors
        index.train(train)
        index.nprobe = min(ivf_nprobe, nlist)
    elif search == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = hnsw_ef_search
    else:
        raise ValueError(f"unknown search {search!r}; valid: {', '.join(SEARCHES)}")
    index.add(vectors)
    if auto and search == "ivf" and not ivf_pays(calibrate_nprobe(index, vectors, k=auto_k, seed=seed), index.nlist):
        return build_search_index(vectors, "exact")
    return index


def build_auto_index(vectors: np.ndarray, *, k: int, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """`build_search_index(vectors, "auto", auto_k=k)` and what it chose: search, options, calibration."""
    vectors = np.ascontiguousarray(vectors, np.float32)
    search, options = auto_search(len(vectors))
    index = build_search_index(vectors, search, seed=seed, **options)
    info: dict[str, Any] = {"search": search, **options}
    if search == "ivf":
        info["calibration"] = calibrate_nprobe(index, vectors, k=k, seed=seed)
        info["ivf_nprobe"] = info["calibration"]["nprobe"]
        if not ivf_pays(info["calibration"], index.nlist):
            # Exact search is then as fast or faster, and exact: the calibration stays in the record.
            return build_search_index(vectors, "exact"), {"search": "exact", "ivf_rejected": info}
    return index, info


def build_pool_index(vectors: np.ndarray, search: str, *, options: dict[str, Any], auto_k: int
                     ) -> tuple[Any, dict[str, Any]]:
    """(index, what the build chose) over a pool's `vectors`: `build_auto_index` for "auto" (its `seed` option
    only), else `build_search_index` with `options`."""
    if search == "auto":
        return build_auto_index(vectors, k=auto_k, seed=int(options.get("seed", 0)))
    return build_search_index(vectors, search, **options), {"search": search}


def mine_ann_negatives(vectors: np.ndarray, *, group: np.ndarray, positives: PositiveSets, s_pos: np.ndarray,
                       k: int, skip_top: int = 0, band_max: int = 30,
                       guard: FalseNegativeGuard | None = None, overfetch_margin: int = 8,
                       rng: np.random.Generator | None = None, index: Any = None, search: str = "exact",
                       query_batch: int = 4096, anchors: np.ndarray | None = None,
                       index_options: dict[str, Any] | None = None, item_keys: np.ndarray | None = None,
                       seed: int | None = None, keep_band: bool = False,
                       index_source: Callable[[], tuple[Any, dict[str, Any]]] | None = None) -> AnnNegatives:
    """Mine hard negatives for `anchors` (default: every pool item) among the pool.

    Args:
        vectors: (N, D) float32 L2-normalised pool vectors.
        group: (N,) int64 group code of each pool item.
        positives: positive group sets of the N pool items.
        s_pos: (N,) positive similarity of each item (NaN: none known; the relative guard then does not apply).
        k: negatives kept per anchor.
        skip_top, band_max: hardness band: ranks skip_top+1 .. band_max among non-positives.
        guard: the false-negative guard (default `FalseNegativeGuard()`).
        overfetch_margin: candidates fetched beyond band_max + the anchor's positive images.
        rng: draws the sampling seed when `seed` is None.
        index: a prebuilt FAISS index over `vectors` (ids = row positions); else `index_source()`'s, else one is
            built for `search` (`build_pool_index`).
        query_batch: anchors per search block (bounds memory to query_batch x fetch).
        anchors: (A,) pool indices to mine for.
        index_options: keyword options of `build_search_index`.
        item_keys: (N,) uint64 stable key of each pool item (e.g. `keys.string_keys` of its ids): with `seed`, the
            draw of an anchor depends only on its own band, never on positions or blocks (default: positions).
        seed: seed of the draw (default: drawn from `rng`).
        keep_band: also return each anchor's `radius` and `band` (what incremental re-mining checks).
        index_source: returns (index over `vectors`, what its build chose), called only when there is something
            to search (the shared per-(model, pool) index: `visprep.views.ann_index.index_source`).

    Returns:
        `AnnNegatives`.
    """
    vectors = np.ascontiguousarray(vectors, np.float32)
    n = len(vectors)
    if vectors.ndim != 2 or group.shape != (n,) or s_pos.shape != (n,) or len(positives.indptr) != n + 1:
        raise ValueError(f"vectors (N, D), group (N,), s_pos (N,) and positives of N items needed; got "
                         f"{vectors.shape}, {group.shape}, {s_pos.shape}, {len(positives.indptr) - 1}")
    if not 0 <= skip_top < band_max:
        raise ValueError(f"need 0 <= skip_top < band_max, got {skip_top}, {band_max}")
    rng = rng or np.random.default_rng(0)
    if seed is None:
        seed = int(rng.integers(0, 2**63))
    item_keys = np.arange(n, dtype=np.uint64) if item_keys is None else np.asarray(item_keys, np.uint64)
    if item_keys.shape != (n,):
        raise ValueError(f"item_keys must be (N,) = ({n},), got {item_keys.shape}")
    guard = guard or FalseNegativeGuard()
    anchors = np.arange(n) if anchors is None else np.asarray(anchors, np.int64)
    counts = dict.fromkeys(("self", "positive", "band_top", "guard_absolute", "guard_relative", "unsampled",
                            "kept", "anchors_short", "anchors_without_positive_score"), 0)
    radius = np.full(len(anchors), -np.inf, np.float32) if keep_band else None
    band = np.full((len(anchors), band_max), -1, np.int64) if keep_band else None
    empty = AnnNegatives(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
                         np.zeros(0, np.int32), counts, radius, band)
    if n == 0 or len(anchors) == 0 or k == 0:
        return empty
    if index is None:
        index, info = (index_source or (lambda: build_pool_index(vectors, search, options=index_options or {},
                                                                 auto_k=band_max)))()
        if search == "auto" and "ivf_nprobe" in info:
            counts["auto_ivf_nprobe"] = int(info["ivf_nprobe"])
    group_size = np.bincount(group)
    # Images among an anchor's positives (its own group, self included, plus paired groups).
    pos_images = np.add.reduceat(group_size[positives.groups], positives.indptr[:-1])
    out_a, out_n, out_s, out_r, out_p = [], [], [], [], []
    for pos in search_blocks(pos_images[anchors], n=n, band_max=band_max, margin=overfetch_margin,
                             query_batch=query_batch):
        rows = anchors[pos]
        fetch = int(min(n, band_max + pos_images[rows].max() + overfetch_margin))
        sims, ids = index.search(vectors[rows], fetch)
        valid = ids >= 0
        cand_group = np.where(valid, group[np.where(valid, ids, 0)], -1)
        is_self = ids == rows[:, None]
        positive = valid & positives.contains(rows, cand_group)
        counts["self"] += int(is_self.sum())
        counts["positive"] += int((positive & ~is_self).sum())
        nonpos = valid & ~positive & ~is_self
        rank = np.cumsum(nonpos, axis=1) * nonpos
        counts["band_top"] += int((nonpos & (rank <= skip_top)).sum())
        in_band = nonpos & (rank > skip_top) & (rank <= band_max)
        keep, absolute, relative = guard.apply(np.where(in_band, sims, np.nan), s_pos[rows])
        counts["guard_absolute"] += int(absolute.sum())
        counts["guard_relative"] += int(relative.sum())
        counts["anchors_without_positive_score"] += int(np.isnan(s_pos[rows]).sum())
        if keep_band:
            r_band, c_band = np.nonzero(nonpos & (rank <= band_max))
            band[pos[r_band], rank[r_band, c_band] - 1] = ids[r_band, c_band]
            r_last, c_last = np.nonzero(nonpos & (rank == band_max))
            radius[pos[r_last]] = sims[r_last, c_last]
        # Sample k survivors per anchor uniformly: a pseudo-random key per (anchor, candidate), survivors first.
        pk = pair_keys(seed, item_keys[rows][:, None], item_keys[np.where(valid, ids, 0)])
        order = np.lexsort((pk, ~keep), axis=1)[:, :k]
        chosen = np.take_along_axis(keep, order, axis=1)
        n_keep = keep.sum(axis=1)
        counts["unsampled"] += int((n_keep - np.minimum(n_keep, k)).sum())
        counts["anchors_short"] += int((n_keep < k).sum())
        r_idx, c_pos = np.nonzero(chosen)
        cols = order[r_idx, c_pos]
        out_a.append(rows[r_idx])
        out_n.append(ids[r_idx, cols])
        out_s.append(sims[r_idx, cols].astype(np.float32))
        out_r.append(rank[r_idx, cols].astype(np.int32))
        out_p.append(pos[r_idx])
    counts["kept"] = int(sum(len(a) for a in out_a))
    # Back to the anchors' order (blocks were cut by need); each anchor's rows keep their draw order.
    back = np.argsort(np.concatenate(out_p), kind="stable")
    return AnnNegatives(*(np.concatenate(x)[back] for x in (out_a, out_n, out_s, out_r)), counts, radius, band)


MAX_BLOCK_CELLS = 1 << 24
"""Largest (anchors x fetched candidates) search block: bounds the memory of one block (~200 MB of ids, scores
and masks) even when some anchors have thousands of positive images to skip over."""


def search_blocks(need: np.ndarray, *, n: int, band_max: int, margin: int, query_batch: int,
                  max_cells: int | None = None) -> list[np.ndarray]:
    """Cut anchors into search blocks: positions into `need` (each anchor's positive images), grouped by need so
    that one anchor with many positives does not make its whole block fetch as many candidates, each block at
    most `query_batch` anchors and `max_cells` (anchors x candidates) large (at least one anchor)."""
    max_cells = max_cells or MAX_BLOCK_CELLS
    order = np.argsort(need, kind="stable")
    blocks, i = [], 0
    while i < len(order):
        size = min(query_batch, len(order) - i)
        while size > 1 and size * min(n, band_max + int(need[order[i + size - 1]]) + margin) > max_cells:
            size = max(1, size // 2)
        blocks.append(np.sort(order[i : i + size]))
        i += size
    return blocks


def positive_scores(vectors: np.ndarray, *, group: np.ndarray, positives: PositiveSets, how: str = "mean",
                    block: int = 1 << 20) -> np.ndarray:
    """s_pos of every pool item: its similarity to the other images of its positive groups, reduced by `how`.

    Args:
        vectors: (N, D) L2-normalised.
        group: (N,) group codes.
        positives: positive group sets.
        how: "min", "mean" or "max".
        block: (anchor, positive) pairs scored per step (bounds memory).

    Returns:
        (N,) float64, NaN for items with no other positive image.
    """
    from visprep.mining.guard import reduce_positive_scores

    n = len(group)
    order = np.argsort(group, kind="stable")
    starts = np.searchsorted(group[order], np.arange(group.max() + 2 if n else 1))
    # Expand (anchor, positive group) -> (anchor, positive image) pairs.
    set_len = np.diff(positives.indptr)
    anchor_of_entry = np.repeat(np.arange(n), set_len)
    g = positives.groups
    sizes = starts[g + 1] - starts[g]
    a = np.repeat(anchor_of_entry, sizes)
    first = np.repeat(starts[g], sizes)
    offset = np.arange(len(a)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    p = order[first + offset]
    keep = a != p
    a, p = a[keep], p[keep]
    scores = np.empty(len(a), np.float64)
    for s in range(0, len(a), block):
        scores[s : s + block] = np.einsum("ij,ij->i", vectors[a[s : s + block]], vectors[p[s : s + block]])
    return reduce_positive_scores(a, scores, n, how)
