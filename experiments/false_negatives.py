"""How many mined ANN negatives are same-class (a proxy for false negatives), with and without the guard.

Data: the Fashion-MNIST subset visprep.demo ships (2,600 images, 10 classes), or with `--source debian` the full
70,000 images of Debian's dataset-fashion-mnist (the first `--limit`). Each image is a "product" with two views
(the image and its mirror), so every anchor has a positive and the positive-aware rule can act. Vectors come from
the default embedder (EfficientNet-Lite0, ImageNet weights) fed the decoded pixels resized to `--size` (224 is the
model's native input; smaller is faster on a shared CPU). Prints one row per setting.

    python experiments/false_negatives.py [--source subset|debian] [--limit N] [--size 224] [--k 5] [--band 30]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from visprep.demo import load_fashion_mnist_subset
from visprep.embed.registry import get_embedder
from visprep.mining.ann import mine_ann_negatives, positive_scores
from visprep.mining.guard import FalseNegativeGuard
from visprep.mining.positives import build_positive_sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=2600)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--band", type=int, default=30)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--source", choices=["subset", "debian"], default="subset")
    ap.add_argument("--size", type=int, default=224, help="embedder input side (pixels)")
    args = ap.parse_args()
    if args.source == "debian":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
        from bench_mining import fmnist_images

        all_images, all_labels = fmnist_images()
    else:
        data = load_fashion_mnist_subset()
        all_images, all_labels = data.images, data.labels
    images, labels = np.asarray(all_images[: args.limit], np.uint8), np.asarray(all_labels[: args.limit])
    n = len(images)
    embedder = get_embedder("efficientnet-lite0")
    t0 = time.perf_counter()
    # Views interleaved: 2i is image i, 2i+1 its mirror.
    views = np.stack([images, images[:, :, ::-1]], axis=1).reshape(2 * n, *images.shape[1:])
    vecs = np.concatenate([embedder.embed_pixels(views[s : s + args.batch], size=args.size)
                           for s in range(0, len(views), args.batch)])
    secs = time.perf_counter() - t0
    print(f"embedded {len(views)} views ({args.source}, {args.size} px) with {embedder.model_id} in {secs:.1f} s "
          f"({len(views) / secs:.1f} img/s)")
    product = np.repeat(np.arange(n), 2)
    label = np.repeat(labels, 2)
    pos = build_positive_sets(product, product)
    s_pos = positive_scores(vecs, group=product, positives=pos, how="mean")
    base_rate = np.mean([(labels == c).mean() for c in labels])
    print(f"same-class rate of a random pair: {base_rate:.3f}; mean s_pos {np.nanmean(s_pos):.3f}")
    print("| setting | negatives | same-class | guard drops (rel / abs) |")
    print("|---|---:|---:|---:|")
    settings = [("no guard, ranks 1..R", 0, None, None), ("guard m=0.05, abs 0.95", 0, 0.05, 0.95),
                ("guard m=0.10, abs 0.95", 0, 0.10, 0.95), ("guard m=0.10 + skip top 5", 5, 0.10, 0.95)]
    for name, skip, margin, max_sim in settings:
        res = mine_ann_negatives(vecs, group=product, positives=pos, s_pos=s_pos, k=args.k, skip_top=skip,
                                 band_max=args.band, guard=FalseNegativeGuard(margin, max_sim),
                                 rng=np.random.default_rng(0))
        same = (label[res.anchor] == label[res.negative]).mean() if len(res.anchor) else float("nan")
        print(f"| {name} | {len(res.anchor)} | {same:.3f} | {res.counts['guard_relative']} / "
              f"{res.counts['guard_absolute']} |")


if __name__ == "__main__":
    main()
