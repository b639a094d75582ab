"""Title near-duplicates: MinHash LSH candidates within a category, confirmed with rapidfuzz.

MinHash LSH (datasketch) finds pairs of titles whose word sets have a high Jaccard similarity without comparing all
pairs; rapidfuzz then scores each candidate with an edit-distance ratio (`visprep.config.TITLE_SCORERS`), which is
what the rule's threshold applies to. Candidates are only looked for within one block (the top-level category): a "Black Leather
Tote" in Bags and a "Black Leather Boot" in Footwear are never compared.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)


def _scorers() -> dict[str, Callable]:
    from rapidfuzz import fuzz

    return {"token_set_ratio": fuzz.token_set_ratio, "token_sort_ratio": fuzz.token_sort_ratio,
            "ratio": fuzz.ratio, "WRatio": fuzz.WRatio}



def title_tokens(title: str) -> list[str]:
    """Lower-cased word tokens of `title` (letters and digits; punctuation and underscores split words)."""
    return _TOKEN.findall(title.casefold())


def normalize_title(title: str) -> str:
    """`title` as its tokens joined by single spaces: what the fuzzy scorer compares."""
    return " ".join(title_tokens(title))


def _import_datasketch():
    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ImportError("title dedup needs datasketch: pip install datasketch") from exc
    return MinHash, MinHashLSH


_MERSENNE_PRIME = np.uint64((1 << 61) - 1)
_MAX_HASH = np.uint64((1 << 32) - 1)


def title_signatures(titles: Sequence[str], *, num_perm: int = 64, seed: int = 1,
                     chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """MinHash signatures of the titles' word sets, equal to datasketch's ``MinHash(scheme="legacy")`` ones, in bulk.

    A set's MinHash is the element-wise minimum of its members' permuted hashes. Each distinct token is hashed once
    with datasketch's hash function and permuted with datasketch's permutations (legacy scheme: ``(a * h + b) mod
    (2^61 - 1)``, low 32 bits, in the same wrapping uint64 arithmetic), and the titles' signatures are a
    `np.minimum.reduceat` over their tokens' rows, in chunks of titles.

    Returns:
        (signatures (N, num_perm) uint32, has_tokens (N,) bool); a title without tokens has the all-maximum
        signature and must not be bucketed.
    """
    MinHash, _ = _import_datasketch()
    vocab: dict[str, int] = {}
    token_ids: list[int] = []
    lengths = np.zeros(len(titles), np.int64)
    for k, title in enumerate(titles):
        toks = set(title_tokens(title))
        lengths[k] = len(toks)
        token_ids.extend(vocab.setdefault(t, len(vocab)) for t in toks)
    base = MinHash(num_perm=num_perm, seed=seed, scheme="legacy")
    a, b = base.permutations
    hv = np.fromiter((base.hashfunc(w.encode()) for w in vocab), np.uint64, count=len(vocab))
    table = np.empty((len(vocab), num_perm), np.uint32)
    for lo in range(0, len(vocab), chunk):
        table[lo : lo + chunk] = ((hv[lo : lo + chunk, None] * a + b) % _MERSENNE_PRIME) & _MAX_HASH
    ids = np.asarray(token_ids, np.int64)
    sig = np.full((len(titles), num_perm), np.uint32(_MAX_HASH), np.uint32)
    starts = np.cumsum(lengths) - lengths
    has = lengths > 0
    for lo in range(0, len(titles), chunk):
        rows = np.flatnonzero(has[lo : lo + chunk]) + lo
        if len(rows) == 0:
            continue
        first, last = int(starts[rows[0]]), int(starts[rows[-1]] + lengths[rows[-1]])
        sig[rows] = np.minimum.reduceat(table[ids[first:last]], starts[rows] - first, axis=0)
    return sig, has


def _bucket_pairs(keys: np.ndarray, *, max_bucket: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Pairs (i, j) of items sharing a key: every pair in buckets up to `max_bucket`, a star (first item to each
    other) in larger ones, so those stay connected without a quadratic blow-up. Vectorised; also the number of
    buckets that were capped."""
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    sizes = np.diff(np.r_[starts, len(k)])
    size_of = np.repeat(sizes, sizes)
    pos = np.arange(len(k)) - np.repeat(starts, sizes)
    later = np.where(size_of <= max_bucket, size_of - 1 - pos, np.where(pos == 0, size_of - 1, 0))
    total = int(later.sum())
    src = np.repeat(np.arange(len(k)), later)
    # Item at sorted position p pairs with the next later[p] items: the rest of its bucket (a star's centre is the
    # bucket's first item, and only it has later items).
    dst = src + np.arange(total) - np.repeat(np.cumsum(later) - later, later) + 1
    return order[src], order[dst], int((sizes > max_bucket).sum())


def _open_pairs(keys: np.ndarray, open_: np.ndarray, *, max_bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j) sharing a key where item i is `open_`: each open item with every other item of its bucket (with
    the bucket's first item only, in buckets over `max_bucket`). A pair of two open items comes twice."""
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    sizes = np.diff(np.r_[starts, len(k)])
    size_of = np.repeat(sizes, sizes)
    start_of = np.repeat(starts, sizes)
    is_open = open_[order]
    many = np.where(is_open, np.where(size_of <= max_bucket, size_of, 1), 0)
    src = np.repeat(np.arange(len(k)), many)
    dst = start_of[src] + np.arange(int(many.sum())) - np.repeat(np.cumsum(many) - many, many)
    keep = src != dst
    return order[src[keep]], order[dst[keep]]


def title_candidate_pairs(titles: Sequence[str], blocks: Sequence[str | None], *, lsh_threshold: float = 0.5,
                          num_perm: int = 64, seed: int = 1, max_bucket: int = 500,
                          subblocks: Sequence[str | None] | None = None,
                          counts: dict[str, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) of `title_candidate_keys` (same arguments), as two int64 index arrays, each pair once, sorted."""
    keys = title_candidate_keys(titles, blocks, lsh_threshold=lsh_threshold, num_perm=num_perm, seed=seed,
                                max_bucket=max_bucket, subblocks=subblocks, counts=counts)
    n = len(titles)
    return keys // n, keys % n


def _union_sorted(acc: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Sorted union of `acc` (sorted, unique) and `new` (any): the keys not yet in `acc` inserted into it."""
    new = np.unique(new)
    if len(acc):
        pos = np.searchsorted(acc, new)
        new = new[acc[np.minimum(pos, len(acc) - 1)] != new]
    return np.insert(acc, np.searchsorted(acc, new), new)


def title_candidate_keys(titles: Sequence[str], blocks: Sequence[str | None], *, lsh_threshold: float = 0.5,
                         num_perm: int = 64, seed: int = 1, max_bucket: int = 500,
                         subblocks: Sequence[str | None] | None = None,
                         counts: dict[str, int] | None = None) -> np.ndarray:
    """Pairs (i < j) of titles in the same block whose estimated word-set Jaccard is about `lsh_threshold` or more.

    MinHash LSH with datasketch's banding parameters for the threshold (`datasketch.lsh._optimal_param`, as its
    `MinHashLSH` picks them), the bands bucketed with one sort per band instead of per-title Python queries: the same
    candidates as a datasketch `MinHashLSH` over legacy-scheme MinHashes (checked in the tests).

    Args:
        titles: one title per item.
        blocks: one block key per item (the top-level category); items with a null block are not compared.
        lsh_threshold: MinHash LSH threshold (Jaccard), 0..1.
        num_perm: MinHash permutations.
        seed: MinHash seed.
        max_bucket: a band bucket with more titles (the same title repeated thousands of times) is joined as a star.
        subblocks: optional second key (the declared brand, when differing brands veto a pair anyway): items that
            have one are only compared within (block, subblock); items without one are compared with the whole
            block. This keeps a catalog's many "Black Cotton T-Shirt"s of different brands from pairing up.
        counts: when given, gets "title_capped_buckets".

    Returns:
        Sorted unique int64 pair keys i * len(titles) + j, i < j.
    """
    if len(titles) != len(blocks):
        raise ValueError(f"titles ({len(titles)}) and blocks ({len(blocks)}) must have the same length")
    if not 0.0 < lsh_threshold <= 1.0:
        raise ValueError(f"lsh_threshold must be in (0, 1], got {lsh_threshold!r}")
    from datasketch.lsh import _optimal_param

    n = len(titles)
    block_names: dict[str, int] = {}
    block_id = np.asarray([-1 if b is None else block_names.setdefault(b, len(block_names)) for b in blocks],
                          np.int64)
    sig, has = title_signatures(titles, num_perm=num_perm, seed=seed)
    live = np.flatnonzero(has & (block_id >= 0))
    if len(live) < 2:
        return np.empty(0, np.int64)
    bands, rows = _optimal_param(lsh_threshold, num_perm, 0.5, 0.5)
    sig = sig[live]  # uint32: widened one column at a time in band_key (the (N, num_perm) uint64 copy was 512 MiB at 1M)
    sub_id = np.full(n, -1, np.int64)
    if subblocks is not None:
        if len(subblocks) != n:
            raise ValueError(f"subblocks ({len(subblocks)}) must have one entry per title ({n})")
        names: dict[str, int] = {}
        sub_id = np.asarray([-1 if v is None else names.setdefault(v, len(names)) for v in subblocks], np.int64)
    open_ = sub_id[live] < 0  # no subblock: compared with the whole block
    mixed = subblocks is not None and open_.any() and not open_.all()
    # The bands' pairs are merged into one sorted set band by band: most pairs come up in several bands, and holding
    # every band's pairs until the end was the stage's peak with tens of millions of candidates.
    found = np.empty(0, np.int64)
    capped = 0

    def band_key(band: int, group: np.ndarray) -> np.ndarray:
        # A band's r values mixed into one 64-bit key (a collision only adds a candidate, which rapidfuzz checks),
        # with the group, so titles of different groups never meet.
        key = group.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        for c in range(band * rows, (band + 1) * rows):
            key = (key ^ sig[:, c].astype(np.uint64)) * np.uint64(0xBF58476D1CE4E5B9)
            key ^= key >> np.uint64(31)
        return key

    block_live, sub_live = block_id[live], sub_id[live]
    group = block_live * (int(sub_id.max()) + 2) + (sub_live + 1)  # (block, subblock or none)
    for band in range(bands):
        i, j, cap = _bucket_pairs(band_key(band, group), max_bucket=max_bucket)
        capped += cap
        same = group[i] == group[j]
        i, j = i[same], j[same]
        if mixed:  # items without a subblock also meet every item of their block
            oi, oj = _open_pairs(band_key(band, block_live), open_, max_bucket=max_bucket)
            same = block_live[oi] == block_live[oj]
            i, j = np.concatenate([i, oi[same]]), np.concatenate([j, oj[same]])
        lo, hi = np.minimum(live[i], live[j]), np.maximum(live[i], live[j])
        del i, j
        found = _union_sorted(found, lo * n + hi)
        del lo, hi
    if counts is not None:
        counts["title_capped_buckets"] = capped
    return found


def title_similarity(a: Sequence[str], b: Sequence[str], *, scorer: str = "token_set_ratio",
                     normalized: bool = False, workers: int = 1) -> np.ndarray:
    """Element-wise fuzzy similarity of `a[k]` and `b[k]` (normalised titles, unless `normalized` says they already
    are), in 0..1, as float32; `workers` threads in rapidfuzz."""
    scorers = _scorers()
    if scorer not in scorers:
        raise ValueError(f"unknown title scorer {scorer!r}; valid: {sorted(scorers)}")
    if len(a) != len(b):
        raise ValueError(f"a ({len(a)}) and b ({len(b)}) must have the same length")
    if len(a) == 0:
        return np.empty(0, np.float32)
    from rapidfuzz import process

    if not normalized:
        a, b = [normalize_title(t) for t in a], [normalize_title(t) for t in b]
    scores = process.cpdist(a, b, scorer=scorers[scorer], dtype=np.float32, workers=workers)
    return np.asarray(scores, np.float32) / 100.0
