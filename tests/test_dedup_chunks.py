"""Candidate pairs scored in chunks: the same pairs, signals, verdicts and counts as in one pass."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visprep.dedup.benchset import build_dedup_benchmark
from visprep.dedup.candidates import CandidatePairs, DedupParams, find_duplicates, merge_sorted_keys
from visprep.dedup.titles import _union_sorted, title_candidate_keys, title_candidate_pairs
from visprep.dedup.visual import Signatures
from visprep.images.facts import inspect_image

FIELDS = [f for f in CandidatePairs.__dataclass_fields__ if f not in ("counts", "seconds", "peak_rss_mib")]
EMB_RULE = "identical_image or ((image_match or embedding_similar) and title_similar)"


@pytest.fixture(scope="module")
def case():
    """The benchmark set with ragged listings (some products get a second or third image, some images are shared),
    rows without a stored signature, declared colours and brands, and per-row embeddings."""
    bench = build_dedup_benchmark(40, seed=5)
    infos = [inspect_image(b) for b in bench.images]
    m, n = len(infos), len(bench.product_ids)
    rng = np.random.default_rng(0)
    extra = rng.integers(0, m, m // 3)
    rows = np.r_[np.arange(m), extra]
    product = np.r_[np.arange(m), rng.integers(0, n, len(extra))]
    perm = rng.permutation(len(rows))
    rows, product = rows[perm], product[perm]
    codes = np.array([x.phash for x in infos], np.uint64)[rows]
    sig_codes = np.array([x.signature_codes for x in infos], np.uint64)[rows]
    color = np.array([x.fg_color for x in infos], np.float32)[rows]
    ok = rng.random(len(rows)) >= 0.2
    colors = [None if rng.random() < 0.3 else str(rng.choice(["Blue", "blue", "Red", "Black"])) for _ in range(n)]
    brands = [None if rng.random() < 0.2 else str(rng.choice(["Corvo", "Oakline", "Tide"])) for _ in range(n)]
    vecs = rng.normal(size=(len(rows), 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = bench.image_ids()
    args = (bench.product_ids, bench.titles, bench.top_categories, product, [ids[r] for r in rows.tolist()], codes)
    return {"args": args, "sigs": lambda: Signatures(codes=sig_codes.copy(), color=color.copy(), ok=ok.copy()),
            "loader": lambda r: bench.images[int(rows[r])], "colors": colors, "brands": brands,
            "embeddings": lambda r: (vecs[r], r % 7 != 0)}


def _equal(one: CandidatePairs, other: CandidatePairs, sub: np.ndarray | None = None) -> None:
    for name in FIELDS:
        x, y = getattr(one, name), getattr(other, name)
        x = x if sub is None else x[sub]
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name
    assert one.counts == other.counts


@pytest.mark.parametrize("kind", ["signatures", "loader", "embeddings"])
def test_chunked_equals_one_pass(case, kind):
    """Chunks of 1, 7 and 100 pairs give what one chunk gives (the loader decodes each row once either way), and
    keep_all=False is exactly its accepted and vetoed rows, with the same counts."""

    def run(**kw):
        extra = {"colors": case["colors"], "brands": case["brands"]}
        if kind in ("signatures", "embeddings"):
            extra["signatures"] = case["sigs"]()
        if kind == "loader":
            extra["image_loader"] = case["loader"]
        if kind == "embeddings":
            extra.update(embeddings=case["embeddings"], params=DedupParams(rule=EMB_RULE))
        return find_duplicates(*case["args"], **extra, **kw)

    whole = run(pair_chunk=10**9)
    assert whole.accepted.any() and whole.vetoed.any() and (~whole.accepted & ~whole.vetoed).any()
    if kind == "loader":
        assert whole.counts["images_decoded"] > 0
    if kind == "embeddings":
        assert whole.counts["embedding_checked_pairs"] > 0
    for chunk in (1, 7, 100):
        _equal(whole, run(pair_chunk=chunk))
    _equal(whole, run(pair_chunk=7, keep_all=False), whole.accepted | whole.vetoed)
    with pytest.raises(ValueError, match="pair_chunk"):
        run(pair_chunk=0)


def test_no_candidates_gives_empty_pairs():
    c = find_duplicates(["p0"], ["a"], ["A"], np.array([0]), ["i0"], np.array([1], np.uint64), pair_chunk=3)
    assert len(c.a) == 0 and c.a.dtype == np.int64 and c.counts["candidate_pairs"] == 0


keys = st.lists(st.integers(0, 60), max_size=40)


@settings(max_examples=200, deadline=None)
@given(keys, keys)
def test_sorted_unions_match_union1d(big, small):
    big = np.unique(np.asarray(big, np.int64))
    small = np.asarray(small, np.int64)
    want = np.union1d(big, small)
    assert np.array_equal(merge_sorted_keys(big, small), want)
    assert np.array_equal(_union_sorted(big, small), want)


def test_title_keys_are_the_title_pairs(case):
    """The key form merged band by band is the (i, j) form, which the other tests check against datasketch."""
    titles, blocks = case["args"][1], case["args"][2]
    keys = title_candidate_keys(titles, blocks, subblocks=case["brands"])
    i, j = title_candidate_pairs(titles, blocks, subblocks=case["brands"])
    assert len(keys) and np.array_equal(keys, i * len(titles) + j) and (i < j).all()
    assert np.array_equal(keys, np.unique(keys))


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_closest_images_matches_brute_force(data):
    """The closest pair of image rows of two products (one-image pairs taken directly, the others by a sort), against
    a loop over every image pair; rows that are not `valid` take no part."""
    from visprep.dedup.candidates import NO_DISTANCE, _closest_images

    n = data.draw(st.integers(2, 8))
    count = np.asarray(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), np.int64)
    start = np.cumsum(count) - count
    m = int(count.sum())
    codes = np.asarray(data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=m, max_size=m)), np.uint64)
    valid = np.asarray(data.draw(st.lists(st.booleans(), min_size=m, max_size=m)), bool)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    pa_, pb = (np.asarray(x, np.int64) for x in zip(*pairs))
    for mask in (None, valid):
        dist, ia, ib = _closest_images(pa_, pb, start, count, codes, mask)
        for k, (i, j) in enumerate(pairs):
            cand = [(int(np.bitwise_count(codes[r] ^ codes[s])), r, s)
                    for r in range(start[i], start[i] + count[i]) for s in range(start[j], start[j] + count[j])
                    if mask is None or (mask[r] and mask[s])]
            if not cand:
                assert dist[k] == NO_DISTANCE and ia[k] == -1 and ib[k] == -1
                continue
            best = min(c[0] for c in cand)
            assert dist[k] == best and (best, ia[k], ib[k]) in cand


@pytest.mark.parametrize("near_chunk", [1, 5])
def test_near_code_pairs_expanded_in_chunks(case, monkeypatch, near_chunk):
    """The near pHash code pairs expanded to product pairs a few image pairs at a time (`NEAR_CHUNK`), each
    chunk merged into the running key set, give the pairs, signals and counts of one expansion."""
    import visprep.dedup.candidates as candidates

    def run():
        return find_duplicates(*case["args"], signatures=case["sigs"](), colors=case["colors"],
                               brands=case["brands"])

    whole = run()
    assert whole.counts["phash_code_pairs"] > 5 and whole.counts["signature_near_pairs"] > 0
    monkeypatch.setattr(candidates, "NEAR_CHUNK", near_chunk)
    _equal(whole, run())


def test_union_sorted_keys_either_side_larger():
    """The running key set: sorted unique union whichever argument is larger, the inputs left as they were."""
    from visprep.dedup.candidates import union_sorted_keys

    acc = np.array([1, 4, 9], np.int64)
    new = np.array([9, 2, 2, 30, 0, 4, 7], np.int64)
    for x, y in ((acc, new), (np.unique(new), acc[::-1].copy())):
        before = y.copy()
        assert np.array_equal(union_sorted_keys(x, y), np.union1d(acc, new))
        assert np.array_equal(y, before)
