"""Incremental ANN re-mining: reuse the feature store and the last run, re-mine only anchors whose result can change.

An anchor's ANN negatives are a function of: its own vector, its positive groups and positive score `s_pos`, the
non-positive candidates of ranks 1..band_max (their ids, similarities and groups), the parameters and the seed
(the draw is keyed per pair: `keys.pair_keys`). The state of the last run keeps, per anchor, the band it saw and
its `radius` (similarity of its band_max-th non-positive candidate). An anchor is re-mined when:

- it is new, or its vector or group changed (`anchor_changed`);
- its positive-group set or `s_pos` changed (`positives_changed`);
- an item of its band was removed or changed (vector or group) (`band_member_changed`);
- a new or changed item is at least as similar to it as its radius (`closer_item_added`), found by an exact
  blocked product of the anchors with the new/changed items only.

Every other anchor keeps its rows. With exact search this reproduces a full re-mine (tested); with IVF/HNSW the
re-mined anchors are searched in the index of the current pool, so results match a full re-mine only up to the ANN's own
approximation. When the changes are large (`full_fraction`), a full re-mine is cheaper and is done instead.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visprep.mining.ann import AnnNegatives

STATE_VERSION = 1


def vector_fingerprints(vectors: np.ndarray, block: int = 65536) -> np.ndarray:
    """(N,) uint64 fingerprint of each vector's exact bits (a wrap-around weighted sum, in row blocks)."""
    from visprep.mining.keys import mix64

    v = np.ascontiguousarray(vectors, np.float32)
    weights = mix64(np.arange(1, v.shape[1] + 1, dtype=np.uint64)) | np.uint64(1)
    out = np.empty(len(v), np.uint64)
    with np.errstate(over="ignore"):
        for s in range(0, len(v), block):
            bits = v[s : s + block].view(np.uint32).astype(np.uint64)
            out[s : s + block] = mix64((bits * weights[None, :]).sum(axis=1, dtype=np.uint64))
    return out


@dataclass
class AnnState:
    """What the last ANN mine of one pool saw and produced (saved beside the feature store).

    Attributes:
        params: the mining parameters and model id; any change forces a full re-mine.
        keys: (N,) uint64 stable item keys (product + image id).
        vec_fp, group_key, pos_sig: (N,) uint64 fingerprints of the vector, group id and positive-group set.
        s_pos: (N,) float64 positive score.
        radius: (N,) float32; band: (N, band_max) int64 row positions (-1 padded) - see `AnnNegatives`.
        anchor, negative: (M,) int64 row positions of the emitted rows; score (M,) float32; rank (M,) int32.
    """

    params: dict[str, Any]
    keys: np.ndarray
    vec_fp: np.ndarray
    group_key: np.ndarray
    pos_sig: np.ndarray
    s_pos: np.ndarray
    radius: np.ndarray
    band: np.ndarray
    anchor: np.ndarray
    negative: np.ndarray
    score: np.ndarray
    rank: np.ndarray

    def save(self, path: Path) -> None:
        """Write atomically (a kill leaves the previous state, which stays self-consistent)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        arrays = {k: getattr(self, k) for k in ("keys", "vec_fp", "group_key", "pos_sig", "s_pos", "radius", "band",
                                                "anchor", "negative", "score", "rank")}
        np.savez(tmp, params=np.array(json.dumps({"version": STATE_VERSION, **self.params}, sort_keys=True)),
                 **arrays)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> AnnState | None:
        """The saved state, or None when there is none (or it is unreadable: a full re-mine then rebuilds it)."""
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                params = json.loads(str(z["params"]))
                if params.pop("version", None) != STATE_VERSION:
                    return None
                return cls(params=params, **{k: z[k] for k in z.files if k != "params"})
        except (OSError, ValueError, KeyError):
            return None


@dataclass
class RemineDecision:
    """Which anchors of the new pool to re-mine, how the rest map to the old state, and why."""

    full: bool
    remine: np.ndarray  # (N_new,) bool
    old_pos: np.ndarray  # (N_new,) int64 row of each new item in the old state, -1 if new
    reason: str = ""
    counts: dict[str, int] = field(default_factory=dict)


def decide_remine(old: AnnState | None, params: dict[str, Any], *, keys: np.ndarray, vectors: np.ndarray,
                  vec_fp: np.ndarray, group_key: np.ndarray, pos_sig: np.ndarray, s_pos: np.ndarray,
                  full_fraction: float = 0.5, block: int = 8192) -> RemineDecision:
    """Compare the new pool with the last state and pick the anchors whose negatives can have changed.

    Args:
        old: the last state (None: full mine).
        params: this run's parameters.
        keys, vec_fp, group_key, pos_sig, s_pos: (N,) of the new pool (see `AnnState`).
        vectors: (N, D) of the new pool.
        full_fraction: re-mine everything when the new/changed items, or the anchors to re-mine, exceed this
            share of the pool (the incremental checks would cost about as much as they save).
        block: anchors per block of the added-item similarity check.
    """
    n = len(keys)
    everything = np.ones(n, bool)
    no_map = np.full(n, -1, np.int64)
    if old is None:
        return RemineDecision(True, everything, no_map, "no previous state")
    if old.params != params:
        changed = sorted(k for k in set(old.params) | set(params) if old.params.get(k) != params.get(k))
        return RemineDecision(True, everything, no_map, f"parameters changed: {', '.join(changed)}")
    if len(np.unique(keys)) != n or len(np.unique(old.keys)) != len(old.keys):
        return RemineDecision(True, everything, no_map, "duplicate item keys")
    order = np.argsort(old.keys)
    at = np.clip(np.searchsorted(old.keys[order], keys), 0, max(len(order) - 1, 0))
    found = old.keys[order[at]] == keys if len(order) else np.zeros(n, bool)
    old_pos = np.where(found, order[at] if len(order) else 0, -1)
    common = np.flatnonzero(found)
    op = old_pos[common]
    item_changed = np.zeros(n, bool)
    item_changed[common] = (old.vec_fp[op] != vec_fp[common]) | (old.group_key[op] != group_key[common])
    added = ~found | item_changed  # new or changed items (new positions)
    # Old rows that left or changed: any anchor whose band held one must be re-mined.
    dirty_old = np.ones(len(old.keys), bool)
    dirty_old[op] = item_changed[common]
    counts = {"items_new": int((~found).sum()), "items_changed": int(item_changed.sum()),
              "items_removed": int(len(old.keys) - len(common))}
    if added.sum() + counts["items_removed"] > full_fraction * max(n, 1):
        return RemineDecision(True, everything, no_map, "too many new/changed/removed items", counts)
    remine = added.copy()
    counts["anchor_changed"] = int(remine.sum())
    same_pos = np.zeros(n, bool)
    same_pos[common] = (old.pos_sig[op] == pos_sig[common]) & (
        (old.s_pos[op] == s_pos[common]) | (np.isnan(old.s_pos[op]) & np.isnan(s_pos[common])))
    hit = found & ~same_pos & ~remine
    counts["positives_changed"] = int(hit.sum())
    remine |= hit
    band = old.band[op]
    hit_old = ((band >= 0) & dirty_old[np.clip(band, 0, None)]).any(axis=1) if band.size else np.zeros(len(op), bool)
    hit = np.zeros(n, bool)
    hit[common] = hit_old
    hit &= ~remine
    counts["band_member_changed"] = int(hit.sum())
    remine |= hit
    add_rows = np.flatnonzero(added)
    check = np.flatnonzero(~remine)
    hit = np.zeros(n, bool)
    if len(add_rows) and len(check):
        radius = old.radius[old_pos[check]]
        y = np.ascontiguousarray(vectors[add_rows], np.float32)
        for s in range(0, len(check), block):
            rows = check[s : s + block]
            best = (vectors[rows] @ y.T).max(axis=1)
            hit[rows] = best >= radius[s : s + block]
    counts["closer_item_added"] = int(hit.sum())
    remine |= hit
    if remine.sum() > full_fraction * max(n, 1):
        return RemineDecision(True, everything, old_pos, "most anchors affected", counts)
    return RemineDecision(False, remine, old_pos, "incremental", counts)


def merge_results(old: AnnState, decision: RemineDecision, fresh: AnnNegatives, remined: np.ndarray,
                  n: int, band_max: int) -> tuple[AnnNegatives, np.ndarray, np.ndarray]:
    """Combine the reused anchors' old rows (re-indexed to the new pool) with the fresh rows of `remined` anchors.

    Args:
        old: the last state.
        decision: from `decide_remine` (not full).
        fresh: the miner's output for `remined` (its anchor/negative are new-pool positions; radius/band per
            remined anchor, in `remined` order).
        remined: (R,) new-pool positions that were re-mined.
        n: new pool size; band_max: band width.

    Returns:
        (all rows sorted by anchor then rank, radius (n,), band (n, band_max)), in new-pool positions.
    """
    new_of_old = np.full(len(old.keys), -1, np.int64)
    present = decision.old_pos >= 0
    new_of_old[decision.old_pos[present]] = np.flatnonzero(present)
    reused_new = np.flatnonzero(~decision.remine)
    reused_old = decision.old_pos[reused_new]
    keep_row = np.zeros(len(old.keys), bool)
    keep_row[reused_old] = True
    rows = keep_row[old.anchor]
    a = new_of_old[old.anchor[rows]]
    b = new_of_old[old.negative[rows]]
    if (b < 0).any():  # cannot happen: a removed negative is a changed band member, whose anchor was re-mined
        raise RuntimeError("incremental re-mine: a reused anchor points at a removed item")
    radius = np.full(n, -np.inf, np.float32)
    band = np.full((n, band_max), -1, np.int64)
    radius[reused_new] = old.radius[reused_old]
    ob = old.band[reused_old]
    band[reused_new] = np.where(ob >= 0, new_of_old[np.clip(ob, 0, None)], -1)
    radius[remined] = fresh.radius
    band[remined] = fresh.band
    anchor = np.concatenate([a, fresh.anchor])
    negative = np.concatenate([b, fresh.negative])
    score = np.concatenate([old.score[rows], fresh.score])
    rank = np.concatenate([old.rank[rows], fresh.rank])
    order = np.lexsort((rank, anchor))
    merged = AnnNegatives(anchor[order], negative[order], score[order], rank[order], dict(fresh.counts))
    return merged, radius, band


def positive_signatures(positives: Any, group_key_of_code: np.ndarray) -> np.ndarray:
    """(N,) uint64 signature of each anchor's positive-group set, from stable group keys (codes are renumbered)."""
    from visprep.mining.keys import signature_sum

    return signature_sum(group_key_of_code[positives.groups], positives.indptr)


def mine_with_state(vectors: np.ndarray, *, group: np.ndarray, positives: Any, s_pos: np.ndarray, keys: np.ndarray,
                    group_key: np.ndarray, pos_sig: np.ndarray, params: dict[str, Any], old: AnnState | None,
                    band_max: int, full_fraction: float = 0.5, **miner: Any
                    ) -> tuple[AnnNegatives, AnnState, RemineDecision]:
    """Mine one pool's ANN negatives, re-mining only what changed since `old` (None: everything).

    Args:
        vectors, group, positives, s_pos: as `mine_ann_negatives`.
        keys, group_key, pos_sig: (N,) uint64 stable keys of the items, their group ids and positive sets.
        params: the parameters the result depends on (stored; a change forces a full re-mine).
        old: the previous state of this pool.
        band_max: the hardness band's upper rank (also passed to the miner).
        full_fraction: see `decide_remine`.
        **miner: the other keyword arguments of `mine_ann_negatives` (k, skip_top, guard, search, seed, ...).

    Returns:
        (rows sorted by anchor then rank, the new state to save, the decision with its counts).
    """
    from visprep.mining.ann import mine_ann_negatives

    vec_fp = vector_fingerprints(vectors)
    decision = decide_remine(old, params, keys=keys, vectors=vectors, vec_fp=vec_fp, group_key=group_key,
                             pos_sig=pos_sig, s_pos=s_pos, full_fraction=full_fraction)
    remined = np.flatnonzero(decision.remine)
    res = mine_ann_negatives(vectors, group=group, positives=positives, s_pos=s_pos, band_max=band_max,
                             item_keys=keys, anchors=remined, keep_band=True, **miner)
    if decision.full:
        order = np.lexsort((res.rank, res.anchor))
        res = AnnNegatives(res.anchor[order], res.negative[order], res.score[order], res.rank[order], res.counts,
                           res.radius, res.band)
        radius, band = res.radius, res.band
    else:
        res, radius, band = merge_results(old, decision, res, remined, len(keys), band_max)
    state = AnnState(params=params, keys=keys, vec_fp=vec_fp, group_key=group_key, pos_sig=pos_sig, s_pos=s_pos,
                     radius=radius, band=band, anchor=res.anchor, negative=res.negative, score=res.score,
                     rank=res.rank)
    decision.counts.update(remined=len(remined), reused=len(keys) - len(remined), full_remines=int(decision.full))
    return res, state, decision
