"""The embed stage's images/s on real stored JPEGs at 224 px (EfficientNet-Lite0), against, in the same run,
(a) the bare ONNX Runtime forward on ready tensors (the floor of this model on this CPU) and (b) the bare torch
forward, plus the stage on the torch backend (what the stage did before ONNX Runtime) and the incremental no-op run.

    PYTHONPATH=src python benchmarks/bench_embed.py [--quick] [--products N]

The images: a demo catalog (bundled Fashion-MNIST garments rendered as product photos with synthetic extra views,
JPEGs of 256-480 px) run through catalog, fetch and inspect; the embed stage decodes each stored JPEG, preprocesses
it at the imagenet-224 profile (resize 256, centre crop 224, normalise) and runs the model, with decode overlapped
with the model in a read-ahead thread. The bare forwards get the same images already preprocessed, batch 32, with
the thread plan's model threads. Rates are medians of interleaved repeats (each stage repeat embeds into an empty
feature store; the torch stage runs once). Target: the stage >= 0.8x the bare ONNX Runtime forward, >= 5x the torch stage.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import fmt_met, interleaved_medians, load_average, write_result

TITLE = "Embed: the stage vs the bare ONNX Runtime and torch forwards (EfficientNet-Lite0, 224 px)"
FLOOR_TARGET, TORCH_STAGE_TARGET = 0.8, 5.0
BATCH = 32


def build(root: Path, products: int) -> tuple[object, list[bytes]]:
    """A workspace with the demo catalog fetched and inspected; returns it and the stored JPEGs it embeds."""
    import pyarrow.compute as pc

    from visprep.demo.sources import write_demo_sources
    from visprep.pipeline import run_pipeline
    from visprep.workspace import Workspace

    ws = Workspace(root / "ws")
    ws.root.mkdir(parents=True)
    ws.config_path.write_text('[pipeline]\nstages = ["fetch", "inspect", "split", "pairs", "export"]\n'
                              '[export]\nsplits = ["eval"]\n')
    src = write_demo_sources(root / "src", n_products=products, seed=1)
    run_pipeline(ws, src.catalog_files)
    images = ws.read_table("images", ["image_id", "status", "format"])
    ok = images.filter(pc.equal(images["status"], "ok"))
    blobs = [ws.store.get(i, "jpg" if f == "jpeg" else f) for i, f in zip(ok["image_id"].to_pylist(),
                                                                         ok["format"].to_pylist())]
    return ws, blobs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--products", type=int, default=300)
    args = ap.parse_args()
    products = 40 if args.quick else args.products
    repeats = 2 if args.quick else 3
    from visprep.config import EmbedConfig
    from visprep.embed.efficientnet import EfficientNetLite0Embedder
    from visprep.embed.stage import embed_stage
    from visprep.engines.threads import apply_threads, plan_threads
    from visprep.images.preprocess import get_profile, preprocess_float
    from visprep.views.features import features_root

    root = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    try:
        t0 = time.perf_counter()
        ws, blobs = build(root, products)
        build_s = time.perf_counter() - t0
        n = len(blobs)
        profile = get_profile("imagenet-224")
        ready = np.stack([preprocess_float(b, profile) for b in blobs])
        plan = plan_threads()
        apply_threads(plan)
        ort = EfficientNetLite0Embedder(backend="onnxruntime", threads=plan.model)
        torch_e = EfficientNetLite0Embedder(backend="torch", threads=plan.model)
        ort._forward(ready[:2])  # export (first use) and session build outside the timings
        torch_n = min(n, 128)  # the torch paths are slow: a subset gives the same rate

        def bare(e: EfficientNetLite0Embedder, count: int) -> float:
            t = time.perf_counter()
            for s in range(0, count, BATCH):
                e._forward(ready[s:s + BATCH])
            return count / (time.perf_counter() - t)

        def stage(backend: str) -> float:
            shutil.rmtree(features_root(ws), ignore_errors=True)
            ws.set_config(ws.config.model_copy(update={"embed": EmbedConfig(backend=backend)}))
            t = time.perf_counter()
            r = embed_stage(ws)
            return r.embedded / (time.perf_counter() - t)

        rates = interleaved_medians({
            "stage_onnxruntime": lambda: stage("onnxruntime"),
            "bare_onnxruntime": lambda: bare(ort, n),
            "bare_torch": lambda: bare(torch_e, torch_n),
        }, repeats)
        # The torch stage takes minutes over every image: measured once, right after the interleaved rounds.
        rates["stage_torch"] = interleaved_medians({"stage_torch": lambda: stage("torch")}, 1)["stage_torch"]
        stage("onnxruntime")
        run = ws.last_run("embed")
        t = time.perf_counter()
        noop = embed_stage(ws)
        noop_s = time.perf_counter() - t
        med = {k: round(v["median"], 1) for k, v in rates.items()}
        vs_floor = med["stage_onnxruntime"] / med["bare_onnxruntime"]
        vs_torch_stage = med["stage_onnxruntime"] / med["stage_torch"]
        out = {"images": n, "products": products, "build_s": round(build_s, 1), "repeats": repeats,
               "rates": {k: {kk: (round(vv, 1) if kk != "values" else [round(x, 1) for x in vv])
                             for kk, vv in v.items()} for k, v in rates.items()},
               "median": med, "stage_vs_bare_ort": round(vs_floor, 3), "stage_vs_torch_stage": round(vs_torch_stage, 2),
               "bare_ort_vs_bare_torch": round(med["bare_onnxruntime"] / med["bare_torch"], 2),
               "floor_met": vs_floor >= FLOOR_TARGET, "torch_stage_met": vs_torch_stage >= TORCH_STAGE_TARGET,
               "noop_s": round(noop_s, 3), "noop_skipped": noop.skipped, "threads": run["metrics"].get("threads")
               if run else None, "load_end": load_average(),
               "command": "PYTHONPATH=src python benchmarks/bench_embed.py " + " ".join(sys.argv[1:])}
        print(out)
        write_result("bench_embed", out)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def section(result: dict) -> list[str]:
    """Markdown lines of the embed benchmark for docs/benchmarks.md."""
    med = result["median"]
    th = result.get("threads") or {}
    intro = (f"`{result['command']}` — {result['images']} stored demo JPEGs ({result['products']} products: "
             f"Fashion-MNIST garments rendered as product photos, with synthetic views), EfficientNet-Lite0 at the "
             f"imagenet-224 profile, batch {BATCH}; thread plan: {th.get('model')} model threads, "
             f"{th.get('decode')} read-ahead decode thread, OpenCV {th.get('opencv')} thread on {th.get('cores')} "
             f"cores. Medians of {result['repeats']} interleaved repeats (the torch stage: one run over every "
             f"image; the bare torch forward on the first {min(result['images'], 128)}).")
    header = "| path | images/s |"
    rows = [f"| embed stage, ONNX Runtime backend (decode + preprocess + model, overlapped) | "
            f"{med['stage_onnxruntime']} |",
            f"| bare ONNX Runtime forward on ready tensors (the floor) | {med['bare_onnxruntime']} |",
            f"| bare torch forward on ready tensors | {med['bare_torch']} |",
            f"| embed stage, torch backend (before ONNX Runtime) | {med['stage_torch']} |"]
    verdict = (f"Stage / bare ONNX Runtime forward = **{result['stage_vs_bare_ort']}x** (target >= {FLOOR_TARGET}: "
               f"{fmt_met(result['floor_met'])}); stage ONNX Runtime / stage torch = "
               f"**{result['stage_vs_torch_stage']}x** (target >= {TORCH_STAGE_TARGET}: "
               f"{fmt_met(result['torch_stage_met'])}); bare ONNX Runtime / bare torch = "
               f"{result['bare_ort_vs_bare_torch']}x. The no-op run (nothing new) took {result['noop_s']} s.")
    return [intro, "", header, "|---|---|", *rows, "", verdict]


if __name__ == "__main__":
    main()
