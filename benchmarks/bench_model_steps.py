"""Model-holding steps besides the image embedder: the MiniLM title embedder on ONNX Runtime against
eager torch, and the NudeNet NSFW classifier with the thread plan's session options against its former ones.

    PYTHONPATH=src python benchmarks/bench_model_steps.py [--quick]

MiniLM: 500 demo product titles (the demo catalog's brand/colour/material/style/noun titles, ~6 words) embedded in
batches of 32, as the embed stage sends them, tokenisation included, with 1 thread and with the plan's threads
(one per usable core). The baseline is eager torch in the same run; ratio = ONNX Runtime / torch.
NudeNet: `NudeNetClassifier.classify` (letterbox, the 320n ONNX, decoding, NMS) one photo at a time, as the query
cleaner calls it, over 64 real photos: the 4 bundled OpenCV samples and 60 bundled Fashion-MNIST garments upscaled
to 448 px, JPEG-encoded and decoded. The baseline in the same run is the former session (1 intra-op thread,
ONNX Runtime's default spinning); also shown: the plan's threads with spinning left on (ONNX Runtime's default),
to show what the `allow_spinning=0` setting is for. Rates are medians of interleaved repeats.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import fmt_met, interleaved_medians, load_average, write_result

TITLE = "Model-holding steps: MiniLM on ONNX Runtime vs torch; NudeNet session options"
MINILM_TARGET = 1.5
"""ONNX Runtime must be at least this many times eager torch to be the MiniLM default."""
BATCH = 32


def titles(n: int = 500) -> list[str]:
    """`n` demo product titles (no images rendered)."""
    import numpy as np

    from visprep.demo import load_fashion_mnist_subset
    from visprep.demo.sources import _plan

    return [p.row["title"] for p in _plan(load_fashion_mnist_subset(), n, np.random.default_rng(0))]


def photos() -> list[Any]:
    """64 decoded RGB photos: the bundled OpenCV samples and 60 garments as 448-px JPEGs."""
    import cv2
    import numpy as np

    from visprep.demo import OPENCV_SAMPLES, data_dir, load_fashion_mnist_subset
    from visprep.images.decode import decode_image
    from visprep.images.preprocess import encode_jpeg

    out = [cv2.cvtColor(cv2.imread(str(data_dir() / n)), cv2.COLOR_BGR2RGB) for n in OPENCV_SAMPLES]
    for g in load_fashion_mnist_subset().images[:60]:
        rgb = cv2.resize(np.repeat((255 - g)[..., None], 3, 2), (448, 448), interpolation=cv2.INTER_CUBIC)
        out.append(decode_image(encode_jpeg(rgb, quality=90), gray=False, min_side=None,
                                max_pixels=10**8).pixels)
    return out


def measure_minilm(repeats: int, cores: int) -> dict:
    import numpy as np

    from visprep.embed.minilm import MiniLMTextEmbedder

    texts = titles()
    batches = [texts[i : i + BATCH] for i in range(0, len(texts), BATCH)]
    t = time.perf_counter()
    MiniLMTextEmbedder(threads=1)._ort()
    export_s = time.perf_counter() - t  # first use: export + session (later runs reuse the cached file)
    models = {(backend, th): MiniLMTextEmbedder(backend=backend, threads=th)
              for th in sorted({1, cores}) for backend in ("torch", "onnxruntime")}

    def rate(model: Any) -> float:
        if model.backend == "torch":
            model._torch.set_num_threads(model.threads)  # torch's pool is per process: set it for each run
        start = time.perf_counter()
        for b in batches:
            model.embed(b)
        return len(texts) / (time.perf_counter() - start)

    for m in models.values():
        m.embed(batches[0])  # warm-up (allocator, session)
    a = np.concatenate([models[("onnxruntime", 1)].embed(b) for b in batches])
    b = np.concatenate([models[("torch", 1)].embed(b) for b in batches])
    rates = interleaved_medians({f"{backend}_{th}": (lambda m=m: rate(m)) for (backend, th), m in models.items()},
                                repeats)
    ratios = {th: rates[f"onnxruntime_{th}"]["median"] / rates[f"torch_{th}"]["median"] for th in sorted({1, cores})}
    return {"titles": len(texts), "batch": BATCH, "mean_words": float(np.mean([len(x.split()) for x in texts])),
            "export_s": round(export_s, 2), "min_cosine": float((a * b).sum(axis=1).min()), "rates": rates,
            "ratios": ratios}


def measure_nudenet(repeats: int, cores: int) -> dict:
    import onnxruntime as ort

    from visprep.queries.nsfw import NudeNetClassifier

    images = photos()

    def with_session(threads: int, spin: bool | None) -> NudeNetClassifier:
        """The classifier with a session of the given options (spin None: ONNX Runtime's default, spinning)."""
        clf = NudeNetClassifier(threads=threads)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        if spin is not None:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        session = ort.InferenceSession(str(clf.model.weights), opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        clf.model._run = lambda blob: session.run(None, {name: blob})[0]
        return clf

    candidates = {
        "before": with_session(1, None),  # the former yolo runner: 1 intra-op thread, default spinning
        f"plan_{cores}_spinning": with_session(cores, None),
        "after_1": NudeNetClassifier(threads=1),
        f"after_plan_{cores}": NudeNetClassifier(),  # what the queries stage now builds
    }

    def rate(clf: NudeNetClassifier) -> float:
        start = time.perf_counter()
        for im in images:
            clf.classify(im)
        return len(images) / (time.perf_counter() - start)

    for clf in candidates.values():
        rate(clf)  # warm-up
    rates = interleaved_medians({k: (lambda c=c: rate(c)) for k, c in candidates.items()}, repeats)
    base = rates["before"]["median"]
    return {"images": len(images), "rates": rates, "ratios": {k: v["median"] / base for k, v in rates.items()},
            "threads_after": candidates[f"after_plan_{cores}"].model.threads}


def best_vs_best(minilm: dict) -> float:
    """ONNX Runtime's best rate over torch's best, whatever thread count gave each (torch's OpenMP pool can lose
    more than it gains from a second thread on shared cores)."""
    rates = minilm["rates"]
    return (max(v["median"] for k, v in rates.items() if k.startswith("onnxruntime_"))
            / max(v["median"] for k, v in rates.items() if k.startswith("torch_")))


def section(result: dict) -> list[str]:
    """Markdown lines of this benchmark's section in docs/benchmarks.md."""
    m, n = result["minilm"], result["nudenet"]
    lines = [(f"`{result['command']}` — {result['cpus']} cores, load {result['load_start']} → {result['load_end']}; "
             f"medians of {len(next(iter(m['rates'].values()))['values'])} interleaved runs."), "",
             (f"MiniLM (`minilm-l6-v2`): {m['titles']} demo titles (~{m['mean_words']:.1f} words), batches of "
             f"{m['batch']}, tokenisation included; first-use export {m['export_s']} s; min cosine ONNX Runtime vs "
             f"torch {m['min_cosine']:.6f}."), "",
             "| threads | torch titles/s | ONNX Runtime titles/s | ratio |", "|---:|---:|---:|---:|"]
    for th, ratio in m["ratios"].items():
        lines.append(f"| {th} | {m['rates'][f'torch_{th}']['median']:.0f} | "
                     f"{m['rates'][f'onnxruntime_{th}']['median']:.0f} | {ratio:.2f} |")
    best = best_vs_best(m)
    lines += ["", (f"Target ≥ {MINILM_TARGET}× torch, each at its best thread count (ONNX Runtime the default): "
                  f"{fmt_met(best >= MINILM_TARGET)} ({best:.2f}×)."), "",
              f"NudeNet (`NudeNetClassifier.classify`, one photo at a time): {n['images']} real photos.", "",
              "| session | images/s | ratio |", "|---|---:|---:|"]
    for k, v in n["rates"].items():
        lines.append(f"| {k} | {v['median']:.1f} | {n['ratios'][k]:.2f} |")
    return lines


def main() -> None:
    """Measure both steps, write the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    repeats = 3 if args.quick else 5
    from visprep.engines.threads import plan_threads

    cores = plan_threads().model
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="bench_model_steps_") as tmp:
        os.environ["VISPREP_CACHE"] = tmp  # a cold cache: the export time is measured too
        result = {"minilm": measure_minilm(repeats, cores), "nudenet": measure_nudenet(repeats, cores)}
    result.update({"command": f"python benchmarks/bench_model_steps.py{' --quick' if args.quick else ''}",
                   "load_start": load_start, "load_end": load_average(), "cpus": os.cpu_count()})
    write_result("bench_model_steps", result)
    print("\n".join(section(result)))


if __name__ == "__main__":
    main()
