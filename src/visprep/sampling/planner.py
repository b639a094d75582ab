"""The P x K batch planner.

A batch holds P classes (products) x K images. Per epoch:

1. **Cells.** Each product's images are shuffled and cut into cells of K; the last cell is topped up with repeats of
   the product's own images. Every image is in some cell, so every sample is covered each epoch (unlike
   pytorch-metric-learning's MPerClassSampler, #684).
2. **Over-sampling.** Category c holds n_c cells; its target share is n_c^(1/T) / sum n^(1/T) (T = temperature).
   A category below its share gets extra cells (fresh draws of its products, weighted by popularity when given);
   none loses cells, so coverage holds.
3. **Stratified order.** Cells are interleaved so that each category is spread evenly over the epoch
   (systematic sampling: cell j of category c gets the key (j + u_c) / m_c).
4. **Batches.** Cells fill batches in that order, skipping a cell whose product group is already in the batch (two
   products of one group in different classes would be false in-batch negatives); skipped cells go first into the
   next batch (a group with more cells than an epoch has batches lengthens the epoch). The tail is topped up with fresh cells of groups not yet in it, so every batch is exactly P x K.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BatchPlan:
    """One epoch's plan.

    Attributes:
        item: (B, P, K) int64 item indices.
        repeat: (B, P, K) bool: the slot repeats an item beyond the epoch's one covering visit (top-up,
            over-sampling, or last-batch filler).
    """

    item: np.ndarray
    repeat: np.ndarray

    @property
    def num_batches(self) -> int:
        """Batches in the epoch."""
        return int(self.item.shape[0])


def plan_epoch(product: np.ndarray, group: np.ndarray, category: np.ndarray, *, p: int, k: int,
               temperature: float = 1.0, weight: np.ndarray | None = None,
               rng: np.random.Generator) -> BatchPlan:
    """Plan one epoch of P x K batches over N items.

    Args:
        product: (N,) int64 class (product) code of each item.
        group: (N,) int64 product-group code; products of one group never share a batch.
        category: (N,) int64 stratum (top-level category) code.
        p: classes per batch; k: items per class.
        temperature: >= 1; 1 keeps natural category shares, larger flattens them (rare categories over-sampled).
        weight: (N,) per-item popularity weight (a product's weight is its first item's); extra cells are drawn
            in proportion. None: uniform.
        rng: the random generator.

    Returns:
        `BatchPlan`.

    Raises:
        ValueError: bad shapes or parameters, or fewer than `p` distinct groups.
    """
    product, group, category = (np.asarray(a, np.int64) for a in (product, group, category))
    n = len(product)
    if not (group.shape == category.shape == (n,)):
        raise ValueError(f"product, group and category must have the same length, got {n}, {len(group)}, "
                         f"{len(category)}")
    if p < 2 or k < 1:
        raise ValueError(f"need p >= 2 and k >= 1, got p={p}, k={k}")
    if temperature < 1:
        raise ValueError(f"temperature must be >= 1, got {temperature}")
    if weight is not None and (len(weight) != n or np.any(~np.isfinite(weight)) or np.any(np.asarray(weight) < 0)):
        raise ValueError("weight must be (N,) finite and >= 0")
    n_groups = len(np.unique(group))
    if n_groups < p:
        raise ValueError(f"a batch needs {p} distinct product groups, the data has {n_groups}")
    # Items of each product.
    order = np.argsort(product, kind="stable")
    prods, starts = np.unique(product[order], return_index=True)
    ends = np.append(starts[1:], n)
    members = [order[s:e] for s, e in zip(starts, ends)]
    prod_group = group[order[starts]]
    prod_cat = category[order[starts]]
    prod_w = np.ones(len(prods)) if weight is None else np.asarray(weight, float)[order[starts]]

    cells: list[np.ndarray] = []
    reps: list[np.ndarray] = []
    cell_prod: list[int] = []

    def new_cell(j: int, *, extra: bool) -> None:
        items = members[j]
        pick = rng.permutation(items)[:k]
        rep = np.full(len(pick), extra)
        if len(pick) < k:
            pick = np.concatenate([pick, rng.choice(items, k - len(pick))])
            rep = np.concatenate([rep, np.ones(k - len(rep), bool)])
        cells.append(pick)
        reps.append(rep)
        cell_prod.append(j)

    for j, items in enumerate(members):  # covering cells
        shuffled = rng.permutation(items)
        for s in range(0, len(items), k):
            chunk = shuffled[s : s + k]
            rep = np.zeros(k, bool)
            if len(chunk) < k:
                rep[len(chunk):] = True
                chunk = np.concatenate([chunk, rng.choice(items, k - len(chunk))])
            cells.append(chunk)
            reps.append(rep)
            cell_prod.append(j)
    cats = np.unique(prod_cat)
    cell_cat = prod_cat[np.array(cell_prod)]
    n_c = np.array([(cell_cat == c).sum() for c in cats], float)
    share = n_c ** (1.0 / temperature)
    share /= share.sum()
    target = np.maximum(n_c, np.round(share * n_c.sum())).astype(int)
    for c, want, have in zip(cats, target, n_c.astype(int)):
        if want > have:
            cand = np.flatnonzero(prod_cat == c)
            w = prod_w[cand]
            prob = w / w.sum() if w.sum() > 0 else None
            for j in rng.choice(cand, size=want - have, p=prob):
                new_cell(int(j), extra=True)
    cell_prod_arr = np.array(cell_prod)
    cell_cat = prod_cat[cell_prod_arr]
    cell_group = prod_group[cell_prod_arr]
    # Stratified interleave.
    keys = np.empty(len(cells))
    for c in cats:
        idx = np.flatnonzero(cell_cat == c)
        idx = rng.permutation(idx)
        keys[idx] = (np.arange(len(idx)) + rng.random()) / len(idx)
    ordered = np.lexsort((rng.random(len(cells)), keys)).tolist()
    pos = 0  # next cell of `ordered` not yet looked at
    deferred: list[int] = []  # cells skipped because their group was in the batch: first in line next time
    batches: list[list[int]] = []
    while deferred or pos < len(ordered):
        batch: list[int] = []
        seen: set[int] = set()
        skipped: list[int] = []
        for ci in deferred:
            g = int(cell_group[ci])
            if len(batch) < p and g not in seen:
                batch.append(ci)
                seen.add(g)
            else:
                skipped.append(ci)
        while len(batch) < p and pos < len(ordered):
            ci = ordered[pos]
            pos += 1
            g = int(cell_group[ci])
            if g in seen:
                skipped.append(ci)
            else:
                batch.append(ci)
                seen.add(g)
        deferred = skipped
        while len(batch) < p:  # the tail: top up with fresh cells of groups not yet in the batch
            free = np.flatnonzero(~np.isin(prod_group, list(seen)))
            w = prod_w[free]
            j = int(rng.choice(free, p=w / w.sum() if w.sum() > 0 else None))
            new_cell(j, extra=True)
            batch.append(len(cells) - 1)
            seen.add(int(prod_group[j]))
        batches.append(batch)
    cell_arr = np.stack(cells)
    rep_arr = np.stack(reps)
    idx = np.array(batches)
    return BatchPlan(item=cell_arr[idx], repeat=rep_arr[idx])
