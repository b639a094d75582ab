"""Near-duplicate products: exact content hash, pHash within a Hamming radius (multi-index hashing), title
similarity (MinHash LSH + rapidfuzz) within a category, a configurable rule, union-find groups."""

from visprep.dedup.candidates import CandidatePairs, DedupParams, find_duplicates
from visprep.dedup.hamming import HAMMING_BACKENDS, brute_radius_pairs, mih_radius_pairs, radius_pairs

__all__ = [
    "HAMMING_BACKENDS", "CandidatePairs", "DedupParams", "brute_radius_pairs", "find_duplicates", "mih_radius_pairs",
    "radius_pairs",
]
