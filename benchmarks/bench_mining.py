"""Mining throughput (anchors/s) and recall@k of the ANN candidates against exact search, on a clustered
synthetic set (the baseline, exact search, is measured in the same run). Peak RSS reported.

    python benchmarks/bench_mining.py --quick          # 20k x 512, a minute on 2 cores
    python benchmarks/bench_mining.py --n 1000000      # the issue's target size
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine, write_result

from visprep.embed.registry import l2_normalize
from visprep.mining.ann import build_search_index, mine_ann_negatives
from visprep.mining.guard import FalseNegativeGuard
from visprep.mining.positives import build_positive_sets


def clustered(n: int, d: int, *, clusters: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors around `clusters` centres, and a product code (4 images per product, near each other)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d)).astype(np.float32)
    products = np.arange(n) // 4
    prod_centre = centres[rng.integers(0, clusters, products.max() + 1)]
    prod_vec = prod_centre + 0.6 * rng.normal(size=prod_centre.shape).astype(np.float32)
    x = prod_vec[products] + 0.3 * rng.normal(size=(n, d)).astype(np.float32)
    return l2_normalize(x), products


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--recall-sample", type=int, default=2000)
    args = ap.parse_args()
    n = 20_000 if args.quick else args.n
    x, product = clustered(n, args.d, clusters=max(16, n // 500))
    pos = build_positive_sets(product, product)
    s_pos = np.full(n, np.nan)
    rng = np.random.default_rng(1)
    sample = rng.choice(n, size=min(args.recall_sample, n), replace=False)
    results = {}
    exact_ids = None
    for search in ("exact", "ivf", "hnsw"):
        t0 = time.perf_counter()
        index = build_search_index(x, search, ivf_nprobe=16, hnsw_ef_search=128)
        build = time.perf_counter() - t0
        _, ids = index.search(x[sample], args.k + 1)
        if search == "exact":
            exact_ids = ids
        recall = float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, exact_ids)]))
        t0 = time.perf_counter()
        res = mine_ann_negatives(x, group=product, positives=pos, s_pos=s_pos, k=5, band_max=args.k,
                                 guard=FalseNegativeGuard(None, 0.95), index=index, rng=rng)
        mine = time.perf_counter() - t0
        results[search] = {"build_s": round(build, 2), "mine_s": round(mine, 2), "anchors_per_s": round(n / mine),
                           f"recall@{args.k + 1}_vs_exact": round(recall, 4), "kept": res.counts["kept"]}
        print(search, results[search], flush=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"n": n, "d": args.d, "k": args.k, "results": results, "peak_rss_mb": round(peak_mb),
           "machine": machine()}
    for s in ("ivf", "hnsw"):
        out[f"{s}_speedup_vs_exact"] = round(results["exact"]["mine_s"] / (results[s]["mine_s"] + results[s]["build_s"]), 2)
    print(out)
    write_result("mining", out)


if __name__ == "__main__":
    main()
