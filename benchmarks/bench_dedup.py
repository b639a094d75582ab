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
import datetime as dt
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
from visprep.dedup.candidates import DedupParams, find_duplicates
from visprep.dedup.visual import Signatures
from visprep.images.facts import inspect_image

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


OLD = "identical_image or (image_near and title_similar)"
DEFAULT = "default: identical or (match<=6 [plain|trimmed|centre pHash] and title>=0.75), vetoes"
RULES = {  # name -> (params, image signatures: "stored" by inspect, "decode"d in dedup, or None)
    DEFAULT: (DedupParams(), "stored"),
    "default, signatures decoded in dedup (fallback for rows inspected before they existed)": (DedupParams(),
                                                                                               "decode"),
    "default without colour veto": (DedupParams(color_veto=False), "stored"),
    "default, title>=0.85": (DedupParams(title_threshold=0.85), "stored"),
    "no images (plain pHash only; declared colours only)": (DedupParams(), None),
    "previous default: identical or (near<=6 and title>=0.85)": (DedupParams(rule=OLD, title_threshold=0.85), None),
    "image only: identical or near<=6": (DedupParams(rule="identical_image or image_near"), None),
}
EMB = "identical_image or ((image_match or embedding_similar) and title_similar)"
EMBEDDING_RULES = {  # the optional embedding signal (EfficientNet-Lite0 vectors of the set's images)
    "default + embedding_similar (cos>=0.9): identical or ((match or embedding) and title>=0.75), vetoes":
        (DedupParams(rule=EMB, embedding_threshold=0.9), "stored"),
    "default + embedding_similar (cos>=0.88)": (DedupParams(rule=EMB, embedding_threshold=0.88), "stored"),
}


def bench_vectors(bench) -> tuple[np.ndarray, float | None]:
    """EfficientNet-Lite0 vectors of the set's images (what `visprep embed` stores), cached under benchmarks/.work by
    the images' hashes; (vectors, seconds it took to embed them, None when cached)."""
    import hashlib

    key = hashlib.sha256("".join(bench.image_ids()).encode()).hexdigest()[:16]
    path = WORK / f"vectors-efficientnet-lite0-{key}.npy"
    if path.exists():
        return np.load(path), None
    from visprep.embed.efficientnet import EfficientNetLite0Embedder

    emb = EfficientNetLite0Embedder(threads=2)
    t = time.perf_counter()
    vecs = np.concatenate([emb.embed(bench.images[k : k + 64]) for k in range(0, len(bench.images), 64)])
    secs = time.perf_counter() - t
    np.save(path, vecs)
    return vecs, secs


def inspected(images: list[bytes]) -> tuple[np.ndarray, Signatures]:
    """pHash and signature of each image, as `inspect` stores them in the `images` table."""
    infos = [inspect_image(b) for b in images]
    return (np.array([x.phash for x in infos], np.uint64),
            Signatures(codes=np.array([x.signature_codes for x in infos], np.uint64),
                       color=np.array([x.fg_color for x in infos], np.float32), ok=np.ones(len(infos), bool)))


def quality(n_base: int, *, with_embeddings: bool = True) -> dict:
    bench = build_dedup_benchmark(n_base, seed=0)
    img_dir = WORK / f"images-{n_base}"
    img_dir.mkdir(parents=True, exist_ok=True)
    for f in img_dir.glob("*.jpg"):
        f.unlink()
    for p, data in zip(bench.product_ids, bench.images):
        (img_dir / f"{p}.jpg").write_bytes(data)
    t = time.perf_counter()
    codes, sigs = inspected(bench.images)
    hash_s = time.perf_counter() - t
    out = {"products": len(bench.product_ids), "duplicates": len(bench.duplicate_pairs),
           "lookalikes": len(bench.lookalike_pairs), "visprep_hash_s": round(hash_s, 2), "visprep": {},
           "by_transform": {}}
    rules = dict(RULES)
    vectors = None
    if with_embeddings:
        vectors, embed_s = bench_vectors(bench)
        out["embed_s"] = embed_s  # None: cached from an earlier run
        rules.update(EMBEDDING_RULES)
    for name, (params, images) in rules.items():
        t = time.perf_counter()
        c = find_duplicates(bench.product_ids, bench.titles, bench.top_categories, np.arange(len(codes)),
                            bench.image_ids(), codes, params=params,
                            image_loader=bench.images.__getitem__ if images == "decode" else None,
                            signatures=sigs if images == "stored" else None,
                            embeddings=(lambda rows: (vectors[rows], np.ones(len(rows), bool)))
                            if vectors is not None and "embedding_similar" in params.rule else None)
        labels = connected_groups(len(codes), c.a[c.accepted], c.b[c.accepted])
        secs = time.perf_counter() - t
        out["visprep"][name] = {**scores(group_pairs(bench.product_ids, labels), bench), "s": round(secs, 3),
                                "images_decoded": c.counts.get("images_decoded", 0),
                                "trimmed_checked_pairs": c.counts["trimmed_checked_pairs"],
                                "color_vetoed_pairs": c.counts["color_vetoed_pairs"],
                                "embedding_checked_pairs": c.counts.get("embedding_checked_pairs", 0)}
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
            key = f"imagededup PHash find_duplicates max_distance={thr}"
            out["imagededup"][key] = {**scores(pairs, bench), "s": round(run["s"], 3)}
            out["by_transform"][key] = {
                tr: round(float(np.mean([tuple(sorted((a, b))) in pairs for a, b, t2 in bench.duplicate_pairs
                                         if t2 == tr])), 2) for tr in sorted({t2 for _, _, t2 in bench.duplicate_pairs})}
    out["_codes"] = codes
    out["_sigs"] = sigs
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


_STAGE_CHILD = r"""
import datetime as dt, json, os, resource, sys, time
import numpy as np, pyarrow as pa
sys.path.insert(0, sys.argv[4])
from bench_dedup import synthetic_catalog, score_synthetic
from visprep.workspace import Workspace
mode, n, root, brand_share, material = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[5]), sys.argv[6]
if mode == "build":  # its own process, so that the stage's peak RSS is the stage's
    t = time.perf_counter()
    ws, truth = synthetic_catalog(n, root, brand_share=brand_share, material=material)
    np.savez(os.path.join(root, "truth.npz"), **truth)
    print(json.dumps({"build_workspace_s": round(time.perf_counter() - t, 1),
                      "peak_rss_mib_build": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))
    sys.exit(0)
from visprep.dedup.phases import PHASE_PEAKS_ENV
from visprep.dedup.stage import dedup_stage
os.environ[PHASE_PEAKS_ENV] = "1"  # each phase's own peak; the stage's peak is their maximum
ws = Workspace(root)
truth = dict(np.load(os.path.join(root, "truth.npz")))
rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
t = time.perf_counter()
res = dedup_stage(ws)
stage_s = time.perf_counter() - t
out = {"n": n, "brand_share": brand_share, "image_checks": ws.config.dedup.image_checks,
       "stage_s": round(stage_s, 1), "phases_s": res.seconds, "peak_rss_mib_by_phase": res.peak_rss_mib,
       "counts": res.counts, "groups": res.groups, "products_in_groups": res.products_in_groups,
       "peak_rss_mib_before_stage": rss_before, "peak_rss_mib": max([rss_before, *res.peak_rss_mib.values()]),
       **score_synthetic(ws, truth)}
print(json.dumps(out))
"""


def signature_material(bench, codes: np.ndarray, sigs: Signatures) -> dict[str, np.ndarray]:
    """What the synthetic catalogs borrow from the real benchmark set, all computed by `inspect_image` from its real
    images: each base photo's foreground colour, and for every known near-duplicate pair (per transform) and
    look-alike pair the XOR of their four codes (plain pHash + the three signature codes) and their colour
    difference — how a real transform (or a different real photo) moves each code and the colour."""
    row = {p: k for k, p in enumerate(bench.product_ids)}
    four = np.concatenate([codes[:, None], sigs.codes], axis=1)  # (M, 4) uint64

    def deltas(pairs: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        a = np.array([row[x] for x, _ in pairs])
        b = np.array([row[y] for _, y in pairs])
        return four[a] ^ four[b], sigs.color[b] - sigs.color[a]

    dup_xor, dup_dcolor = deltas([(a, b) for a, b, _ in bench.duplicate_pairs])
    look_xor, look_dcolor = deltas(bench.lookalike_pairs)
    bases = [k for k, p in enumerate(bench.product_ids) if not p.startswith(("DUP-", "LOOK-"))]
    return {"base_color": sigs.color[bases], "dup_xor": dup_xor, "dup_dcolor": dup_dcolor,
            "dup_transform": np.array([t for _, _, t in bench.duplicate_pairs]), "look_xor": look_xor,
            "look_dcolor": look_dcolor}


def synthetic_catalog(n: int, root: str, *, brand_share: float = 1.0, material: str | None = None):
    """A workspace with `n` synthetic products (labelled so in the docs), one image row each, and the planted truth.

    Titles "Brand Colour Material Noun Model" from 500 brands, 30 colours, 20 materials, 30 nouns in 3 top
    categories and a 200k-word model pool; colours declared on 80 % of products, brands on `brand_share` of them (a
    required attribute in e.g. Google Merchant Center feeds; undeclared brands cost far more).

    Images: 70 % base products with uniform random codes (plain pHash and the three signature codes) and the
    foreground colour of a random real base photo; 20 % near-duplicate listings of a base product (its title
    reworded by `benchset.reword_title`, same brand and declared colour) whose codes and colour are the base's moved
    exactly as a real benchmark pair of that transform moved them (`signature_material`: XOR of the codes, colour
    difference); 10 % look-alikes (the base's title, brand and declared colour; codes and colour moved as a real
    look-alike pair's). No image bytes: `inspect` would store these columns, and `dedup` reads them
    (`image_checks` on). Returns (workspace, truth: base/dup/look-alike rows and each duplicate's transform)."""
    import shutil

    import pyarrow as pa

    from visprep.dedup.benchset import reword_title
    from visprep.images.signature import CODE_COLUMNS, COLOR_COLUMNS
    from visprep.workspace import Workspace

    shutil.rmtree(root, ignore_errors=True)
    real = dict(np.load(material)) if material else signature_material_default()
    rng = np.random.default_rng(3)
    brands = np.array([f"Brand{k}" for k in range(500)], dtype=object)
    colours = np.array([f"Colour{k}" for k in range(30)], dtype=object)
    materials = np.array([f"Material{k}" for k in range(20)], dtype=object)
    tops = np.array(["Apparel", "Footwear", "Accessories"], dtype=object)
    nouns = np.array([f"Noun{k}" for k in range(30)], dtype=object)
    models = np.array([f"m{k}" for k in range(200_000)], dtype=object)
    b, c, m, nn, md = (rng.integers(0, len(x), n) for x in (brands, colours, materials, nouns, models))
    codes = rng.integers(0, 2**63, (n, 4), dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, (n, 4), dtype=np.uint64)
    color = real["base_color"][rng.integers(0, len(real["base_color"]), n)].astype(np.float32)
    k_dup, k_look = n // 5, n // 10
    n_base = n - k_dup - k_look
    look = np.arange(n_base, n_base + k_look)
    dup = np.arange(n_base + k_look, n)
    look_src = rng.integers(0, n_base, k_look)
    dup_src = rng.integers(0, n_base, k_dup)
    for rows, src in ((look, look_src), (dup, dup_src)):
        for arr in (b, c, m, nn, md):
            arr[rows] = arr[src]
    pick = np.arange(k_dup) % len(real["dup_xor"])  # the real pairs in turn, so every transform is as common
    codes[dup] = codes[dup_src] ^ real["dup_xor"][pick]
    color[dup] = color[dup_src] + real["dup_dcolor"][pick]
    lpick = rng.integers(0, len(real["look_xor"]), k_look)
    codes[look] = codes[look_src] ^ real["look_xor"][lpick]
    color[look] = color[look_src] + real["look_dcolor"][lpick]
    titles = (brands[b] + " " + colours[c] + " " + materials[m] + " " + nouns[nn] + " " + models[md]).astype(object)
    titles[dup] = [reword_title(t, rng) for t in titles[dup].tolist()]
    ids = np.array([f"P{x:07d}" for x in range(n)], dtype=object)
    image_ids = [f"{x:064x}" for x in range(n)]
    declared = np.where(rng.random(n) < 0.8, colours[c], None)
    declared[dup], declared[look] = declared[dup_src], declared[look_src]
    declared_brand = np.where(rng.random(n) < brand_share, brands[b], None)
    declared_brand[dup], declared_brand[look] = declared_brand[dup_src], declared_brand[look_src]
    ws = Workspace(root)
    ws.set_config(ws.config.model_copy(update={"dedup": ws.config.dedup.model_copy(update={"image_checks": True})}))
    ws.write_table("products", pa.table({
        "product_id": ids.tolist(), "title": titles.tolist(), "category": tops[nn % 3].tolist(),
        "top_category": tops[nn % 3].tolist(), "color": declared.tolist(), "brand": declared_brand.tolist()}))
    urls = [f"file:///img/{x}.jpg" for x in ids.tolist()]
    ws.write_table("product_images", pa.table({"product_id": ids.tolist(), "position": np.zeros(n, np.int32),
                                               "url": urls, "source": ["catalog"] * n}))
    now = dt.datetime.now(dt.UTC)
    ws.write_table("urls", pa.table({"url": urls, "status": ["ok"] * n, "image_id": image_ids,
                                     "format": ["jpeg"] * n, "fetched_at": pa.array([now] * n)}))
    ws.write_table("images", pa.table({"image_id": image_ids, "status": ["ok"] * n,
                                       "phash": pa.array(codes[:, 0], pa.uint64()),
                                       **{c: pa.array(codes[:, 1 + k], pa.uint64()) for k, c in enumerate(CODE_COLUMNS)},
                                       **{c: pa.array(color[:, k], pa.float32()) for k, c in enumerate(COLOR_COLUMNS)}}))
    truth = {"dup": dup, "dup_src": dup_src, "dup_transform": real["dup_transform"][pick], "look": look,
             "look_src": look_src}
    return ws, truth


def signature_material_default() -> dict[str, np.ndarray]:
    """`signature_material` of a small benchmark set (for calls without a stored one: tests, quick runs)."""
    bench = build_dedup_benchmark(300, seed=0)
    codes, sigs = inspected(bench.images)
    return signature_material(bench, codes, sigs)


def score_synthetic(ws, truth: dict) -> dict:
    """Recall of the planted near duplicates (same group), per transform, and the share of look-alikes merged."""
    groups = ws.read_table("product_groups", ["product_id", "group_id"])
    pid = groups.column("product_id").to_numpy(zero_copy_only=False)
    gid = groups.column("group_id").to_numpy(zero_copy_only=False)
    # Product ids are "P%07d" of the row, so sorting them puts row k at position k.
    row_label = np.unique(gid, return_inverse=True)[1][np.argsort(pid, kind="stable")]
    same_dup = row_label[truth["dup"]] == row_label[truth["dup_src"]]
    same_look = row_label[truth["look"]] == row_label[truth["look_src"]]
    by = {t: round(float(same_dup[truth["dup_transform"] == t].mean()), 3)
          for t in sorted(set(truth["dup_transform"].tolist()))}
    return {"recall": round(float(same_dup.mean()), 3), "lookalikes_merged": round(float(same_look.mean()), 4),
            "recall_by_transform": by, "planted_duplicates": len(same_dup),
            "planted_lookalikes": len(same_look)}


def stage_scale(n: int, *, brand_share: float = 1.0, timeout_s: int = 600, memory_gib: int = 6,
                material: Path | None = None) -> dict:
    """The full dedup stage on a synthetic `n`-product workspace, in a child process (its peak RSS). The child gets
    `timeout_s` (the target is 10 minutes) and an address-space cap, so a miss is recorded, not a hung machine."""
    import resource as res

    def cap() -> None:
        res.setrlimit(res.RLIMIT_AS, (memory_gib << 30, memory_gib << 30))

    shutil_ws = WORK / f"ws-{n}"
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")}
    out: dict = {}
    try:
        for mode in ("build", "stage"):
            try:
                done = subprocess.run([sys.executable, "-c", _STAGE_CHILD, mode, str(n), str(shutil_ws),
                                       str(ROOT / "benchmarks"), str(brand_share), str(material or "")],
                                      capture_output=True, text=True, check=False, timeout=timeout_s, preexec_fn=cap,
                                      env=env)
            except subprocess.TimeoutExpired:
                return {"n": n, "brand_share": brand_share, "error": f"{mode} not finished within {timeout_s} s"}
            if done.returncode != 0:
                return {"n": n, "brand_share": brand_share,
                        "error": f"{mode}: exit {done.returncode}: {done.stderr.strip().splitlines()[-1][:300]}"}
            out.update(json.loads(done.stdout.strip().splitlines()[-1]))
    finally:
        __import__("shutil").rmtree(shutil_ws, ignore_errors=True)
    return out


RESULT = ROOT / "benchmarks" / ".work" / "bench_dedup.json"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small set, no 1M runs (run_all --quick)")
    ap.add_argument("--base", type=int, default=1000)
    ap.add_argument("--sizes", default="5000,10000,20000,100000")
    ap.add_argument("--imagededup-sizes", default="5000,10000,20000")
    ap.add_argument("--stage-sizes", default="1000000,1000000@0.8,300000@0.8",
                    help="full-stage runs on synthetic workspaces: N[@share of products declaring a brand]")
    ap.add_argument("--stage-timeout", type=int, default=600)
    ap.add_argument("--stage-memory-gib", type=int, default=6,
                    help="address-space cap of the stage child (the target is 4 GiB of RSS)")
    ap.add_argument("--no-embeddings", action="store_true",
                    help="skip the embedding-signal rows (embedding the set's images takes minutes when not cached)")
    ap.add_argument("--parts", default="quality,scaling,stage,index",
                    help="which parts to run; the others keep their stored result in bench_dedup.json")
    a = ap.parse_args()
    if a.quick:
        a.base, a.sizes, a.imagededup_sizes, a.stage_sizes = 300, "5000,10000", "5000,10000", "100000,100000@0.8"
        a.parts = a.parts.replace(",index", "")
    parts = set(a.parts.split(","))
    WORK.mkdir(parents=True, exist_ok=True)
    result = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    command = " ".join(["python benchmarks/bench_dedup.py", *sys.argv[1:]])
    result["command"] = command
    result.setdefault("commands", {}).update({part: command for part in parts})
    need_set = "quality" not in parts and parts & {"scaling", "index"}
    bench = build_dedup_benchmark(a.base, seed=0) if need_set else None
    codes = sigs = None
    if "quality" in parts:
        q = quality(a.base, with_embeddings=not (a.quick or a.no_embeddings))
        codes, sigs, bench = q.pop("_codes"), q.pop("_sigs"), q.pop("_bench")
        result["quality"] = q
        print(json.dumps(q, indent=2), flush=True)
    if codes is None and bench is not None:
        codes, sigs = inspected(bench.images)
    if "scaling" in parts:
        result["scaling"] = scaling(codes, bench, [int(x) for x in a.sizes.split(",")],
                                    [int(x) for x in a.imagededup_sizes.split(",") if x], distinct_titles=True)
        RESULT.write_text(json.dumps(result, indent=2))
    if "index" in parts:
        result["index_1m"] = one_million(codes)
        RESULT.write_text(json.dumps(result, indent=2))
    if "stage" in parts:
        if codes is None:  # the stage part alone: the real signatures come from the set's images
            bench = build_dedup_benchmark(a.base, seed=0)
            codes, sigs = inspected(bench.images)
        material = WORK / "signature-material.npz"
        np.savez(material, **signature_material(bench, codes, sigs))
        result["stage"] = []
        for spec in [x for x in a.stage_sizes.split(",") if x]:
            n, _, share = spec.partition("@")
            row = stage_scale(int(n), brand_share=float(share or 1.0), timeout_s=a.stage_timeout, material=material,
                              memory_gib=a.stage_memory_gib)
            print(row, flush=True)
            result["stage"].append(row)
            RESULT.write_text(json.dumps(result, indent=2))
    result["peak_rss_mib_parent"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    RESULT.write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULT}")


TITLE = "Near-duplicate products (dedup)"


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def section(result: dict) -> list[str]:
    """Markdown lines of this benchmark's section in docs/benchmarks.md."""
    commands = sorted(set((result.get("commands") or {"all": result.get("command", "")}).values()))
    lines = [(" and ".join(f"`{c}`" for c in commands) + " — 2 shared cores. Targets: recall ≥ 0.9 "
              "with ≤ 5 % of look-alike pairs merged; ≥ 20× faster than imagededup PHash `find_duplicates` at 100k; "
              "the full stage on 1M products in < 10 min within 4 GiB."), ""]
    q = result.get("quality")
    if q:
        lines += [(f"Quality: {q['products']} products ({q['duplicates']} known near duplicates, {q['lookalikes']} "
                   "look-alikes; `visprep.dedup.benchset`). visprep scored over its groups (closure), imagededup over "
                   "the pairs it returns."), "",
                  "| method | precision | recall | look-alikes merged | time s | target |", "|---|---|---|---|---|---|"]
        rows = [(k, v) for k, v in q["visprep"].items()] + [(k, v) for k, v in q.get("imagededup", {}).items()]
        for name, v in rows:
            met = v["recall"] >= 0.9 and v["lookalikes_merged"] <= 0.05
            lines.append(f"| {name} | {v['precision']:.3f} | {v['recall']:.3f} | {_pct(v['lookalikes_merged'])} | "
                         f"{v['s']:.1f} | {'met' if met else 'missed'} |")
        embed = ""
        if "embed_s" in q:
            embed = ("; EfficientNet-Lite0 vectors for the embedding rows: "
                     + (f"{q['embed_s']:.0f} s" if q["embed_s"] is not None else "cached from an earlier run"))
        lines += ["", (f"visprep inspect (pHash + signature) of all images: {q['visprep_hash_s']} s; imagededup "
                       f"encode: {q.get('imagededup_encode_s', '—')} s{embed}. Recall by transform:"), "",
                  "| method | " + " | ".join(sorted(next(iter(q["by_transform"].values())))) + " |",
                  "|---|" + "---|" * len(next(iter(q["by_transform"].values())))]
        for name, bt in q["by_transform"].items():
            lines.append(f"| {name} | " + " | ".join(f"{bt[t]:.2f}" for t in sorted(bt)) + " |")
    sc = result.get("scaling")
    if sc:
        lines += ["", ("Scaling (pHash codes derived from the set's real codes by 1–12 bit flips; titles one of the "
                       "set's plus a 3-word model name; no image bytes, so plain pHash only):"), "",
                  "| N | visprep find_duplicates + groups s | Hamming index s | candidates | imagededup s | ratio |",
                  "|---|---|---|---|---|---|"]
        by_n = {r["n"]: r for r in sc}
        measured = [r for r in sc if "imagededup_find_s" in r]
        for r in sc:
            if "imagededup_find_s" in r:
                ide, ratio = f"{r['imagededup_find_s']:.1f}", f"{r['speedup']:.0f}×"
            elif measured:
                big = max(measured, key=lambda x: x["n"])
                est = big["imagededup_find_s"] * (r["n"] / big["n"]) ** 2
                ide, ratio = f"≈ {est:.0f} (N² from {big['n']})", f"≈ {est / r['visprep_dedup_s']:.0f}×"
            else:
                ide, ratio = "—", "—"
            lines.append(f"| {r['n']:,} | {r['visprep_dedup_s']} | {r['visprep_index_s']} | "
                         f"{r['candidate_pairs']:,} | {ide} | {ratio} |")
        if 100_000 in by_n and measured:
            big = max(measured, key=lambda x: x["n"])
            est = big["imagededup_find_s"] * (100_000 / big["n"]) ** 2
            ratio = est / by_n[100_000]["visprep_dedup_s"]
            lines.append(f"\nAt 100k: ≈ {ratio:.0f}× (imagededup extrapolated) — target ≥ 20×: "
                         f"{'met' if ratio >= 20 else 'missed'}.")
    for row in result.get("stage", []):
        if "error" in row:
            lines += ["", (f"Full `dedup_stage` on a synthetic {row['n']:,}-product workspace "
                           f"({100 * row.get('brand_share', 1):.0f} % brands declared): **failed — "
                           f"{row['error']}** (target: < 600 s within 4 GiB: missed).")]
            continue
        ok = row["stage_s"] < 600 and row["peak_rss_mib"] < 4096
        checks = row.get("image_checks", False)
        what = ("synthetic titles and codes; the signatures stored in `images` (no image bytes), near duplicates and "
                "look-alikes moved as real pairs of the benchmark set were: `bench_dedup.synthetic_catalog`; "
                "image checks on" if checks else
                "synthetic codes and titles, no image bytes, image checks off: `bench_dedup.synthetic_catalog`")
        lines += ["", f"Full `dedup_stage` on a synthetic {row['n']:,}-product workspace "
                  f"({100 * row.get('brand_share', 1):.0f} % brands declared; {what}): "
                  f"**{row['stage_s']} s, peak RSS {row['peak_rss_mib']} MiB** "
                  + ("(the stage's own process; the workspace was built in another)"
                     if "peak_rss_mib_by_phase" in row else
                     f"(the child also built the workspace: {row['peak_rss_mib_before_stage']} MiB before the stage)")
                  + (f" — target < 600 s and < 4096 MiB at 1M: {'met' if ok else 'missed'}" if row["n"] >= 1_000_000
                     else "") + ". Phases (s): "
                  + ", ".join(f"{k} {v}" for k, v in row["phases_s"].items())
                  + ("; peak RSS per phase (MiB): " + ", ".join(f"{k} {v}" for k, v in
                                                                row["peak_rss_mib_by_phase"].items())
                     if "peak_rss_mib_by_phase" in row else "")
                  + f". Candidates {row['counts']['candidate_pairs']:,}, accepted {row['counts']['accepted_pairs']:,}"
                  f", groups {row['groups']:,}."]
        if "recall" in row:
            c = row["counts"]
            lines[-1] += (f" Planted truth: recall **{row['recall']:.3f}** over {row['planted_duplicates']:,} near "
                          f"duplicates ({', '.join(f'{t} {v:.2f}' for t, v in row['recall_by_transform'].items())}), "
                          f"look-alikes merged **{_pct(row['lookalikes_merged'])}** of {row['planted_lookalikes']:,}; "
                          f"pairs checked with the signatures {c.get('trimmed_checked_pairs', 0):,} (crop/border "
                          f"hashes) and {c.get('color_checked_pairs', 0):,} (colour), signatures read from the table "
                          f"{c.get('signatures_stored', 0):,}, images decoded {c.get('images_decoded', 0):,}.")
    idx = result.get("index_1m")
    if idx:
        lines += ["", f"Hamming index alone on {idx['distinct_codes']:,} codes: "
                  + ", ".join(f"radius {r} {idx[r]['s']} s ({idx[r]['pairs']:,} pairs)" for r in ("4", "6", "8")
                              if r in idx) + f"; peak RSS {idx['peak_rss_mib']} MiB."]
    return lines


if __name__ == "__main__":
    main()
