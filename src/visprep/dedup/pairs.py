"""Candidate duplicate pairs of products and their signals: shared images, pHash distance, title similarity.

`find_duplicates` is the stage's pure core: products and their (image_id, pHash) rows in, the candidate pairs with
every signal and the rule's verdict out. Nothing here reads or writes a workspace.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from visprep.dedup.hamming import radius_pairs
from visprep.dedup.rule import DuplicateRule, parse_rule
from visprep.dedup.titles import normalize_title, title_candidate_pairs, title_similarity
from visprep.dedup.visual import Signatures, color_distance, image_signatures, normalize_color
from visprep.images.signature import TRIM_TOLERANCE

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
    near = [_pair_keys(sa, sb, n)]
    if len(ci):
        reps = code_images[ci] * code_images[cj]
        pair_of = np.repeat(np.arange(len(ci)), reps)
        k = np.arange(int(reps.sum())) - np.repeat(np.cumsum(reps) - reps, reps)
        ra = rows_by_code[code_start[ci][pair_of] + k // code_images[cj][pair_of]]
        rb = rows_by_code[code_start[cj][pair_of] + k % code_images[cj][pair_of]]
        near.append(_pair_keys(image_product[ra], image_product[rb], n))
    return np.unique(np.concatenate(near)), {"crowded_codes": int(crowded.sum()),
                                             "crowded_code_images": int(code_images[crowded].sum()),
                                             "code_pairs": len(ci)}


def _closest_images(pa_: np.ndarray, pb: np.ndarray, img_start: np.ndarray, img_count: np.ndarray,
                    codes: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For product pairs (pa_, pb): the closest pHash distance over their image rows (only rows where `valid`, when
    given) and which rows gave it."""
    p = len(pa_)
    dist = np.full(p, NO_DISTANCE, np.uint8)
    ia = np.full(p, -1, np.int64)
    ib = np.full(p, -1, np.int64)
    for q, pair_of, row_a, row_b in _cross_rows(pa_, pb, img_start, img_count, step=2_000_000):
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


def _declared_differs(values: Sequence[str | None] | None, a: np.ndarray,
                      b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For pairs (a, b) of a declared attribute: (both declare it, both declare it and the values differ)."""
    if values is None:
        none = np.zeros(len(a), bool)
        return none, none
    norm = [normalize_color(v) for v in values]
    val = np.asarray([v if v is not None else "" for v in norm], dtype=object)
    has = np.asarray([v is not None for v in norm])
    both = has[a] & has[b]
    return both, both & (val[a] != val[b])


def find_duplicates(product_ids: list[str], titles: list[str], top_categories: list[str | None],
                    image_product: np.ndarray, image_ids: list[str], image_codes: np.ndarray, *,
                    params: DedupParams = DedupParams(), colors: Sequence[str | None] | None = None,
                    brands: Sequence[str | None] | None = None, image_loader: Callable[[int], bytes] | None = None,
                    signatures: Signatures | None = None,
                    embeddings: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None) -> CandidatePairs:
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

    Returns:
        `CandidatePairs` over every pair any generator signal proposed.
    """
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
    seconds: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(phase: str) -> None:
        now = time.perf_counter()
        seconds[phase] = round(now - clock[0], 3)
        clock[0] = now

    # Image rows grouped by product (ragged arrays), so pairs of products can be compared image by image.
    order = np.argsort(image_product, kind="stable")
    image_product = image_product[order]
    image_codes = image_codes[order]
    image_ids = [image_ids[k] for k in order.tolist()]
    img_count = np.bincount(image_product, minlength=n).astype(np.int64)
    img_start = np.cumsum(img_count) - img_count

    keys: list[np.ndarray] = []
    # 1. Identical images: products listing the same content hash.
    _, image_key = np.unique(np.asarray(image_ids, dtype=object).astype(str), return_inverse=True)
    ga, gb = _group_pairs(image_key.astype(np.int64), image_product, max_clique=params.max_code_images)
    identical_keys = np.unique(_pair_keys(ga, gb, n))
    keys.append(identical_keys)
    counts["identical_image_pairs"] = len(identical_keys)
    lap("identical_images")

    # 2. pHash near duplicates: search the distinct codes, then expand to the products holding them.
    near_keys, near_counts = _near_code_pairs(image_codes, image_product, n, radius=params.image_radius,
                                              max_code_images=params.max_code_images,
                                              backend=params.hamming_backend)
    keys.append(near_keys)
    counts.update({"crowded_codes": near_counts["crowded_codes"],
                   "crowded_code_images": near_counts["crowded_code_images"],
                   "phash_code_pairs": near_counts["code_pairs"], "image_near_pairs": len(near_keys)})
    lap("phash_index")

    # 2b. The same search over each stored crop/border-tolerant code, so that a cropped or bordered copy is a
    # candidate even when its reworded title escapes the title LSH (image_match is then checked as for any pair).
    if signatures is not None and params.trim_tolerance != TRIM_TOLERANCE:
        counts["stored_signatures_ignored"] = int(signatures.ok.sum())  # computed at another tolerance
        signatures = None
    if signatures is not None and params.signature_candidates and "image_match" in rule.names:
        ok_rows = np.flatnonzero(signatures.ok[order])
        sig_keys = [_near_code_pairs(np.ascontiguousarray(signatures.codes[order][ok_rows, col]),
                                     image_product[ok_rows], n, radius=params.match_radius,
                                     max_code_images=params.max_code_images, backend=params.hamming_backend)[0]
                    for col in range(signatures.codes.shape[1])]
        sig_keys = np.unique(np.concatenate(sig_keys)) if sig_keys else np.empty(0, np.int64)
        keys.append(sig_keys)
        counts["signature_near_pairs"] = len(sig_keys)
        lap("signature_index")

    # 3. Title candidates within each top-level category.
    ta, tb = title_candidate_pairs(titles, top_categories, lsh_threshold=params.lsh_threshold,
                                   num_perm=params.num_perm, counts=counts,
                                   subblocks=[normalize_color(v) for v in brands]
                                   if brands is not None and params.brand_veto else None)
    title_keys = _pair_keys(ta, tb, n)
    keys.append(title_keys)
    counts["title_candidate_pairs"] = len(title_keys)
    lap("title_lsh")

    all_keys = np.unique(np.concatenate(keys)) if keys else np.empty(0, np.int64)
    a, b = all_keys // n, all_keys % n
    counts["candidate_pairs"] = len(a)

    distance, row_a, row_b = _closest_images(a, b, img_start, img_count, image_codes)
    lap("closest_images")
    identical = np.isin(all_keys, identical_keys)
    cats = np.asarray([c if c is not None else "" for c in top_categories], dtype=object)
    has_cat = np.asarray([c is not None for c in top_categories])
    same_category = (cats[a] == cats[b]) & has_cat[a]
    sim = np.zeros(len(a), np.float32)
    if same_category.any():
        idx = np.flatnonzero(same_category)
        norm = np.asarray([normalize_title(t) for t in titles], dtype=object)  # once per title, not per pair
        sim[idx] = title_similarity(norm[a[idx]].tolist(), norm[b[idx]].tolist(), scorer=params.title_scorer,
                                    normalized=True, workers=params.workers)
    lap("title_score")
    signals = {
        "identical_image": identical,
        "image_near": distance <= params.image_radius,
        "image_similar": distance <= params.image_similar_radius,
        "image_match": distance <= params.match_radius,  # the trimmed pHash can only add to it, below
        "title_similar": same_category & (sim >= params.title_threshold),
        "same_category": same_category,
        "embedding_similar": np.zeros(len(a), bool),  # set below, for the pairs whose verdict depends on it
    }
    p = len(a)
    trimmed = np.full(p, NO_DISTANCE, np.uint8)
    trim_a = np.full(p, -1, np.int64)
    trim_b = np.full(p, -1, np.int64)
    color_dist = np.full(p, np.nan, np.float32)
    names = rule.names
    verdict = lambda sig: rule.evaluate({k: v for k, v in sig.items() if k in names})
    # Pairs whose verdict hangs on image_match (monotone rule: True vs the plain-pHash value differ) need the trimmed
    # hash; rule-accepted pairs not already vetoed by declared colours need the image colour. Only their images are
    # decoded.
    checks = image_loader is not None or signatures is not None
    use_emb = embeddings is not None and "embedding_similar" in names
    maybe_emb = {"embedding_similar": np.ones(p, bool)} if use_emb else {}  # not known yet: could hold
    need_trim = np.zeros(p, bool)
    if checks and "image_match" in names:
        need_trim = verdict({**signals, **maybe_emb, "image_match": np.ones(p, bool)}) & ~verdict(signals)
    _, declared_differs = _declared_differs(colors, a, b)
    _, brand_differs = _declared_differs(brands, a, b)
    need_color = np.zeros(p, bool)
    if checks and params.color_veto:
        # Declared colours that agree are still checked: coarse names ("blue") cover clearly different shades.
        need_color = verdict({**signals, **maybe_emb, "image_match": signals["image_match"] | need_trim}) \
            & ~declared_differs
    counts["trimmed_checked_pairs"] = int(need_trim.sum())
    counts["color_checked_pairs"] = int(need_color.sum())
    if need_trim.any() or need_color.any():
        involved = np.unique(np.concatenate([a[need_trim | need_color], b[need_trim | need_color]]))
        per = img_count[involved]  # every image row of the involved products (ragged expansion)
        rows = np.repeat(img_start[involved], per) + np.arange(int(per.sum())) - np.repeat(np.cumsum(per) - per, per)
        m = len(image_product)
        sig = Signatures(codes=signatures.codes[order], color=signatures.color[order], ok=signatures.ok[order]) \
            if signatures is not None else Signatures.empty(m)
        missing = rows[~sig.ok[rows]] if len(rows) else rows
        counts["signatures_stored"] = int(len(rows) - len(missing))
        if image_loader is not None and len(missing):
            # Only rows without a stored signature are decoded (inspected before the columns existed).
            got = image_signatures(lambda r: image_loader(int(order[r])), missing.tolist(), m,
                                   workers=params.workers, tolerance=params.trim_tolerance)
            sig.codes[got.ok], sig.color[got.ok], sig.ok[got.ok] = got.codes[got.ok], got.color[got.ok], True
            counts["images_decoded"] = int(got.ok.sum())
            counts["images_undecodable"] = int(len(missing) - got.ok.sum())
        else:
            counts["images_decoded"] = counts["images_undecodable"] = 0
        counts["signatures_missing"] = int((~sig.ok[rows]).sum()) if len(rows) else 0  # no signature: unknown
        if need_trim.any():
            q = np.flatnonzero(need_trim)
            for col in range(sig.codes.shape[1]):  # the closest over the crop/border-tolerant codes
                dq, ra, rb = _closest_images(a[q], b[q], img_start, img_count,
                                             np.ascontiguousarray(sig.codes[:, col]), valid=sig.ok)
                better = dq < trimmed[q]
                trimmed[q[better]], trim_a[q[better]], trim_b[q[better]] = dq[better], ra[better], rb[better]
            signals["image_match"] = signals["image_match"] | (trimmed <= params.match_radius)
        # A product's colour is its first image that decoded (its hero image, by position).
        okr = np.flatnonzero(sig.ok)
        first = okr[np.r_[True, image_product[okr][1:] != image_product[okr][:-1]]] if len(okr) else okr
        prod_color = np.full((n, 3), np.nan, np.float32)
        prod_color[image_product[first]] = sig.color[first]
        q = np.flatnonzero(need_color)
        color_dist[q] = color_distance(prod_color[a[q]], prod_color[b[q]],
                                       lightness_weight=params.color_lightness_weight)
    lap("image_signatures")
    emb_sim = np.full(p, np.nan, np.float32)
    if use_emb:
        need_emb = verdict({**signals, "embedding_similar": np.ones(p, bool)}) & ~verdict(signals)
        counts["embedding_checked_pairs"] = int(need_emb.sum())
        if need_emb.any():
            involved = np.unique(np.concatenate([a[need_emb], b[need_emb]]))
            per = img_count[involved]
            rows = np.repeat(img_start[involved], per) + np.arange(int(per.sum())) - np.repeat(np.cumsum(per) - per,
                                                                                               per)
            vecs, found = embeddings(order[rows])  # only these rows' vectors are held
            slot = np.full(len(image_product), -1, np.int64)
            slot[rows[found]] = np.arange(int(found.sum()))
            counts["embedding_vectors_found"] = int(found.sum())
            counts["embedding_vectors_missing"] = int((~found).sum())
            q = np.flatnonzero(need_emb)
            emb_sim[q] = best_cosine(a[q], b[q], img_start, img_count, np.asarray(vecs, np.float32)[found], slot)
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
    counts["color_vetoed_pairs"] = int(color_veto.sum())
    counts["brand_vetoed_pairs"] = int(brand_veto.sum())
    counts["accepted_pairs"] = int(accepted.sum())
    lap("rule")
    # Row indices refer to the product-sorted rows; map them back to the caller's rows.
    back = lambda r: np.where(r >= 0, order[np.maximum(r, 0)], -1)
    return CandidatePairs(a=a, b=b, identical_image=identical, distance=distance, image_a=back(row_a),
                          image_b=back(row_b), title_similarity=sim, same_category=same_category,
                          trimmed_distance=trimmed, trimmed_a=back(trim_a), trimmed_b=back(trim_b),
                          color_distance=color_dist, embedding_similarity=emb_sim,
                          declared_color_differs=declared_differs,
                          declared_brand_differs=brand_differs, vetoed=veto,
                          accepted=accepted, counts=counts, seconds=seconds)
