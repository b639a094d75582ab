"""Mining throughput (anchors/s) and recall@k of the ANN candidates against exact search, with peak RSS.

Two data sets: a clustered synthetic set (default 1M x 512-d) and the 70,000 real Fashion-MNIST images (Debian's
dataset-fashion-mnist) embedded with the default embedder. Each mines ANN hard negatives for every anchor with the
production miner (`mine_ann_negatives`, `search="auto"`: the index and parameters users get at that scale), then
measures the exact baseline (FAISS IndexFlatIP, the same miner) on a random sample of anchors in the same run:
exact anchors/s is measured on the sample and its full-set time extrapolated (labelled so). Recall@k: for the
sampled anchors, the share of the exact top-k neighbours (self excluded) that the ANN index returns in its top-k.

    python benchmarks/bench_mining.py --quick                 # 50k synthetic (+ Fashion-MNIST when cached)
    python benchmarks/bench_mining.py                         # 1M synthetic + Fashion-MNIST 70k
    python benchmarks/bench_mining.py --only fmnist --embed-budget 840   # embed (resumable) and mine FMNIST

The Fashion-MNIST vectors are cached under benchmarks/.work/fmnist70k/ in chunks, so the embedding (slow on 2
shared cores) can be spread over several runs; a run stops embedding after --embed-budget seconds.
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import WORK, fmt_met, machine, write_result

from visprep.mining.ann import build_auto_index, build_search_index, mine_ann_negatives
from visprep.mining.guard import FalseNegativeGuard
from visprep.mining.positives import build_positive_sets

TITLE = "Mining (ANN hard negatives)"
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_SIZE = 32  # input side for the embedder here: 224 px would take hours on 2 shared cores (docs/mining.md)
CHUNK = 5000
TARGET_S, TARGET_RECALL = 15 * 60, 0.9


def rss_mb() -> int:
    """Peak RSS of this process so far, MB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def clustered(n: int, d: int, *, clusters: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors around `clusters` centres, and a product code (4 images per product, near each other)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d), dtype=np.float32)
    products = np.arange(n) // 4
    prod_vec = centres[rng.integers(0, clusters, products[-1] + 1)]
    prod_vec += 0.6 * rng.standard_normal(prod_vec.shape, dtype=np.float32)
    x = np.empty((n, d), np.float32)
    for s in range(0, n, 100_000):  # in blocks: no (n, d) float64 temporaries
        e = min(n, s + 100_000)
        block = prod_vec[products[s:e]] + 0.3 * rng.standard_normal((e - s, d), dtype=np.float32)
        x[s:e] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x, products


def fmnist_images() -> tuple[np.ndarray, np.ndarray]:
    """The 70,000 Fashion-MNIST images (train then t10k) and labels."""
    imgs, labels = [], []
    for part in ("train", "t10k"):
        with gzip.open(FMNIST_DIR / f"{part}-images-idx3-ubyte.gz") as f:
            imgs.append(np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28))
        with gzip.open(FMNIST_DIR / f"{part}-labels-idx1-ubyte.gz") as f:
            labels.append(np.frombuffer(f.read(), np.uint8, offset=8))
    return np.concatenate(imgs), np.concatenate(labels)


def fmnist_vectors(budget_s: float, *, threads: int = 2) -> tuple[np.ndarray | None, np.ndarray, dict]:
    """Embed (resumably, in cached chunks) and return the 70k vectors, labels and embedding facts; None if partial."""
    import torch

    from visprep.embed.registry import get_embedder

    torch.set_num_threads(threads)
    images, labels = fmnist_images()
    embedder = get_embedder("efficientnet-lite0")
    cache = WORK / "fmnist70k" / f"{embedder.model_id.replace('/', '_')}-s{FMNIST_SIZE}"
    cache.mkdir(parents=True, exist_ok=True)
    info_path = cache / "embed.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {"seconds": 0.0, "images": 0}
    t_start = time.perf_counter()
    chunks = range(0, len(images), CHUNK)
    for s in chunks:
        path = cache / f"chunk-{s // CHUNK:03d}.npy"
        if path.exists():
            continue
        if time.perf_counter() - t_start > budget_s:
            break
        t0 = time.perf_counter()
        vecs = np.concatenate([embedder.embed_pixels(images[b : b + 250], size=FMNIST_SIZE)
                               for b in range(s, min(s + CHUNK, len(images)), 250)])
        np.save(path.with_suffix(".tmp.npy"), vecs)
        path.with_suffix(".tmp.npy").replace(path)  # atomic: a killed run loses at most the chunk in progress
        info["seconds"] += time.perf_counter() - t0
        info["images"] += len(vecs)
        info_path.write_text(json.dumps(info))
        print(f"fmnist: embedded chunk {s // CHUNK} ({info['images'] / info['seconds']:.1f} img/s)", flush=True)
    done = [cache / f"chunk-{s // CHUNK:03d}.npy" for s in chunks]
    facts = {"model_id": embedder.model_id, "input_size": FMNIST_SIZE, "embedded_images": info["images"],
             "embed_images_per_s": round(info["images"] / info["seconds"], 1) if info["seconds"] else None,
             "chunks_cached": sum(p.exists() for p in done), "chunks": len(done)}
    if not all(p.exists() for p in done):
        return None, labels, facts
    return np.concatenate([np.load(p) for p in done]), labels, facts


def measure(x: np.ndarray, group: np.ndarray, *, k: int, per_anchor: int, sample_size: int, threads: int,
            labels: np.ndarray | None = None) -> dict:
    """Mine every anchor with search="auto", and the exact baseline on a sample; recall@k on the sample."""
    import faiss

    faiss.omp_set_num_threads(threads)
    n = len(x)
    pos = build_positive_sets(group, group)
    s_pos = np.full(n, np.nan)  # no positive scores: the relative guard is off, as the recall is about the search
    guard = FalseNegativeGuard(None, 0.95)
    sample = np.sort(np.random.default_rng(1).choice(n, size=min(sample_size, n), replace=False))
    out: dict = {"n": n, "d": int(x.shape[1]), "k": k, "negatives_per_anchor": per_anchor,
                 "recall_sample": len(sample), "rss_before_index_mb": rss_mb()}
    t0 = time.perf_counter()
    index, info = build_auto_index(x, k=k)  # what search="auto" builds, nprobe calibration included
    out["ann_build_s"] = round(time.perf_counter() - t0, 1)
    search = info["search"]
    out.update(search=search, search_options={k_: v for k_, v in info.items() if k_ not in ("search", "calibration")},
               calibration=info.get("calibration"), rss_after_index_mb=rss_mb())
    print(f"  {info} built in {out['ann_build_s']} s", flush=True)
    t0 = time.perf_counter()
    res = mine_ann_negatives(x, group=group, positives=pos, s_pos=s_pos, k=per_anchor, band_max=k, guard=guard,
                             index=index, seed=0)
    mine_s = time.perf_counter() - t0
    out.update(ann_mine_s=round(mine_s, 1), ann_anchors_per_s=round(n / mine_s),
               ann_total_s=round(mine_s + out["ann_build_s"], 1), ann_kept=res.counts["kept"],
               ann_anchors_short=res.counts["anchors_short"])
    print(f"  mined {n} anchors in {mine_s:.1f} s ({n / mine_s:.0f}/s)", flush=True)
    _, ann_ids = index.search(x[sample], k + 1)
    ann_rows = res.anchor
    sweep = {}
    if search == "ivf":  # the probes trade-off on the sample: search only (no mining), recall vs queries/s
        for nprobe in (1, 2, 4, 8, 16, 32):
            index.nprobe = nprobe
            t0 = time.perf_counter()
            _, ids = index.search(x[sample], k + 1)
            sweep[nprobe] = {"seconds": time.perf_counter() - t0, "ids": ids}
    del index

    exact = build_search_index(x, "exact")
    t0 = time.perf_counter()
    ex = mine_ann_negatives(x, group=group, positives=pos, s_pos=s_pos, k=per_anchor, band_max=k, guard=guard,
                            index=exact, anchors=sample, seed=0)
    exact_s = time.perf_counter() - t0
    _, exact_ids = exact.search(x[sample], k + 1)
    del exact
    def recall(ids: np.ndarray) -> list[float]:
        return [len(set(a[a != i][:k].tolist()) & set(b[b != i][:k].tolist())) / k
                for i, a, b in zip(sample, ids, exact_ids)]

    hits = recall(ann_ids)
    out["nprobe_sweep"] = [{"nprobe": p, "recall_at_k": round(float(np.mean(recall(v["ids"]))), 4),
                            "search_queries_per_s": round(len(sample) / v["seconds"])} for p, v in sweep.items()]
    out.update(exact_sample_s=round(exact_s, 2), exact_anchors_per_s=round(len(sample) / exact_s, 1),
               exact_full_s_extrapolated=round(n * exact_s / len(sample)),
               recall_at_k=round(float(np.mean(hits)), 4), recall_min=round(float(np.min(hits)), 3),
               speedup_vs_exact=round(n * exact_s / len(sample) / (mine_s + out["ann_build_s"]), 1),
               exact_kept=ex.counts["kept"], peak_rss_mb=rss_mb())
    if labels is not None:
        out["same_class_rate_of_negatives"] = round(float((labels[ann_rows] == labels[res.negative]).mean()), 4)
        out["same_class_rate_random_pair"] = round(float(np.sum((np.bincount(labels) / n) ** 2)), 4)
    print(f"  exact on {len(sample)}: {exact_s:.1f} s; recall@{k} {out['recall_at_k']}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--per-anchor", type=int, default=5, help="negatives kept per anchor (sampled from ranks 1..k)")
    ap.add_argument("--recall-sample", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=["synthetic", "fmnist"])
    ap.add_argument("--embed-budget", type=float, default=None, help="seconds of Fashion-MNIST embedding per run "
                                                                      "(default: 0 with --quick, else unlimited)")
    args = ap.parse_args()
    path = WORK / "bench_mining.json"
    previous = json.loads(path.read_text()) if path.exists() and args.only else {}
    out = {"machine": machine(), "command": "python benchmarks/bench_mining.py " + " ".join(sys.argv[1:]),
           "threads": args.threads}
    if args.only != "fmnist":
        n = 50_000 if args.quick else args.n
        print(f"synthetic: {n} x {args.d}", flush=True)
        t0 = time.perf_counter()
        x, product = clustered(n, args.d, clusters=max(16, n // 500))
        print(f"  generated in {time.perf_counter() - t0:.1f} s", flush=True)
        out["synthetic"] = measure(x, product, k=args.k, per_anchor=args.per_anchor,
                                   sample_size=args.recall_sample, threads=args.threads)
        out["synthetic"]["clusters"] = max(16, n // 500)
        del x
    elif "synthetic" in previous:
        out["synthetic"] = {**previous["synthetic"], "from_earlier_run": previous.get("command")}
    if args.only != "synthetic":
        budget = args.embed_budget if args.embed_budget is not None else (0 if args.quick else float("inf"))
        vecs, labels, facts = fmnist_vectors(budget, threads=args.threads)
        if vecs is None:
            out["fmnist"] = {"embedding": facts, "skipped": "vectors not all cached yet; rerun with --embed-budget"}
            print("fmnist:", out["fmnist"], flush=True)
        else:
            print(f"fmnist: {len(vecs)} x {vecs.shape[1]}", flush=True)
            out["fmnist"] = measure(vecs, np.arange(len(vecs)), k=args.k, per_anchor=args.per_anchor,
                                    sample_size=args.recall_sample, threads=args.threads, labels=labels)
            out["fmnist"]["embedding"] = facts
    elif "fmnist" in previous:
        out["fmnist"] = {**previous["fmnist"], "from_earlier_run": previous.get("command")}
    print(json.dumps(out, indent=1))
    write_result("bench_mining", out)


def section(result: dict) -> list[str]:
    """Markdown lines of the mining benchmark for docs/benchmarks.md."""
    intro = (f"`{result['command']}` — {result.get('threads', 2)} FAISS threads. Every anchor is mined with the "
             "production miner (`mine_ann_negatives`, `search=\"auto\"`: the index chosen by pool size), k = band "
             "of ranks 1..k, 5 negatives kept per anchor. The exact baseline (IndexFlatIP, the same miner) runs in "
             "the same run on a random sample of anchors; its full-set time is extrapolated from the sample. "
             "Recall@k = share of the exact top-k neighbours (self excluded) in the ANN top-k, on that sample.")
    header = ("| data | N x d | index | build s | mine s (all anchors) | ANN anchors/s | exact anchors/s (sample) "
              "| exact full s (extrapolated) | speed-up | recall@k | peak RSS MB | target |")
    lines = [intro, "", header, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in ("synthetic", "fmnist"):
        r = result.get(name)
        if not r or "skipped" in r:
            if r:
                lines.append(f"| {name} | — | — | — | — | — | — | — | — | — | — | {r['skipped']} |")
            continue
        opts = ", ".join(f"{k.removeprefix('ivf_')}={v}" for k, v in r["search_options"].items())
        met = None
        if name == "synthetic" and r["n"] >= 1_000_000:
            met = r["ann_total_s"] < TARGET_S and r["recall_at_k"] >= TARGET_RECALL
        label = "clustered synthetic" if name == "synthetic" else "Fashion-MNIST 70k"
        lines.append(f"| {label} | {r['n']:,} x {r['d']} | {r['search']} {opts} | {r['ann_build_s']} | "
                     f"{r['ann_mine_s']} | {r['ann_anchors_per_s']:,} | {r['exact_anchors_per_s']} "
                     f"(n={r['recall_sample']}) | {r['exact_full_s_extrapolated']:,} | {r['speedup_vs_exact']}x | "
                     f"{r['recall_at_k']} (k={r['k']}) | {r['peak_rss_mb']:,} | {fmt_met(met)} |")
    target = ("Target: 1M anchors (k=50) mined in under 15 min (build + mine) at recall@50 >= 0.9 on 2 cores. "
              "Build includes the nprobe calibration of `search=\"auto\"` (smallest power of two reaching recall@k "
              ">= 0.95 on 500 sampled anchors).")
    lines += ["", target]
    for name in ("synthetic", "fmnist"):
        sweep = (result.get(name) or {}).get("nprobe_sweep")
        if sweep:
            lines.append(f"IVF probes on the {name} sample (search only): " + "; ".join(
                f"nprobe {r['nprobe']}: recall {r['recall_at_k']}, {r['search_queries_per_s']:,} q/s" for r in sweep))
    for name in ("synthetic", "fmnist"):
        earlier = (result.get(name) or {}).get("from_earlier_run")
        if earlier:
            lines.append(f"The {name} row comes from an earlier run: `{earlier}`.")
    fm = result.get("fmnist") or {}
    emb = fm.get("embedding")
    if emb:
        lines.append(f"Fashion-MNIST vectors: {emb['model_id']} at {emb['input_size']} px input (not 224: see "
                     f"docs/mining.md), {emb['embed_images_per_s']} images/s while embedding.")
    if "same_class_rate_of_negatives" in fm:
        lines.append(f"Same-class share of the mined negatives (no guard on positives here): "
                     f"{fm['same_class_rate_of_negatives']} (random pair: {fm['same_class_rate_random_pair']}).")
    return lines


if __name__ == "__main__":
    main()
