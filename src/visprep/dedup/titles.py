"""Title near-duplicates: MinHash LSH candidates within a category, confirmed with rapidfuzz.

MinHash LSH (datasketch) finds pairs of titles whose word sets have a high Jaccard similarity without comparing all
pairs; rapidfuzz then scores each candidate with an edit-distance ratio (`TITLE_SCORERS`), which is what the rule's
threshold applies to. Candidates are only looked for within one block (the top-level category): a "Black Leather
Tote" in Bags and a "Black Leather Boot" in Footwear are never compared.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)


def _scorers() -> dict[str, Callable]:
    from rapidfuzz import fuzz

    return {"token_set_ratio": fuzz.token_set_ratio, "token_sort_ratio": fuzz.token_sort_ratio,
            "ratio": fuzz.ratio, "WRatio": fuzz.WRatio}


TITLE_SCORERS = ("token_set_ratio", "token_sort_ratio", "ratio", "WRatio")
"""Names of the rapidfuzz scorers a config may choose (scores are divided by 100: 0..1)."""


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


def title_candidate_pairs(titles: Sequence[str], blocks: Sequence[str | None], *, lsh_threshold: float = 0.5,
                          num_perm: int = 64, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i < j) of titles in the same block whose estimated word-set Jaccard is about `lsh_threshold` or more.

    Args:
        titles: one title per item.
        blocks: one block key per item (the top-level category); items with a null block are not compared.
        lsh_threshold: datasketch MinHashLSH threshold (Jaccard), 0..1.
        num_perm: MinHash permutations.
        seed: MinHash seed.

    Returns:
        (i, j): int64 index arrays, i < j, each pair once, sorted.
    """
    if len(titles) != len(blocks):
        raise ValueError(f"titles ({len(titles)}) and blocks ({len(blocks)}) must have the same length")
    if not 0.0 < lsh_threshold <= 1.0:
        raise ValueError(f"lsh_threshold must be in (0, 1], got {lsh_threshold!r}")
    MinHash, MinHashLSH = _import_datasketch()
    by_block: dict[str, list[int]] = defaultdict(list)
    for k, b in enumerate(blocks):
        if b is not None:
            by_block[b].append(k)
    out_i: list[int] = []
    out_j: list[int] = []
    for members in by_block.values():
        if len(members) < 2:
            continue
        token_sets = [[t.encode() for t in set(title_tokens(titles[k]))] for k in members]
        hashes = MinHash.bulk(token_sets, num_perm=num_perm, seed=seed)
        lsh = MinHashLSH(threshold=lsh_threshold, num_perm=num_perm)
        with lsh.insertion_session() as session:
            for local, (tokens, mh) in enumerate(zip(token_sets, hashes)):
                if tokens:
                    session.insert(local, mh, check_duplication=False)
        for local, (tokens, mh) in enumerate(zip(token_sets, hashes)):
            if not tokens:
                continue
            for other in lsh.query(mh):
                if other > local:
                    out_i.append(members[local])
                    out_j.append(members[other])
    i = np.asarray(out_i, dtype=np.int64)
    j = np.asarray(out_j, dtype=np.int64)
    swap = i > j
    i[swap], j[swap] = j[swap], i[swap].copy()
    if len(i) == 0:
        return i, j
    keys = np.unique(i * len(titles) + j)
    return keys // len(titles), keys % len(titles)


def title_similarity(a: Sequence[str], b: Sequence[str], *, scorer: str = "token_set_ratio") -> np.ndarray:
    """Element-wise fuzzy similarity of `a[k]` and `b[k]` (normalised titles), in 0..1, as float32."""
    scorers = _scorers()
    if scorer not in scorers:
        raise ValueError(f"unknown title scorer {scorer!r}; valid: {sorted(scorers)}")
    if len(a) != len(b):
        raise ValueError(f"a ({len(a)}) and b ({len(b)}) must have the same length")
    if len(a) == 0:
        return np.empty(0, np.float32)
    from rapidfuzz import process

    scores = process.cpdist([normalize_title(t) for t in a], [normalize_title(t) for t in b],
                            scorer=scorers[scorer], dtype=np.float32)
    return np.asarray(scores, np.float32) / 100.0
