"""Stable 64-bit keys of strings and pairs, vectorised: what makes ANN sampling independent of batch and run.

A mined anchor's draw from its hardness band must not depend on which other anchors were searched with it, or an
incremental re-mine (mining/incremental.py) could not reproduce a full re-mine. Each (anchor, candidate) pair gets
a pseudo-random key from the seed and the two items' stable keys; the k survivors with the smallest keys are kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 values (a bijection with good avalanche)."""
    x = np.asarray(x, np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def string_keys(strings: Sequence[str]) -> np.ndarray:
    """(N,) uint64 key of each string (FNV-1a over its UTF-8 bytes, column by column, then mixed); stable across runs."""
    if len(strings) == 0:
        return np.zeros(0, np.uint64)
    raw = np.array([s.encode() for s in strings], dtype=bytes)
    width = raw.dtype.itemsize
    mat = np.frombuffer(raw.tobytes(), np.uint8).reshape(len(raw), width)
    lengths = np.char.str_len(raw)
    h = np.full(len(raw), 0xCBF29CE484222325, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(width):
            live = lengths > j  # numpy's bytes dtype pads with NUL: stop at each string's own length
            h = np.where(live, (h ^ mat[:, j].astype(np.uint64)) * np.uint64(0x100000001B3), h)
        h = h ^ lengths.astype(np.uint64)
    return mix64(h)


def pair_keys(seed: int, anchor_keys: np.ndarray, candidate_keys: np.ndarray) -> np.ndarray:
    """Pseudo-random uint64 of each (anchor, candidate) pair under `seed`; broadcasts like its arguments."""
    s = mix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], np.uint64))[0]
    with np.errstate(over="ignore"):
        return mix64(mix64(np.asarray(anchor_keys, np.uint64) ^ s) + np.asarray(candidate_keys, np.uint64))


def signature_sum(values: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """Order-independent uint64 signature of each CSR segment of `values` (wrap-around sum of mixed values)."""
    mixed = mix64(np.asarray(values, np.uint64))
    out = np.zeros(len(indptr) - 1, np.uint64)
    lens = np.diff(indptr)
    has = lens > 0
    if has.any():
        with np.errstate(over="ignore"):
            sums = np.add.reduceat(mixed, indptr[:-1][has]) if len(mixed) else np.zeros(int(has.sum()), np.uint64)
        out[has] = sums
    return out
