"""`visprep experiment` with the full variant set on a larger real set: does visprep's data make a better model?

    PYTHONPATH=src python benchmarks/bench_experiment.py [--quick] [--products N] [--fresh]

The set: Debian's `dataset-fashion-mnist` train photos (real Zalando product images; `apt-get install
dataset-fashion-mnist`) rendered as catalog products by the demo's source writer (colour-variant families, 1-3
extra views each, shared listings, bad rows), `--products` of them (default 10,000 from about 5,300 garments), then
`visprep run` (fetch, inspect, embed with EfficientNet-Lite0 at the demo's 64-px crop, dedup, split, synth, pairs,
mine, sample, export).

Eval: demo judgments of new views of eval products (`build_demo_judgments`: background replaced, re-framed), here
also DEGRADED the way user photos are (Gaussian blur, sensor noise, under-exposure, JPEG quality 35), graded 4
(same product) / 3 (colour variant) / 2 (same category) / 1 / 0 by three noisy simulated raters.

Behaviour, so that +events, +debias and +user_photos have inputs (a seeded simulation, written as event files and
ingested by `visprep events`, never touching the eval split):
- "similar items" sessions on training products: a user views product A, then views B; B is a colour variant or a
  same-category product of A (the truly similar item) with probability 0.4, else a popular product drawn from a
  Zipf(1.1) popularity over the catalog (popularity bias: popular items get viewed regardless of similarity);
- visual searches with a user photo of a training product (a degraded new view, cleaned by `visprep queries`):
  ten results, the true product among them, clicked (and sometimes bought) with probability 0.8, a popular
  product clicked otherwise; the mix (`mix.fraction = 0.2`) links the photos to products.
Then `visprep experiment` (all variants, `--seeds` seeds, `--steps` steps) and the results table is stored.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import WORK, load_average, write_result

TITLE = "Experiment: what each preparation choice does to retrieval (full variant set, Fashion-MNIST products)"


def degrade(rgb: np.ndarray, rng: np.random.Generator, *, blur: tuple[float, float] = (0.6, 1.6)) -> bytes:
    """A user-photo-like JPEG of `rgb`: blur, sensor noise, exposure change, strong JPEG compression."""
    img = rgb.astype(np.float32)
    sigma = float(rng.uniform(*blur))
    img = cv2.GaussianBlur(img, (0, 0), sigma)
    img = img * float(rng.uniform(0.6, 1.05)) + float(rng.uniform(-20, 10))
    img = img + rng.normal(0, float(rng.uniform(3, 9)), img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 35])
    assert ok
    return jpg.tobytes()


def new_view(ws, image_id: str, fmt: str, rng: np.random.Generator) -> np.ndarray:
    """A new photo of a stored product image: background replaced and re-framed (as the demo queries are)."""
    from visprep.images.sniff import extension_for
    from visprep.synthetic.views import foreground_mask, reframe, replace_background

    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(ws.store.get(image_id, extension_for(fmt)), np.uint8),
                                    cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    view = replace_background(rgb, foreground_mask(rgb), kind=("solid", "gradient", "texture")[int(rng.integers(3))],
                              rng=rng).image
    return reframe(view, scale=float(rng.uniform(0.8, 1.15)), dx=float(rng.uniform(-0.06, 0.06)),
                   dy=float(rng.uniform(-0.05, 0.05)), pad_color=(235, 235, 235)).image


def build(root: Path, products: int, n_queries: int, n_user_photos: int, n_sessions: int) -> dict:
    """Write the sources, run the pipeline, the judgments, the user photos and the events; return timings."""
    from visprep.config import render_config
    from visprep.demo import demo_config, load_fashion_mnist_idx
    from visprep.demo.sources import write_demo_sources
    from visprep.pipeline import run_pipeline
    from visprep.workspace import Workspace

    t: dict = json.loads((root / "phases.json").read_text()) if (root / "phases.json").exists() else {}

    def done(phase: str) -> None:
        (root / "phases.json").write_text(json.dumps({**t, phase: True}))
        t[phase] = True

    ws = Workspace(root / "ws")
    if t.get("pipeline"):
        return _behaviour(ws, root, t, done, n_queries, n_user_photos, n_sessions)
    if ws.root.exists():
        shutil.rmtree(ws.root)
    ws.root.mkdir(parents=True)
    ws.config_path.write_text(render_config(demo_config()) + "\n")
    text = ws.config_path.read_text()
    text = text.replace("\nfraction = 0.0\n", "\nfraction = 0.2\n").replace(
        'nsfw = "nudenet"', 'nsfw = "none"')
    ws.config_path.write_text(text)
    ws = Workspace(ws.root)
    assert ws.config.mix.fraction == 0.2 and ws.config.queries.nsfw == "none"
    assert ws.config.split.fractions == {"train": 0.8, "eval": 0.2}  # the demo's
    t0 = time.perf_counter()
    subset = load_fashion_mnist_idx(limit=int(products / 1.8) + 200)
    src = write_demo_sources(root / "src", n_products=products, seed=0, subset=subset)
    t["sources_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_pipeline(ws, src.catalog_files)
    t["pipeline_s"] = time.perf_counter() - t0
    done("pipeline")
    return _behaviour(ws, root, t, done, n_queries, n_user_photos, n_sessions)


def _behaviour(ws, root: Path, t: dict, done, n_queries: int, n_user_photos: int, n_sessions: int) -> dict:
    """The judgments, the user photos and the events, on a workspace the pipeline has run on."""
    from visprep.events.stage import ingest_event_files
    from visprep.labels.demo import _hero_images, build_demo_judgments
    from visprep.labels.stage import labels_stage
    from visprep.pipeline import run_pipeline
    from visprep.queries.stage import queries_stage

    # Eval: new, degraded photos of eval products, judged by simulated raters.
    t0 = time.perf_counter()
    labels_csv = build_demo_judgments(ws, seed=0, n_queries=n_queries)
    rng = np.random.default_rng(1)
    for q in sorted((labels_csv.parent / "queries").glob("*.jpg")):
        rgb = cv2.cvtColor(cv2.imread(str(q)), cv2.COLOR_BGR2RGB)
        q.write_bytes(degrade(rgb, rng))
    labels_stage(ws, [labels_csv])
    run_pipeline(ws)  # the split pins judged products to eval
    t["labels_s"] = time.perf_counter() - t0
    photo_dir = root / "user_photos"
    if photo_dir.exists():
        shutil.rmtree(photo_dir)

    # User photos of training products and the behaviour log.
    t0 = time.perf_counter()
    splits = dict(zip(*(ws.read_table("splits")[c].to_pylist() for c in ("product_id", "split"))))
    prods = ws.read_table("products", ["product_id", "category", "attributes"]).to_pylist()
    train = sorted(p["product_id"] for p in prods if splits.get(p["product_id"]) == "train")
    heroes = _hero_images(ws)
    family: dict[str, list[str]] = {}
    category: dict[str, list[str]] = {}
    fam_of, cat_of = {}, {}
    for p in prods:
        if splits.get(p["product_id"]) != "train":
            continue
        f = json.loads(p["attributes"] or "{}").get("family_id")
        fam_of[p["product_id"]], cat_of[p["product_id"]] = f, p["category"]
        if f:
            family.setdefault(f, []).append(p["product_id"])
        category.setdefault(p["category"], []).append(p["product_id"])
    rng = np.random.default_rng(2)
    popular_order = rng.permutation(len(train))
    zipf = 1.0 / np.arange(1, len(train) + 1) ** 1.1
    zipf /= zipf.sum()

    def popular() -> str:
        return train[int(popular_order[rng.choice(len(train), p=zipf)])]

    photo_dir = root / "user_photos"
    photo_dir.mkdir()
    photo_of: dict[str, str] = {}
    for pid in rng.choice([p for p in train if p in heroes], size=min(n_user_photos, len(train)), replace=False):
        data = degrade(new_view(ws, *heroes[str(pid)], rng), rng, blur=(0.3, 1.0))  # most pass the blur gate
        path = photo_dir / f"{pid}.jpg"
        path.write_bytes(data)
        photo_of[str(pid)] = hashlib.sha256(data).hexdigest()
    qres = queries_stage(ws, sorted(str(p) for p in photo_dir.glob("*.jpg")))
    events, n = [], 0
    base_ts = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)

    def event(**kw: object) -> None:
        nonlocal n
        n += 1
        ts = (base_ts + datetime.timedelta(seconds=n)).isoformat().replace("+00:00", "Z")
        events.append({"event_id": f"e{n}", "ts": ts, **kw})

    for s in range(n_sessions):  # "similar items" browsing
        a = train[int(rng.integers(len(train)))]
        similar = [x for x in family.get(fam_of[a] or "", []) if x != a] or \
            [x for x in category[cat_of[a]] if x != a]
        if not similar:  # a category of one product (the OpenCV photos): nothing is similar to it
            continue
        b = similar[int(rng.integers(len(similar)))] if rng.random() < 0.4 else popular()
        if b == a:
            continue
        user = f"u{s % 5000}"
        event(user_id=user, session_id=f"s{s}", type="view", product_id=a)
        event(user_id=user, session_id=f"s{s}", type="view", product_id=b)
    for k, (pid, sha) in enumerate(sorted(photo_of.items())):  # visual searches with the user photos
        user, session, query = f"v{k}", f"vs{k}", f"img-{sha[:16]}"
        shown = [popular() for _ in range(9)]
        pos = int(rng.integers(0, 10))
        shown.insert(pos, pid)
        event(user_id=user, session_id=session, type="search", query_id=query, query_image_id=sha)
        for r, p in enumerate(shown, start=1):
            event(user_id=user, session_id=session, type="impression", query_id=query, query_image_id=sha,
                  product_id=p, position=r)
        hit = pid if rng.random() < 0.8 else shown[int(rng.integers(0, 10))]
        event(user_id=user, session_id=session, type="click", query_id=query, query_image_id=sha, product_id=hit,
              position=shown.index(hit) + 1)
        if hit == pid and rng.random() < 0.3:
            event(user_id=user, session_id=session, type="purchase", query_id=query, query_image_id=sha,
                  product_id=hit, position=shown.index(hit) + 1)
    log = root / "events.jsonl"
    log.write_text("".join(json.dumps(e) + "\n" for e in events))
    ingest_event_files(ws, [log])
    run_pipeline(ws)  # mix, shift (embeds the user photos), mine, popularity, sample, export
    t["behaviour_s"] = time.perf_counter() - t0
    t.update({"events": len(events), "user_photos": len(photo_of), "user_photos_accepted": qres.accepted,
              "sessions": n_sessions})
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in t.items()}


def section(result: dict) -> list[str]:
    """Markdown lines of this benchmark's section in docs/benchmarks.md."""
    b = result["build"]
    lines = [f"`{result['command']}` — {result['products']:,} products ({result['train_products']:,} in train), "
             f"{result['queries']} degraded eval query photos, {b['events']:,} simulated events, "
             f"{b['user_photos_accepted']} accepted user photos; {result['seeds']} seeds x {result['steps']} steps "
             f"per variant; experiment {result['experiment_s']:.0f} s (building the workspace "
             f"{b['pipeline_s'] + b['labels_s'] + b['behaviour_s']:.0f} s). Values: mean over queries of the "
             "per-query mean over seeds, 95% bootstrap CI; differences are paired per query, CI and sign-flip p.", "",
             "| variant | nDCG@10 | Recall@1 | Recall@10 | mAP | control | nDCG@10 vs control | Recall@1 vs control "
             "| verdict (nDCG@10) |", "|---|---|---|---|---|---|---|---|---|"]
    rows = result["rows"]
    by = {(r["variant"], r["metric"]): r for r in rows if r["status"] == "ok"}
    for v in dict.fromkeys(r["variant"] for r in rows):
        if (v, "ndcg@10") not in by:
            reason = next(r["reason"] for r in rows if r["variant"] == v)
            lines.append(f"| {v} | skipped: {reason} | | | | | | | |")
            continue

        def cell(m: str, v: str = v) -> str:
            r = by[(v, m)]
            return f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"

        def diff(m: str, v: str = v) -> str:
            r = by[(v, m)]
            if r["diff_vs_control"] is None:
                return ""
            return f"{r['diff_vs_control']:+.3f} [{r['diff_ci_low']:+.3f}, {r['diff_ci_high']:+.3f}] p={r['p_vs_control']:.3f}"

        r = by[(v, "ndcg@10")]
        verdict = "" if r["diff_vs_control"] is None else ("helps" if r["diff_ci_low"] > 0 else "hurts"
                                                           if r["diff_ci_high"] < 0 else "no clear difference")
        lines.append(f"| {v} | {cell('ndcg@10')} | {cell('recall@1')} | {cell('recall@10')} | {cell('map')} | "
                     f"{r['control'] or ''} | {diff('ndcg@10')} | {diff('recall@1')} | {verdict} |")
    return lines


def main() -> None:
    """Build (or reuse) the workspace, run the experiment, write the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--products", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--fresh", action="store_true", help="rebuild benchmarks/.work/bench_experiment (by "
                        "default a finished build is reused and a killed one resumes after its last finished phase)")
    args = parser.parse_args()
    products = args.products or (2500 if args.quick else 10_000)
    root = WORK / "bench_experiment"
    load_start = load_average()
    built = root / "build.json"
    if args.fresh or not built.exists():
        if root.exists() and args.fresh:
            shutil.rmtree(root)
        root.mkdir(parents=True, exist_ok=True)
        info = build(root, products, n_queries=150 if args.quick else 500, n_user_photos=300 if args.quick else 1500,
                     n_sessions=8000 if args.quick else 40_000)
        built.write_text(json.dumps(info))
    info = json.loads(built.read_text())
    from visprep.experiment.stage import experiment_stage
    from visprep.workspace import Workspace

    ws = Workspace(root / "ws")
    t0 = time.perf_counter()
    res = experiment_stage(ws, seeds=args.seeds, steps=args.steps)
    splits = ws.read_table("splits", ["split"]).column("split").to_pylist()
    result = {"command": "python benchmarks/bench_experiment.py" + (" --quick" if args.quick else ""),
              "products": len(splits), "train_products": splits.count("train"), "build": info,
              "seeds": args.seeds, "steps": ws.config.experiment.steps if args.steps is None else args.steps,
              "experiment_s": time.perf_counter() - t0, "run_id": res.run_id,
              "queries": next(r["queries"] for r in res.rows if r["status"] == "ok"),
              "rows": res.rows, "notes": res.notes, "load_start": load_start, "load_end": load_average()}
    write_result("bench_experiment", result)
    print("\n".join(section(result)))
    print((res.out_dir / "results.md").read_text())


if __name__ == "__main__":
    main()
