"""Multi-index hashing against the brute-force oracle, on random and clustered 64-bit codes."""

import numpy as np
import pytest

from visprep.dedup.hamming import brute_radius_pairs, mih_radius_pairs, plan_blocks, radius_pairs


def _clustered(n: int, rng: np.random.Generator) -> np.ndarray:
    codes = rng.integers(0, 2**63, size=n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n, dtype=np.uint64)
    k = n // 3  # a third are perturbed copies (1..8 flipped bits) of others, some exact copies
    src = rng.integers(0, n - k, size=k)
    flips = np.zeros(k, np.uint64)
    for _ in range(8):
        use = rng.random(k) < 0.5
        flips[use] ^= np.uint64(1) << rng.integers(0, 64, size=int(use.sum())).astype(np.uint64)
    codes[n - k :] = codes[src] ^ flips
    return codes


@pytest.mark.parametrize("kind", ["random", "clustered", "low_entropy"])
@pytest.mark.parametrize("radius", [0, 1, 3, 6, 10, 16])
def test_mih_matches_brute_force(kind, radius):
    rng = np.random.default_rng(radius)
    if kind == "random":
        codes = rng.integers(0, 2**63, size=1500, dtype=np.uint64) << np.uint64(1)
    elif kind == "clustered":
        codes = _clustered(1500, rng)
    else:  # few distinct bit patterns: crowded buckets and many exact repeats
        codes = rng.integers(0, 2**12, size=1500, dtype=np.uint64) * np.uint64(0x1000100010001)
    want = brute_radius_pairs(codes, radius)
    got = mih_radius_pairs(codes, radius)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(w, g)
    assert np.all(got[0] < got[1])
    assert np.all(got[2] <= radius)


@pytest.mark.parametrize("blocks", [2, 3, 4, 5, 8])
def test_every_block_count_is_exact(blocks):
    codes = _clustered(800, np.random.default_rng(7))
    want = brute_radius_pairs(codes, 7)
    got = mih_radius_pairs(codes, 7, blocks=blocks)
    np.testing.assert_array_equal(want[0], got[0])
    np.testing.assert_array_equal(want[1], got[1])


def test_edge_cases_and_validation():
    empty = np.empty(0, np.uint64)
    assert all(len(x) == 0 for x in mih_radius_pairs(empty, 4))
    assert all(len(x) == 0 for x in mih_radius_pairs(np.array([5], np.uint64), 4))
    top = np.array([2**64 - 1, 2**64 - 2, 0], np.uint64)  # the high bit set must not overflow anything
    i, j, d = mih_radius_pairs(top, 1)
    assert (i.tolist(), j.tolist(), d.tolist()) == ([0], [1], [1])
    with pytest.raises(ValueError, match="uint64"):
        mih_radius_pairs(np.array([1, 2], np.int64), 2)
    with pytest.raises(ValueError, match="radius"):
        mih_radius_pairs(top, 65)
    with pytest.raises(ValueError, match="valid: \\['brute', 'mih'\\]"):
        radius_pairs(top, 2, backend="faiss")
    with pytest.raises(ValueError, match="probes per code"):
        mih_radius_pairs(top, 7, blocks=1)  # C(64, <=7) flips: refused, not hours of work
    assert 1 <= plan_blocks(_clustered(5000, np.random.default_rng(1)), 8) <= 9
