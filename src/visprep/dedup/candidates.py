"""Candidate duplicate pairs of products and their signals: shared images, pHash distance, title similarity.

`find_duplicates` is the stage's pure core: products and their (image_id, pHash) rows in, the candidate pairs with
every signal and the rule's verdict out. Nothing here reads or writes a workspace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from visprep.dedup.hamming import radius_pairs
from visprep.dedup.phases import PhaseClock
from visprep.dedup.titles import normalize_title, title_candidate_keys, title_similarity
from visprep.dedup.visual import Signatures, color_distance, image_signatures, normalize_color
from visprep.images.signature import TRIM_TOLERANCE
from visprep.rules import DuplicateRule, parse_rule

NO_DISTANCE = 255
"""pHash distance recorded for a pair without two hashed images."""


@dataclass(frozen=True)
class DedupParams:
    """The parameters `find_duplicates` uses (the `dedup` config section, minus I/O)."""

    rule: str = "identical_image or (image_match and title_similar)"
    image_radius: int = 6
    image_similar_radius: int = 16
    match_radius: int = 6
    title_threshold: float = 0.75
    title_scorer: str = "token_set_ratio"
    lsh_threshold: float = 0.5
    num_perm: int = 64
    hamming_backend: str = "mih"
    max_code_images: int = 50
    color_veto: bool = True
    color_max_distance: float = 15.0
    color_lightness_weight: float = 0.0
    brand_veto: bool = True
    trim_tolerance: int = TRIM_TOLERANCE
    embedding_threshold: float = 0.9
    signature_candidates: bool = True
    workers: int = 2


@dataclass
class CandidatePairs:
    """Candidate product pairs (a < b, product indices) and their signals; `accepted` is the rule's verdict.

    Attributes:
        a, b: (P,) int64 product indices.
        identical_image: (P,) bool.
        distance: (P,) uint8 closest pHash distance over the two products' images, NO_DISTANCE when unknown.
        image_a, image_b: (P,) int64 row indices (into the image rows) of that closest pair, -1 when unknown.
        title_similarity: (P,) float32 in 0..1; 0 across top-level categories.
        same_category: (P,) bool.
        trimmed_distance: (P,) uint8 closest crop/border-tolerant pHash distance (`dedup.visual.CODES`: trimmed,
            trimmed centre, centre), NO_DISTANCE when not
            computed (only pairs whose verdict depends on it are).
        trimmed_a, trimmed_b: (P,) int64 image rows of that closest trimmed pair, -1 when unknown.
        color_distance: (P,) float32 foreground colour distance (`visual.color_distance`) of the two products'
            first images, NaN unless
            computed (rule-accepted pairs not vetoed by their declared colours).
        embedding_similarity: (P,) float32 highest cosine similarity of the two products' image embeddings, NaN
            unless computed (a rule naming embedding_similar, pairs whose verdict depends on it).
        declared_color_differs: (P,) bool: both declare a colour and they differ.
        declared_brand_differs: (P,) bool: both declare a brand and they differ.
        vetoed: (P,) bool: a veto (colour, brand) turned the rule's "yes" into "no".
        accepted: (P,) bool.
        counts: what was found, for the run record.
        seconds: wall time of each phase.
    """

    a: np.ndarray
    b: np.ndarray
    identical_image: np.ndarray
    distance: np.ndarray
    image_a: np.ndarray
    image_b: np.ndarray
    title_similarity: np.ndarray
    same_category: np.ndarray
    trimmed_distance: np.ndarray
    trimmed_a: np.ndarray
    trimmed_b: np.ndarray
    color_distance: np.ndarray
    embedding_similarity: np.ndarray
    declared_color_differs: np.ndarray
    declared_brand_differs: np.ndarray
    vetoed: np.ndarray
    accepted: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mib: dict[str, int] = field(default_factory=dict)  # per phase (`phases.PhaseClock`)


def _pair_keys(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    keep = lo != hi
    return lo[keep] * n + hi[keep]


def _group_pairs(group: np.ndarray, member: np.ndarray, *, max_clique: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of members sharing a group key: all pairs in groups up to `max_clique`, a star (first member to each
    other) in larger ones, which keeps them connected without a quadratic blow-up."""
    order = np.lexsort((member, group))
    g, m = group[order], member[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    sizes = np.diff(np.r_[starts, len(g)])
    out_a, out_b = [], []
    for s, size in zip(starts.tolist(), sizes.tolist()):
        if size < 2:
            continue
        mem = m[s : s + size]
        if size <= max_clique:
            ii, jj = np.triu_indices(size, 1)
            out_a.append(mem[ii])
            out_b.append(mem[jj])
        else:
            out_a.append(np.full(size - 1, mem[0]))
            out_b.append(mem[1:])
    if not out_a:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(out_a).astype(np.int64), np.concatenate(out_b).astype(np.int64)


def _cross_rows(pa_: np.ndarray, pb: np.ndarray, img_start: np.ndarray, img_count: np.ndarray, *,
                step: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Every (image row of a, image row of b) of product pairs (pa_, pb), in chunks of about `step`: yields (pairs q,
    pair index within q of each cross row, row_a, row_b)."""
    ca, cb = img_count[pa_], img_count[pb]
    n_cross = ca * cb
    has = np.flatnonzero(n_cross > 0)
    if len(has) == 0:
        return
    cum = np.cumsum(n_cross[has])
    start = 0
    while start < len(has):
        base = int(cum[start - 1]) if start else 0
        end = max(int(np.searchsorted(cum, base + step, side="right")), start + 1)
        q = has[start:end]
        reps = n_cross[q]
        pair_of = np.repeat(np.arange(len(q)), reps)
        k = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
        yield (q, pair_of, img_start[pa_[q]][pair_of] + k // cb[q][pair_of],
               img_start[pb[q]][pair_of] + k % cb[q][pair_of])
        start = end


def _near_code_pairs(codes: np.ndarray, image_product: np.ndarray, n: int, *, radius: int, max_code_images: int,
                     backend: str) -> tuple[np.ndarray, dict[str, int]]:
    """Pair keys of products holding images whose codes are within `radius` bits (the Hamming index over the
    distinct codes, expanded to their images); codes held by more than `max_code_images` images are left out."""
    uniq, code_of = np.unique(codes, return_inverse=True)
    code_images = np.bincount(code_of, minlength=len(uniq))
    crowded = code_images > max_code_images
    ci, cj, _ = radius_pairs(uniq, radius, backend=backend)
    keep = ~crowded[ci] & ~crowded[cj]
    ci, cj = ci[keep], cj[keep]
    rows_by_code = np.argsort(code_of, kind="stable")
    code_start = np.cumsum(code_images) - code_images
    # Images sharing a code are at distance 0 from each other.
    sa, sb = _group_pairs(np.where(crowded[code_of], -1 - np.arange(len(code_of)), code_of).astype(np.int64),
                          image_product, max_clique=max_code_images)
    near = np.unique(_pair_keys(sa, sb, n))
    del sa, sb
    # The code pairs are expanded to image pairs a bounded chunk at a time and merged into the sorted product pair
    # keys: expanded at once, five int64 arrays per image pair were the stage's peak (at 100k products of the
    # benchmark's first catalog, 7M signature pairs per code column, about 1 GiB).
    reps = code_images[ci] * code_images[cj]
    cum = np.cumsum(reps)
    lo = 0
    while lo < len(ci):
        base = int(cum[lo - 1]) if lo else 0
        hi = max(int(np.searchsorted(cum, base + NEAR_CHUNK, side="right")), lo + 1)
        qi, qj, r = ci[lo:hi], cj[lo:hi], reps[lo:hi]
        pair_of = np.repeat(np.arange(len(qi)), r)
        k = np.arange(int(r.sum())) - np.repeat(np.cumsum(r) - r, r)
        ra = rows_by_code[code_start[qi][pair_of] + k // code_images[qj][pair_of]]
        rb = rows_by_code[code_start[qj][pair_of] + k % code_images[qj][pair_of]]
        del pair_of, k
        near = union_sorted_keys(near, _pair_keys(image_product[ra], image_product[rb], n))
        del ra, rb
        lo = hi
    return near, {"crowded_codes": int(crowded.sum()), "crowded_code_images": int(code_images[crowded].sum()),
                  "code_pairs": len(ci)}


def _closest_images(pa_: np.ndarray, pb: np.ndarray, img_start: np.ndarray, img_count: np.ndarray,
                    codes: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For product pairs (pa_, pb): the closest pHash distance over their image rows (only rows where `valid`, when
    given) and which rows gave it."""
    p = len(pa_)
    dist = np.full(p, NO_DISTANCE, np.uint8)
    ia = np.full(p, -1, np.int64)
    ib = np.full(p, -1, np.int64)
    # Most products list one image: a pair of two such has one image pair, taken as it is (no per-pair minimum, whose
    # sort was most of this function's time with tens of millions of candidates).
    single = (img_count[pa_] == 1) & (img_count[pb] == 1)
    if single.any():
        q = np.flatnonzero(single)
        ra, rb = img_start[pa_[q]], img_start[pb[q]]
        d = np.bitwise_count(codes[ra] ^ codes[rb])
        if valid is not None:
            d = np.where(valid[ra] & valid[rb], d, np.uint8(NO_DISTANCE))
        found = d < NO_DISTANCE
        dist[q] = d
        ia[q] = np.where(found, ra, -1)
        ib[q] = np.where(found, rb, -1)
        if single.all():
            return dist, ia, ib
        rest = np.flatnonzero(~single)
        d_rest, ia_rest, ib_rest = _closest_images(pa_[rest], pb[rest], img_start, img_count, codes, valid)
        dist[rest], ia[rest], ib[rest] = d_rest, ia_rest, ib_rest
        return dist, ia, ib
    # 500k image pairs a chunk: about 40 B each across the chunk's arrays, so this step stays near 20 MiB.
    for q, pair_of, row_a, row_b in _cross_rows(pa_, pb, img_start, img_count, step=500_000):
        d = np.bitwise_count(codes[row_a] ^ codes[row_b]).astype(np.int16)
        if valid is not None:
            d = np.where(valid[row_a] & valid[row_b], d, NO_DISTANCE)
        # Minimum per pair: sort by (pair, distance) and take each pair's first.
        order = np.lexsort((d, pair_of))
        first = order[np.r_[True, pair_of[order][1:] != pair_of[order][:-1]]]
        found = d[first] < NO_DISTANCE
        dist[q] = d[first]
        ia[q] = np.where(found, row_a[first], -1)
        ib[q] = np.where(found, row_b[first], -1)
    return dist, ia, ib


def best_cosine(pa_: np.ndarray, pb: np.ndarray, img_start: np.ndarray, img_count: np.ndarray, vectors: np.ndarray,
                slot: np.ndarray) -> np.ndarray:
    """For product pairs (pa_, pb): the highest inner product of unit `vectors` over their image rows (row r's vector
    is `vectors[slot[r]]`, none when slot[r] < 0), NaN when no image pair has both; in chunks of about 32k vector
    pairs, so memory stays bounded."""
    best = np.full(len(pa_), -np.inf, np.float32)
    step = max(1, (1 << 28) // max(1, 8 * vectors.shape[1]))
    for q, pair_of, row_a, row_b in _cross_rows(pa_, pb, img_start, img_count, step=step):
        sa, sb = slot[row_a], slot[row_b]
        both = (sa >= 0) & (sb >= 0)
        sim = np.full(len(sa), -np.inf, np.float32)
        sim[both] = np.einsum("ij,ij->i", vectors[sa[both]], vectors[sb[both]])
        np.maximum.at(best, q[pair_of], sim)
    best[~np.isfinite(best)] = np.nan
    return best


def _string_codes(values: Sequence[str]) -> np.ndarray:
    """(N,) int64 code of each string (equal strings, equal codes), by Arrow dictionary encoding (no Python sort)."""
    if len(values) == 0:
        return np.empty(0, np.int64)
    import pyarrow as pa

    enc = pa.array(values, pa.string()).dictionary_encode()
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def _declared_codes(values: Sequence[str | None] | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(code of each normalised value, declared) of a declared attribute, None when not given: compared per pair
    as integers, so chunks of pairs need no object arrays."""
    if values is None:
        return None
    norm = [normalize_color(v) for v in values]
    return (_string_codes([v if v is not None else "" for v in norm]),
            np.asarray([v is not None for v in norm], dtype=bool))


def _declared_differs(codes: tuple[np.ndarray, np.ndarray] | None, a: np.ndarray,
                      b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For pairs (a, b) of a declared attribute (`_declared_codes`): (both declare it, both declare it and the
    values differ)."""
    if codes is None:
        none = np.zeros(len(a), bool)
        return none, none
    val, has = codes
    both = has[a] & has[b]
    return both, both & (val[a] != val[b])


def _sorted_contains(sorted_keys: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(len(x),) bool: x[k] is in `sorted_keys` (sorted ascending), by binary search."""
    if len(sorted_keys) == 0:
        return np.zeros(len(x), bool)
    pos = np.searchsorted(sorted_keys, x)
    return sorted_keys[np.minimum(pos, len(sorted_keys) - 1)] == x


def union_sorted_keys(acc: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Sorted union of `acc` (sorted, unique) and `new` (any): `merge_sorted_keys` with whichever is larger kept
    in place, so a running set of pair keys grows by inserting each chunk's keys."""
    new = np.unique(new)
    if len(new) > len(acc):
        acc, new = new, acc
    return merge_sorted_keys(acc, new)


def merge_sorted_keys(big: np.ndarray, small: np.ndarray) -> np.ndarray:
    """Sorted union of `big` (sorted, unique) and `small` (any): the few missing keys are inserted into `big`, so
    the peak is two copies of `big`, not the concatenate-and-sort's three."""
    small = np.unique(small)
    new = small[~_sorted_contains(big, small)]
    return np.insert(big, np.searchsorted(big, new), new)


NEAR_CHUNK = 1_000_000
"""Image pairs of near pHash codes expanded to product pair keys at a time (`_near_code_pairs`)."""

PAIR_CHUNK = 2_000_000
"""Candidate pairs scored at a time by `find_duplicates`: every signal and the rule are per pair, so memory is
bounded by the chunk, not by the (tens of millions of) candidates."""


def find_duplicates(product_ids: list[str], titles: list[str], top_categories: list[str | None],
                    image_product: np.ndarray, image_ids: list[str], image_codes: np.ndarray, *,
                    params: DedupParams = DedupParams(), colors: Sequence[str | None] | None = None,
                    brands: Sequence[str | None] | None = None, image_loader: Callable[[int], bytes] | None = None,
                    signatures: Signatures | None = None,
                    embeddings: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
                    keep_all: bool = True, pair_chunk: int = PAIR_CHUNK,
                    signature_rows: Callable[[list[int]], list[dict]] | None = None) -> CandidatePairs:
    """Find candidate duplicate product pairs, compute every signal and apply the rule.

    Args:
        product_ids: (N,) product ids.
        titles: (N,) titles.
        top_categories: (N,) top-level categories (the title-comparison block); None is never title-compared.
        image_product: (M,) int64 index into `product_ids` of each image row.
        image_ids: (M,) content hash of each image row.
        image_codes: (M,) uint64 pHash of each image row.
        params: thresholds and the rule.
        colors: (N,) declared colour of each product (None: not declared), for the colour veto.
        brands: (N,) declared brand of each product (None: not declared), for the brand veto.
        image_loader: fn(image row) -> encoded bytes, to compute the signature of rows `signatures` lacks.
        signatures: (M rows) the crop/border-tolerant pHashes and foreground colour `inspect` stored, used when
            `params.trim_tolerance` is the one they were computed at (`signature.TRIM_TOLERANCE`).
            With signatures or a loader, the crop/border-tolerant pHashes (`image_match`) and the foreground colour
            (colour veto) are used for the pairs whose verdict depends on them (rows with neither stay unknown);
            with neither, `image_match` falls back to the plain pHash and only declared colours can veto.
        embeddings: fn(image rows, as given) -> (unit vectors (k, d) float32, found (k,) bool), for a rule naming
            `embedding_similar`; only the rows of pairs whose verdict depends on it are asked for. Without it that
            signal is false.
        keep_all: return every candidate pair; False returns only the pairs the rule accepted or a veto rejected
            (what `duplicate_edges` keeps by default), so the result stays small with tens of millions of candidates.
        pair_chunk: candidate pairs scored at a time (the verdicts do not depend on it; the memory does).
        signature_rows: fn(image rows) -> their `visual.signature_row`s, in order: where the signatures of rows
            `signatures` lacks are computed instead of decoding `image_loader`'s bytes in threads here (the dedup
            stage passes one that runs `visual.signature_batch` on an engine's workers). Used with `image_loader`.

    Returns:
        `CandidatePairs` over every pair any generator signal proposed (or its accepted and vetoed ones), sorted by
        (a, b); `counts` are over every candidate either way.
    """
    if pair_chunk < 1:
        raise ValueError(f"pair_chunk must be at least 1, got {pair_chunk}")
    n = len(product_ids)
    if not (len(titles) == len(top_categories) == n):
        raise ValueError(f"product_ids ({n}), titles ({len(titles)}) and top_categories ({len(top_categories)}) "
                         "must have the same length")
    image_product = np.asarray(image_product, np.int64)
    image_codes = np.asarray(image_codes, np.uint64)
    if not (len(image_product) == len(image_ids) == len(image_codes)):
        raise ValueError("image_product, image_ids and image_codes must have the same length")
    if signatures is not None and not (len(signatures.ok) == len(signatures.codes) == len(signatures.color)
                                       == len(image_ids)):
        raise ValueError(f"signatures ({len(signatures.ok)} rows) must have one row per image row ({len(image_ids)})")
    if len(image_product) and (image_product.min() < 0 or image_product.max() >= n):
        raise ValueError("image_product holds an index outside the products")
    for name, values in (("colors", colors), ("brands", brands)):
        if values is not None and len(values) != n:
            raise ValueError(f"{name} ({len(values)}) must have one entry per product ({n})")
    rule: DuplicateRule = parse_rule(params.rule)
    counts: dict[str, int] = {"products": n, "image_rows": len(image_ids)}
    clock = PhaseClock()
    lap = clock.lap

    # Image rows grouped by product (ragged arrays), so pairs of products can be compared image by image.
    order = np.argsort(image_product, kind="stable")
    image_product = image_product[order]
    image_codes = image_codes[order]
    img_count = np.bincount(image_product, minlength=n).astype(np.int64)
    img_start = np.cumsum(img_count) - img_count

    # Every source's pair keys are merged into one running sorted set as it is found, never all of them held as
    # well: at 100k products of the benchmark's first catalog the pHash sources gave 12M keys, the titles 0.3M.
    # 1. Identical images: products listing the same content hash (integer codes: no (M,) array of 64-char strings).
    image_key = _string_codes(list(image_ids))[order]
    ga, gb = _group_pairs(image_key, image_product, max_clique=params.max_code_images)
    identical_keys = np.unique(_pair_keys(ga, gb, n))
    del image_key, ga, gb
    cand = identical_keys
    counts["identical_image_pairs"] = len(identical_keys)
    lap("identical_images")

    # 2. pHash near duplicates: search the distinct codes, then expand to the products holding them.
    near_keys, near_counts = _near_code_pairs(image_codes, image_product, n, radius=params.image_radius,
                                              max_code_images=params.max_code_images,
                                              backend=params.hamming_backend)
    cand = union_sorted_keys(cand, near_keys)
    counts.update({"crowded_codes": near_counts["crowded_codes"],
                   "crowded_code_images": near_counts["crowded_code_images"],
                   "phash_code_pairs": near_counts["code_pairs"], "image_near_pairs": len(near_keys)})
    del near_keys
    lap("phash_index")

    # 2b. The same search over each stored crop/border-tolerant code, so that a cropped or bordered copy is a
    # candidate even when its reworded title escapes the title LSH (image_match is then checked as for any pair).
    if signatures is not None and params.trim_tolerance != TRIM_TOLERANCE:
        counts["stored_signatures_ignored"] = int(signatures.ok.sum())  # computed at another tolerance
        signatures = None
    if signatures is not None and params.signature_candidates and "image_match" in rule.names:
        ok_rows = np.flatnonzero(signatures.ok[order])
        # Each code column's keys are merged into one running set (not all columns' kept, then concatenated).
        sig_keys = np.empty(0, np.int64)
        for col in range(signatures.codes.shape[1]):
            sig_keys = union_sorted_keys(sig_keys, _near_code_pairs(
                np.ascontiguousarray(signatures.codes[order[ok_rows], col]), image_product[ok_rows], n,
                radius=params.match_radius, max_code_images=params.max_code_images,
                backend=params.hamming_backend)[0])
        cand = union_sorted_keys(cand, sig_keys)
        counts["signature_near_pairs"] = len(sig_keys)
        del sig_keys, ok_rows
        lap("signature_index")

    # 3. Title candidates within each top-level category.
    title_keys = title_candidate_keys(titles, top_categories, lsh_threshold=params.lsh_threshold,
                                      num_perm=params.num_perm, counts=counts,
                                      subblocks=[normalize_color(v) for v in brands]
                                      if brands is not None and params.brand_veto else None)
    counts["title_candidate_pairs"] = len(title_keys)
    lap("title_lsh")

    all_keys = union_sorted_keys(cand, title_keys)
    del title_keys, cand
    p_all = len(all_keys)
    counts["candidate_pairs"] = p_all

    # Per-product attributes as integer codes, once; every signal below is then per pair, scored in chunks.
    cat_code = _string_codes([c if c is not None else "" for c in top_categories])
    has_cat = np.asarray([c is not None for c in top_categories], dtype=bool)
    color_codes, brand_codes = _declared_codes(colors), _declared_codes(brands)
    norm_titles: np.ndarray | None = None  # normalised once per title, on first need
    names = rule.names
    verdict = lambda sig: rule.evaluate({k: v for k, v in sig.items() if k in names})
    checks = image_loader is not None or signatures is not None
    use_emb = embeddings is not None and "embedding_similar" in names
    m = len(image_product)
    sig = Signatures(codes=signatures.codes[order], color=signatures.color[order], ok=signatures.ok[order]) \
        if signatures is not None else Signatures.empty(m)
    stored_ok = sig.ok.copy()
    # Rows whose signature is needed, rows a decode was tried on, rows whose embedding was asked for / found: the
    # counts are over the whole run, and a row is decoded once however many chunks its product is in.
    needed = np.zeros(m, bool)
    tried = np.zeros(m, bool)
    emb_asked = np.zeros(m, bool)
    emb_got = np.zeros(m, bool)
    sums = {k: 0 for k in ("trimmed_checked_pairs", "color_checked_pairs", "embedding_checked_pairs",
                           "images_decoded", "images_undecodable", "color_vetoed_pairs", "brand_vetoed_pairs",
                           "accepted_pairs")}
    any_sig = any_emb = False

    def rows_of(products: np.ndarray) -> np.ndarray:
        per = img_count[products]  # every image row of the products (ragged expansion)
        return np.repeat(img_start[products], per) + np.arange(int(per.sum())) - np.repeat(np.cumsum(per) - per, per)

    def score(chunk_keys: np.ndarray) -> dict[str, np.ndarray]:
        nonlocal norm_titles, any_sig, any_emb
        a, b = chunk_keys // n, chunk_keys % n
        p = len(a)
        distance, row_a, row_b = _closest_images(a, b, img_start, img_count, image_codes)
        lap("closest_images")
        identical = _sorted_contains(identical_keys, chunk_keys)
        same_category = (cat_code[a] == cat_code[b]) & has_cat[a]
        sim = np.zeros(p, np.float32)
        if same_category.any():
            if norm_titles is None:
                norm_titles = np.asarray([normalize_title(t) for t in titles], dtype=object)
            idx = np.flatnonzero(same_category)
            sim[idx] = title_similarity(norm_titles[a[idx]].tolist(), norm_titles[b[idx]].tolist(),
                                        scorer=params.title_scorer, normalized=True, workers=params.workers)
        lap("title_score")
        signals = {
            "identical_image": identical,
            "image_near": distance <= params.image_radius,
            "image_similar": distance <= params.image_similar_radius,
            "image_match": distance <= params.match_radius,  # the trimmed pHash can only add to it, below
            "title_similar": same_category & (sim >= params.title_threshold),
            "same_category": same_category,
            "embedding_similar": np.zeros(p, bool),  # set below, for the pairs whose verdict depends on it
        }
        trimmed = np.full(p, NO_DISTANCE, np.uint8)
        trim_a = np.full(p, -1, np.int64)
        trim_b = np.full(p, -1, np.int64)
        color_dist = np.full(p, np.nan, np.float32)
        # Pairs whose verdict hangs on image_match (monotone rule: True vs the plain-pHash value differ) need the
        # trimmed hash; rule-accepted pairs not already vetoed by declared colours need the image colour. Only their
        # images are decoded.
        maybe_emb = {"embedding_similar": np.ones(p, bool)} if use_emb else {}  # not known yet: could hold
        need_trim = np.zeros(p, bool)
        if checks and "image_match" in names:
            need_trim = verdict({**signals, **maybe_emb, "image_match": np.ones(p, bool)}) & ~verdict(signals)
        _, declared_differs = _declared_differs(color_codes, a, b)
        _, brand_differs = _declared_differs(brand_codes, a, b)
        need_color = np.zeros(p, bool)
        if checks and params.color_veto:
            # Declared colours that agree are still checked: coarse names ("blue") cover clearly different shades.
            need_color = verdict({**signals, **maybe_emb, "image_match": signals["image_match"] | need_trim}) \
                & ~declared_differs
        sums["trimmed_checked_pairs"] += int(need_trim.sum())
        sums["color_checked_pairs"] += int(need_color.sum())
        if need_trim.any() or need_color.any():
            any_sig = True
            rows = rows_of(np.unique(np.concatenate([a[need_trim | need_color], b[need_trim | need_color]])))
            needed[rows] = True
            missing = rows[~sig.ok[rows] & ~tried[rows]] if len(rows) else rows
            if image_loader is not None and len(missing):
                # Only rows without a stored signature are decoded (inspected before the columns existed).
                tried[missing] = True
                got = image_signatures(lambda r: image_loader(int(order[r])), missing.tolist(), m,
                                       workers=params.workers, tolerance=params.trim_tolerance,
                                       compute=None if signature_rows is None
                                       else (lambda rs: signature_rows([int(order[r]) for r in rs])))
                sig.codes[got.ok], sig.color[got.ok], sig.ok[got.ok] = got.codes[got.ok], got.color[got.ok], True
                sums["images_decoded"] += int(got.ok.sum())
                sums["images_undecodable"] += int(len(missing) - got.ok.sum())
                del got
            if need_trim.any():
                q = np.flatnonzero(need_trim)
                for col in range(sig.codes.shape[1]):  # the closest over the crop/border-tolerant codes
                    dq, ra, rb = _closest_images(a[q], b[q], img_start, img_count,
                                                 np.ascontiguousarray(sig.codes[:, col]), valid=sig.ok)
                    better = dq < trimmed[q]
                    trimmed[q[better]], trim_a[q[better]], trim_b[q[better]] = dq[better], ra[better], rb[better]
                signals["image_match"] = signals["image_match"] | (trimmed <= params.match_radius)
            # A product's colour is its first image that decoded (its hero image, by position); every row of the
            # products in this chunk's checked pairs has been tried by now, as in one pass.
            q = np.flatnonzero(need_color)
            if len(q):
                okr = np.flatnonzero(sig.ok)
                first = okr[np.r_[True, image_product[okr][1:] != image_product[okr][:-1]]] if len(okr) else okr
                prod_color = np.full((n, 3), np.nan, np.float32)
                prod_color[image_product[first]] = sig.color[first]
                color_dist[q] = color_distance(prod_color[a[q]], prod_color[b[q]],
                                               lightness_weight=params.color_lightness_weight)
                del prod_color, okr, first
        lap("image_signatures")
        emb_sim = np.full(p, np.nan, np.float32)
        if use_emb:
            need_emb = verdict({**signals, "embedding_similar": np.ones(p, bool)}) & ~verdict(signals)
            sums["embedding_checked_pairs"] += int(need_emb.sum())
            if need_emb.any():
                any_emb = True
                rows = rows_of(np.unique(np.concatenate([a[need_emb], b[need_emb]])))
                vecs, found = embeddings(order[rows])  # only these rows' vectors are held
                found = np.asarray(found, bool)
                emb_asked[rows] = True
                emb_got[rows[found]] = True
                slot = np.full(m, -1, np.int64)
                slot[rows[found]] = np.arange(int(found.sum()))
                q = np.flatnonzero(need_emb)
                emb_sim[q] = best_cosine(a[q], b[q], img_start, img_count, np.asarray(vecs, np.float32)[found], slot)
                del vecs, slot
                with np.errstate(invalid="ignore"):
                    signals["embedding_similar"] = emb_sim >= params.embedding_threshold
            lap("embeddings")
        rule_yes = verdict(signals)
        color_veto = np.zeros(p, bool)
        if params.color_veto:
            with np.errstate(invalid="ignore"):
                color_veto = rule_yes & (declared_differs | (color_dist > params.color_max_distance))
        brand_veto = rule_yes & brand_differs if params.brand_veto else np.zeros(p, bool)
        veto = color_veto | brand_veto
        accepted = rule_yes & ~veto
        sums["color_vetoed_pairs"] += int(color_veto.sum())
        sums["brand_vetoed_pairs"] += int(brand_veto.sum())
        sums["accepted_pairs"] += int(accepted.sum())
        out = {"a": a, "b": b, "identical_image": identical, "distance": distance, "image_a": row_a, "image_b": row_b,
               "title_similarity": sim, "same_category": same_category, "trimmed_distance": trimmed,
               "trimmed_a": trim_a, "trimmed_b": trim_b, "color_distance": color_dist,
               "embedding_similarity": emb_sim, "declared_color_differs": declared_differs,
               "declared_brand_differs": brand_differs, "vetoed": veto, "accepted": accepted}
        if not keep_all:  # only what `duplicate_edges` keeps by default
            sel = np.flatnonzero(accepted | veto)
            out = {k: v[sel] for k, v in out.items()}
        lap("rule")
        return out

    parts = [score(all_keys[lo : lo + pair_chunk]) for lo in range(0, max(p_all, 1), pair_chunk)]
    del all_keys
    res = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]} if len(parts) > 1 else parts[0]
    del parts
    counts["trimmed_checked_pairs"] = sums["trimmed_checked_pairs"]
    counts["color_checked_pairs"] = sums["color_checked_pairs"]
    if any_sig:
        counts["signatures_stored"] = int((needed & stored_ok).sum())
        counts["images_decoded"] = sums["images_decoded"]
        counts["images_undecodable"] = sums["images_undecodable"]
        counts["signatures_missing"] = int((needed & ~sig.ok).sum())  # no signature: unknown
    if use_emb:
        counts["embedding_checked_pairs"] = sums["embedding_checked_pairs"]
        if any_emb:
            counts["embedding_vectors_found"] = int(emb_got.sum())
            counts["embedding_vectors_missing"] = int((emb_asked & ~emb_got).sum())
    for k in ("color_vetoed_pairs", "brand_vetoed_pairs", "accepted_pairs"):
        counts[k] = sums[k]
    # Row indices refer to the product-sorted rows; map them back to the caller's rows.
    back = lambda r: np.where(r >= 0, order[np.maximum(r, 0)], -1)
    for k in ("image_a", "image_b", "trimmed_a", "trimmed_b"):
        res[k] = back(res[k])
    return CandidatePairs(**res, counts=counts, seconds=clock.seconds, peak_rss_mib=clock.peak_rss_mib)
