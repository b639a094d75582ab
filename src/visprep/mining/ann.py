"""Offline ANN hard negatives: each anchor's nearest catalog images that are not positives, in a hardness band,
behind the false-negative guard.

Per anchor: search `band_max + (its known positive images) + margin` neighbours (over-fetch, so that anchors with
many positives still get enough candidates: sentence-transformers #3872), drop the query itself (FAISS returns it:
faiss #1143) and every positive (same group or a known positive pair), rank the rest 1, 2, ... by similarity, keep
ranks `skip_top+1 .. band_max`, apply the guard, and sample `k` of the survivors. Search runs in blocks of anchors,
so the full similarity matrix is never materialised (sentence-transformers #3164).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from visprep.mining.guard import FalseNegativeGuard
from visprep.mining.positives import PositiveSets

SEARCHES = ("exact", "ivf", "hnsw")


@dataclass
class AnnNegatives:
    """Mined rows (indices into the pool) and what each rule dropped.

    Attributes:
        anchor, negative: (M,) int64 pool indices.
        score: (M,) float32 cosine similarity.
        rank: (M,) int32 rank of the negative among the anchor's non-positive candidates (1 = most similar).
        counts: self, positive, band_top (ranks <= skip_top), guard_absolute, guard_relative, unsampled (in band,
            passed the guard, not drawn), kept, anchors_short (fewer than k kept), anchors_without_positive_score.
    """

    anchor: np.ndarray
    negative: np.ndarray
    score: np.ndarray
    rank: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)


def build_search_index(vectors: np.ndarray, search: str, *, ivf_nlist: int = 0, ivf_nprobe: int = 16,
                       hnsw_m: int = 32, hnsw_ef_search: int = 128, seed: int = 0) -> Any:
    """Build an inner-product FAISS index over `vectors` (N, D) float32 for `search` ("exact", "ivf", "hnsw")."""
    import faiss

    vectors = np.ascontiguousarray(vectors, np.float32)
    n, d = vectors.shape
    if search == "exact":
        index = faiss.IndexFlatIP(d)
    elif search == "ivf":
        nlist = ivf_nlist or max(1, min(n // 39, int(4 * np.sqrt(n))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        train = vectors[rng.choice(n, size=min(n, 64 * nlist), replace=False)] if n > 64 * nlist else vectors
        index.train(train)
        index.nprobe = min(ivf_nprobe, nlist)
    elif search == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = hnsw_ef_search
    else:
        raise ValueError(f"unknown search {search!r}; valid: {', '.join(SEARCHES)}")
    index.add(vectors)
    return index


def mine_ann_negatives(vectors: np.ndarray, *, group: np.ndarray, positives: PositiveSets, s_pos: np.ndarray,
                       k: int, skip_top: int = 0, band_max: int = 30,
                       guard: FalseNegativeGuard | None = None, overfetch_margin: int = 8,
                       rng: np.random.Generator | None = None, index: Any = None, search: str = "exact",
                       query_batch: int = 4096, anchors: np.ndarray | None = None,
                       index_options: dict[str, Any] | None = None) -> AnnNegatives:
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
        rng: for sampling within the band.
        index: a prebuilt FAISS index over `vectors` (ids = row positions); else one is built for `search`.
        query_batch: anchors per search block (bounds memory to query_batch x fetch).
        anchors: (A,) pool indices to mine for.
        index_options: keyword options of `build_search_index`.

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
    guard = guard or FalseNegativeGuard()
    anchors = np.arange(n) if anchors is None else np.asarray(anchors, np.int64)
    counts = dict.fromkeys(("self", "positive", "band_top", "guard_absolute", "guard_relative", "unsampled",
                            "kept", "anchors_short", "anchors_without_positive_score"), 0)
    empty = AnnNegatives(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32),
                         np.zeros(0, np.int32), counts)
    if n == 0 or len(anchors) == 0 or k == 0:
        return empty
    if index is None:
        index = build_search_index(vectors, search, **(index_options or {}))
    group_size = np.bincount(group)
    # Images among an anchor's positives (its own group, self included, plus paired groups).
    pos_images = np.add.reduceat(group_size[positives.groups], positives.indptr[:-1])
    out_a, out_n, out_s, out_r = [], [], [], []
    for start in range(0, len(anchors), query_batch):
        rows = anchors[start : start + query_batch]
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
        # Sample k survivors per anchor uniformly: random keys, survivors first.
        keys = np.where(keep, rng.random(keep.shape), np.inf)
        order = np.argsort(keys, axis=1, kind="stable")[:, :k]
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
    counts["kept"] = int(sum(len(a) for a in out_a))
    return AnnNegatives(np.concatenate(out_a), np.concatenate(out_n), np.concatenate(out_s), np.concatenate(out_r),
                        counts)


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
