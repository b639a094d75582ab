"""Exact (brute-force) search of the catalog: products ranked by their best image's similarity to a query."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

MAX_BLOCK_FLOATS = 1 << 26
"""Largest (queries × catalog images) similarity block computed at once."""


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalise the rows of `x` (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def rank_products(queries: np.ndarray, catalog: np.ndarray, catalog_products: Sequence[str], *, depth: int,
                  block_size: int = 1024, exclude: Sequence[np.ndarray] | None = None
                  ) -> Iterator[tuple[list[str], np.ndarray]]:
    """Yield, per query row, the top `depth` products (ids, best first) and their scores.

    Args:
        queries: (n_queries, d) float32 vectors (already normalised for cosine).
        catalog: (n_images, d) float32 image vectors.
        catalog_products: the product of each catalog row (a product with several images scores its best one).
        depth: products returned per query.
        block_size: queries scored at once; memory is block_size × n_images floats, and the block is shrunk so
            that this stays under `MAX_BLOCK_FLOATS` (256 MiB of float32).
        exclude: per query, catalog rows to ignore (e.g. the query's own image if it is in the catalog).

    Ties are broken by product id, so the ranking is deterministic.
    """
    products, prod_of_row = np.unique(np.asarray(catalog_products, dtype=object), return_inverse=True)
    order = np.argsort(prod_of_row, kind="stable")
    starts = np.searchsorted(prod_of_row[order], np.arange(len(products)))
    sorted_catalog = catalog[order]
    row_pos = np.empty(len(order), dtype=np.int64)
    row_pos[order] = np.arange(len(order))
    k = min(depth, len(products))
    block_size = max(1, min(block_size, MAX_BLOCK_FLOATS // max(1, len(catalog))))
    for b0 in range(0, len(queries), block_size):
        sims = queries[b0 : b0 + block_size] @ sorted_catalog.T  # (block, n_images)
        if exclude is not None:
            for i in range(sims.shape[0]):
                rows = exclude[b0 + i]
                if len(rows):
                    sims[i, row_pos[rows]] = -np.inf
        best = np.maximum.reduceat(sims, starts, axis=1) if len(products) else sims[:, :0]  # (block, n_products)
        if k == 0:
            for _ in range(sims.shape[0]):
                yield [], np.empty(0)
            continue
        # The k-th best score per row; every product at or above it is a candidate, so ties at the cut-off are
        # resolved by product id too (argpartition alone would pick among them arbitrarily).
        kth = -np.partition(-best, k - 1, axis=1)[:, k - 1]
        for i in range(best.shape[0]):
            cand = np.flatnonzero((best[i] >= kth[i]) & np.isfinite(best[i]))
            # Sort by score descending, then product id (products are sorted, so the index is the id order).
            cand = cand[np.lexsort((cand, -best[i, cand]))][:k]
            yield [str(p) for p in products[cand]], best[i, cand]
