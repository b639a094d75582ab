"""Near-duplicate products: visprep dedup vs imagededup's PHash `find_duplicates`, in the same run.

1. Quality on `visprep.dedup.benchset` (real photos, known near duplicates under new SKUs with reworded titles, and
   look-alikes with the same title and a different real photo): pairwise precision, recall, share of look-alike pairs
   merged, time. imagededup (hashing only; its CNN module needs torchvision) runs in its own venv as a subprocess:
   `python -m venv benchmarks/.work/imagededup-venv && benchmarks/.work/imagededup-venv/bin/pip install --no-deps
   imagededup && benchmarks/.work/imagededup-venv/bin/pip install numpy pillow scipy pywavelets tqdm scikit-learn`.
2. Scaling: pHash codes derived from the benchmark's real codes (bit-flipped copies, so they cluster like real ones),
   N = 5k, 10k, 20k for both; 100k for visprep (imagededup extrapolated as N²); the Hamming index alone at 1M codes
   with its peak RSS (measured in a child process).

Usage: python benchmarks/bench_dedup.py [--base 1000] [--skip-1m]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from visprep.dedup.benchset import build_dedup_benchmark
from visprep.dedup.groups import connected_groups
from visprep.dedup.hamming import mih_radius_pairs
from visprep.dedup.pairs import DedupParams, find_duplicates
from visprep.images.inspect import inspect_image

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work" / "dedup"
IMAGEDEDUP_PY = ROOT / "benchmarks" / ".work" / "imagededup-venv" / "bin" / "python"

# imagededup.methods imports its CNN module and models (torch/torchvision) and a matplotlib plotter: stub them.
_RUNNER = r"""
import json, sys, time, types
for name in ("imagededup.methods.cnn", "imagededup.utils.plotter", "imagededup.utils.models"):
    stub = types.ModuleType(name); stub.CNN = stub.CustomModel = stub.plot_duplicates = None; sys.modules[name] = stub
from imagededup.methods.hashing import PHash
args = json.loads(sys.argv[1])
ph = PHash(verbose=False)
out = {}
if args["mode"] == "images":
    t = time.perf_counter(); enc = ph.encode_images(image_dir=args["dir"]); out["encode_s"] = time.perf_counter() - t
    out["runs"] = {}
    for thr in args["thresholds"]:
        t = time.perf_counter(); d = ph.find_duplicates(encoding_map=enc, max_distance_threshold=thr)
        out["runs"][str(thr)] = {"s": time.perf_counter() - t,
                                 "pairs": sorted({tuple(sorted((k, v))) for k, vs in d.items() for v in vs})}
else:
    enc = json.load(open(args["codes"]))
    t = time.perf_counter(); d = ph.find_duplicates(encoding_map=enc, max_distance_threshold=args["threshold"])
    out["find_s"] = time.perf_counter() - t
    out["pairs"] = sum(len(v) for v in d.values()) // 2
print(json.dumps(out))
"""


def imagededup(args: dict) -> dict | None:
    if not IMAGEDEDUP_PY.exists():
        print(f"imagededup venv missing ({IMAGEDEDUP_PY}); see this file's docstring", file=sys.stderr)
        return None
    done = subprocess.run([str(IMAGEDEDUP_PY), "-c", _RUNNER, json.dumps(args)], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def scores(pred_pairs: set[tuple[str, str]], bench) -> dict:
    truth = {tuple(sorted((a, b))) for a, b, _ in bench.duplicate_pairs}
    looks = {tuple(sorted(p)) for p in bench.lookalike_pairs}
    tp = len(pred_pairs & truth)
    return {"precision": round(tp / max(len(pred_pairs), 1), 3), "recall": round(tp / len(truth), 3),
            "lookalikes_merged": round(len(pred_pairs & looks) / max(len(looks), 1), 3),
            "predicted_pairs": len(pred_pairs)}


def group_pairs(ids: list[str], labels: np.ndarray) -> set[tuple[str, str]]:
    members: dict[int, list[str]] = {}
    for p, g in zip(ids, labels.tolist()):
        members.setdefault(g, []).append(p)
    return {tuple(sorted((m[x], m[y]))) for m in members.values() if len(m) > 1
            for x in range(len(m)) for y in range(x + 1, len(m))}


RULES = {
    "default: identical or (near<=6 and title)": DedupParams(),
    "identical or (near<=8 and title)": DedupParams(image_radius=8),
    "identical or (near<=6 and title) or (similar<=12 and title)": DedupParams(
        rule="identical_image or (image_near and title_similar) or (image_similar and title_similar)",
        image_similar_radius=12),
    "identical or (similar<=16 and title)": DedupParams(
        rule="identical_image or (image_near and title_similar) or (image_similar and title_similar)",
        image_similar_radius=16),
    "image only: near<=6": DedupParams(rule="identical_image or image_near"),
}


def quality(n_base: int) -> dict:
    bench = build_dedup_benchmark(n_base, seed=0)
    img_dir = WORK / f"images-{n_base}"
    img_dir.mkdir(parents=True, exist_ok=True)
    for f in img_dir.glob("*.jpg"):
        f.unlink()
    for p, data in zip(bench.product_ids, bench.images):
        (img_dir / f"{p}.jpg").write_bytes(data)
    t = time.perf_counter()
    codes = np.array([inspect_image(b).phash for b in bench.images], np.uint64)
    hash_s = time.perf_counter() - t
    out = {"products": len(bench.product_ids), "duplicates": len(bench.duplicate_pairs),
           "lookalikes": len(bench.lookalike_pairs), "visprep_hash_s": round(hash_s, 2), "visprep": {},
           "by_transform": {}}
    for name, params in RULES.items():
        t = time.perf_counter()
        c = find_duplicates(bench.product_ids, bench.titles, bench.top_categories, np.arange(len(codes)),
                            bench.image_ids(), codes, params=params)
        labels = connected_groups(len(codes), c.a[c.accepted], c.b[c.accepted])
        secs = time.perf_counter() - t
        out["visprep"][name] = {**scores(group_pairs(bench.product_ids, labels), bench), "s": round(secs, 3)}
        gid = dict(zip(bench.product_ids, labels.tolist()))
        out["by_transform"][name] = {
            tr: round(float(np.mean([gid[a] == gid[b] for a, b, t2 in bench.duplicate_pairs if t2 == tr])), 2)
            for tr in sorted({t2 for _, _, t2 in bench.duplicate_pairs})}
    r = imagededup({"mode": "images", "dir": str(img_dir), "thresholds": [2, 6, 10, 14]})
    if r:
        out["imagededup_encode_s"] = round(r["encode_s"], 2)
        out["imagededup"] = {}
        for thr, run in r["runs"].items():
            pairs = {tuple(sorted((a[:-4], b[:-4]))) for a, b in run["pairs"]}
            out["imagededup"][f"PHash find_duplicates max_distance={thr}"] = {**scores(pairs, bench),
                                                                            "s": round(run["s"], 3)}
    out["_codes"] = codes
    out["_bench"] = bench
    return out


def derived_codes(real: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` codes: real ones and copies of them with 1..12 random bits flipped (real pHashes' clustering kept)."""
    base = real[rng.integers(0, len(real), n)]
    flips = np.zeros(n, np.uint64)
    k = rng.integers(1, 13, n)
    for step in range(12):
        use = k > step
        flips[use] ^= np.uint64(1) << rng.integers(0, 64, int(use.sum())).astype(np.uint64)
    return base ^ flips


def scaling(real: np.ndarray, bench, sizes: list[int], imagededup_sizes: list[int], *,
            distinct_titles: bool = False) -> list[dict]:
    """Time both at each size. Titles are drawn from the benchmark's ~N/2 titles; with `distinct_titles` each gets a
    3-word random model name from a 5,000-word pool, as titles in a real catalog mostly differ (the pool-only titles
    repeat each title N/2000 times, so title candidates grow as N²)."""
    rng = np.random.default_rng(1)
    rows = []
    pool = [f"w{k}" for k in range(5000)]
    for n in sizes:
        codes = derived_codes(real, n, rng)
        pick = rng.integers(0, len(bench.titles), n)
        titles = [bench.titles[k] for k in pick]
        if distinct_titles:
            words = rng.integers(0, len(pool), (n, 3))
            titles = [f"{t} {pool[a]} {pool[b]} {pool[c]}" for t, (a, b, c) in zip(titles, words.tolist())]
        tops = [bench.top_categories[k] for k in pick]
        ids = [f"P{k}" for k in range(n)]
        t = time.perf_counter()
        c = find_duplicates(ids, titles, tops, np.arange(n), ids, codes, params=DedupParams())
        connected_groups(n, c.a[c.accepted], c.b[c.accepted])
        ours = time.perf_counter() - t
        t = time.perf_counter()
        mih_radius_pairs(np.unique(codes), 6)
        index_s = time.perf_counter() - t
        row = {"n": n, "distinct_titles": distinct_titles, "visprep_dedup_s": round(ours, 2), "visprep_index_s": round(index_s, 2),
               "candidate_pairs": c.counts["candidate_pairs"]}
        if n in imagededup_sizes:
            path = WORK / f"codes-{n}.json"
            path.write_text(json.dumps({f"P{k}": f"{int(x):016x}" for k, x in enumerate(codes)}))
            r = imagededup({"mode": "codes", "codes": str(path), "threshold": 6})
            if r:
                row["imagededup_find_s"] = round(r["find_s"], 2)
                row["speedup"] = round(r["find_s"] / ours, 1)
        rows.append(row)
        print(row, flush=True)
    return rows


_ONE_M = r"""
import json, resource, sys, time
import numpy as np
from visprep.dedup.hamming import mih_radius_pairs, plan_blocks
codes = np.load(sys.argv[1])
out = {}
for r in (4, 6, 8):
    t = time.perf_counter(); m = plan_blocks(codes, r); i, j, d = mih_radius_pairs(codes, r, blocks=m)
    out[r] = {"s": round(time.perf_counter() - t, 1), "blocks": m, "pairs": int(len(i))}
out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print(json.dumps(out))
"""


def one_million(real: np.ndarray) -> dict:
    """1M codes: the real ones, 20 % bit-flipped (1..8 bits) copies of codes in the set, the rest uniform random.

    (Deriving all 1M from the ~2,000 real codes — 500 flipped copies of each — makes tens of millions of true pairs
    within 8 bits; that run was stopped after 8 minutes.)"""
    rng = np.random.default_rng(2)
    n = 1_000_000
    codes = rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n, dtype=np.uint64)
    codes[: len(real)] = real
    k = n // 5
    src = rng.integers(0, n - k, k)
    flips = np.zeros(k, np.uint64)
    nflip = rng.integers(1, 9, k)
    for step in range(8):
        use = nflip > step
        flips[use] ^= np.uint64(1) << rng.integers(0, 64, int(use.sum())).astype(np.uint64)
    codes[n - k :] = codes[src] ^ flips
    codes = np.unique(codes)
    path = WORK / "codes-1m.npy"
    np.save(path, codes)
    done = subprocess.run([sys.executable, "-c", _ONE_M, str(path)], capture_output=True, text=True, check=True)
    return {"distinct_codes": len(codes), **json.loads(done.stdout.strip().splitlines()[-1])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", type=int, default=1000)
    ap.add_argument("--skip-1m", action="store_true")
    ap.add_argument("--sizes", default="5000,10000,20000,100000")
    ap.add_argument("--imagededup-sizes", default="5000,10000,20000")
    ap.add_argument("--distinct-titles", action="store_true")
    ap.add_argument("--skip-quality", action="store_true", help="build the set for its codes, skip the comparison")
    ap.add_argument("--only-1m", action="store_true", help="only the 1M-code index run")
    a = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    if a.only_1m:
        bench = build_dedup_benchmark(a.base, seed=0)
        result = one_million(np.array([inspect_image(b).phash for b in bench.images], np.uint64))
        print(result)
        (WORK / "result-1m.json").write_text(json.dumps(result, indent=2))
        return
    q = quality(a.base)
    codes, bench = q.pop("_codes"), q.pop("_bench")
    print(json.dumps(q, indent=2), flush=True)
    result = {"quality": q, "scaling": scaling(codes, bench, [int(x) for x in a.sizes.split(",")],
                                               [int(x) for x in a.imagededup_sizes.split(",") if x],
                                               distinct_titles=a.distinct_titles)}
    if not a.skip_1m:
        result["index_1m"] = one_million(codes)
        print(result["index_1m"], flush=True)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    (WORK / f"result{'-distinct' if a.distinct_titles else ''}.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {WORK / 'result.json'}")


if __name__ == "__main__":
    main()
