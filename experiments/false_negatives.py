"""How many mined ANN negatives are same-class (a proxy for false negatives), with and without the guard.

Data: the Fashion-MNIST subset visprep.demo ships (2,600 images, 10 classes). Each image is a "product" with two
views (the image and its mirror), so every anchor has a positive and the positive-aware rule can act. Vectors come
from the default embedder (EfficientNet-Lite0, ImageNet weights). Prints one row per setting.

    python experiments/false_negatives.py [--limit N] [--k 5] [--band 30]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from visprep.demo import load_fashion_mnist_subset
from visprep.embed.registry import get_embedder
from visprep.images.preprocess import encode_jpeg
from visprep.mining.ann import mine_ann_negatives, positive_scores
from visprep.mining.guard import FalseNegativeGuard
from visprep.mining.positives import build_positive_sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=2600)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--band", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    data = load_fashion_mnist_subset()
    images, labels = data.images[: args.limit], np.asarray(data.labels[: args.limit])
    n = len(images)
    embedder = get_embedder("efficientnet-lite0")
    t0 = time.perf_counter()
    jpgs = []
    for img in images:
        rgb = np.repeat(np.asarray(img, np.uint8)[:, :, None], 3, axis=2)
        jpgs += [encode_jpeg(rgb), encode_jpeg(np.ascontiguousarray(rgb[:, ::-1]))]
    vecs = np.concatenate([embedder.embed(jpgs[s : s + args.batch]) for s in range(0, len(jpgs), args.batch)])
    secs = time.perf_counter() - t0
    print(f"embedded {len(jpgs)} views with {embedder.model_id} in {secs:.1f} s ({len(jpgs) / secs:.1f} img/s)")
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
