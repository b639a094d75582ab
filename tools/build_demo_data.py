"""Build the real demo data shipped in ``src/visprep/demo/data/`` from files Debian installs locally.

Sources (nothing is downloaded):

* ``/usr/share/datasets/fashion-mnist/train-*.gz`` (Debian package ``dataset-fashion-mnist``; Zalando SE,
  MIT/Expat): the first ``--per-class`` train images of every one of the 10 classes, in original index order,
  with their original train-set indices.
* ``/usr/share/doc/opencv-doc/examples/data/`` (Debian package ``opencv-doc``; Apache-2.0 AND BSD-3-Clause):
  two real same-object photo pairs, copied byte for byte.

The output is deterministic: the ``.npz`` is written with fixed zip timestamps, so rerunning the tool on the
same inputs gives identical bytes.

Usage::

    python tools/build_demo_data.py [--per-class 260] [--out src/visprep/demo/data]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import shutil
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_COPYRIGHT = Path("/usr/share/doc/dataset-fashion-mnist/copyright")
OPENCV_DATA_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
OPENCV_COPYRIGHT = Path("/usr/share/doc/opencv-doc/copyright")
OPENCV_SAMPLES = ("box.png", "box_in_scene.png", "Blender_Suzanne1.jpg", "Blender_Suzanne2.jpg")

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
SUBSET_FILE = "fashion_mnist_subset.npz"
MAX_DATA_BYTES = 2_500_000
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def read_idx(path: Path) -> np.ndarray:
    """Read a gzip-compressed IDX file (the MNIST container format) into an array of unsigned bytes.

    Args:
        path: ``*-idx1-ubyte.gz`` (labels, shape (N,)) or ``*-idx3-ubyte.gz`` (images, shape (N, 28, 28)).

    Raises:
        ValueError: the file is not an unsigned-byte IDX file or its size disagrees with its header.
    """
    raw = gzip.decompress(path.read_bytes())
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (header {raw[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape}, body has {body.size} bytes")
    return body.reshape(shape)


def select_balanced(labels: np.ndarray, *, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` examples of every class, sorted (deterministic, no RNG)."""
    chosen = []
    for label in range(len(CLASS_NAMES)):
        idx = np.flatnonzero(labels == label)
        if idx.size < per_class:
            raise ValueError(f"class {label} has only {idx.size} examples, {per_class} requested")
        chosen.append(idx[:per_class])
    return np.sort(np.concatenate(chosen))


def write_npz_deterministic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` like ``np.savez_compressed``, but with fixed zip timestamps: reproducible bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def _license_text(title: str, origin: str, copyright_file: Path, note: str) -> str:
    return (
        f"{title}\n{'=' * len(title)}\n\n{note}\n\nOrigin: {origin}\n"
        f"Copied verbatim below from {copyright_file} (Debian machine-readable copyright file).\n\n"
        + "-" * 78 + "\n" + copyright_file.read_text(encoding="utf-8")
    )


def _readme(n_images: int, per_class: int, sha: dict[str, str]) -> str:
    classes = "\n".join(f"| {i} | {name} | {per_class} |" for i, name in enumerate(CLASS_NAMES))
    photos = "\n".join(f"| `{name}` | `{sha[name][:16]}…` |" for name in OPENCV_SAMPLES)
    return f"""# visprep demo data

Real, redistributable data for the offline demo (`visprep.demo`). Built by `tools/build_demo_data.py` from
files installed by Debian packages; nothing is downloaded, and the build is deterministic.

## `{SUBSET_FILE}` — Fashion-MNIST subset

{n_images} real Zalando product photos (28x28, 8-bit grayscale, light garment on black), the first {per_class}
of each class of the Fashion-MNIST **train** set, in original order.

Arrays (load with `numpy.load`, or `visprep.demo.load_fashion_mnist_subset()`):

| key | dtype | shape | meaning |
|---|---|---|---|
| `images` | uint8 | ({n_images}, 28, 28) | pixel intensities, 0 = background |
| `labels` | uint8 | ({n_images},) | class id 0–9 |
| `indices` | int64 | ({n_images},) | index of the image in the original 60,000-image train set |

| label | class | images |
|---|---|---|
{classes}

Source: Debian package `dataset-fashion-mnist`, `{FASHION_MNIST_DIR}/train-images-idx3-ubyte.gz` and
`train-labels-idx1-ubyte.gz` (upstream https://github.com/zalandoresearch/fashion-mnist).
License: MIT/Expat, © 2017 Zalando SE — see `LICENSE-fashion-mnist.txt`.

## OpenCV sample photos — real same-object pairs

Copied byte for byte from `{OPENCV_DATA_DIR}` (Debian package `opencv-doc`, OpenCV `samples/data`).

| file | sha256 |
|---|---|
{photos}

* `box.png` / `box_in_scene.png`: the same box of almond biscuits, alone and in a cluttered scene.
* `Blender_Suzanne1.jpg` / `Blender_Suzanne2.jpg`: two renders of the same object (Blender's "Suzanne").

License: Apache-2.0 AND BSD-3-Clause (OpenCV) — see `LICENSE-opencv-samples.txt`.

## How the demo uses them

`visprep.demo.write_demo_sources()` colourises the garments, composites them on a studio background and writes
a synthetic catalog around them; the OpenCV pairs become products with two real views each.
"""


def build(out: Path, *, per_class: int) -> dict[str, int]:
    """Write the demo data into ``out`` and return {file name: size in bytes}."""
    out.mkdir(parents=True, exist_ok=True)
    images = read_idx(FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"images ({images.shape[0]}) and labels ({labels.shape[0]}) disagree")
    keep = select_balanced(labels, per_class=per_class)
    write_npz_deterministic(
        out / SUBSET_FILE,
        {"images": images[keep], "labels": labels[keep].astype(np.uint8), "indices": keep.astype(np.int64)},
    )

    sha = {}
    for name in OPENCV_SAMPLES:
        src = OPENCV_DATA_DIR / name
        shutil.copyfile(src, out / name)
        sha[name] = hashlib.sha256(src.read_bytes()).hexdigest()

    (out / "LICENSE-fashion-mnist.txt").write_text(
        _license_text(
            "Fashion-MNIST (subset)",
            "https://github.com/zalandoresearch/fashion-mnist via Debian package dataset-fashion-mnist",
            FASHION_MNIST_COPYRIGHT,
            f"Applies to {SUBSET_FILE}. The Expat (MIT) license below applies to the images (Files: *).",
        ),
        encoding="utf-8",
    )
    (out / "LICENSE-opencv-samples.txt").write_text(
        _license_text(
            "OpenCV sample images",
            "https://opencv.org (samples/data) via Debian package opencv-doc",
            OPENCV_COPYRIGHT,
            "Applies to " + ", ".join(OPENCV_SAMPLES) + ". They fall under the 'Files: *' stanza below: "
            "Apache-2.0 AND BSD-3-Clause; both license texts are included further down.",
        ),
        encoding="utf-8",
    )
    (out / "README.md").write_text(_readme(int(keep.size), per_class, sha), encoding="utf-8")

    sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    total = sum(sizes.values())
    if total > MAX_DATA_BYTES:
        raise ValueError(f"demo data is {total} bytes, over the {MAX_DATA_BYTES}-byte budget")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=260, help="Fashion-MNIST train images per class")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "src" / "visprep" / "demo" / "data"
    )
    args = parser.parse_args(argv)
    sizes = build(args.out, per_class=args.per_class)
    for name, size in sizes.items():
        print(f"{size:>10,d}  {name}")
    print(f"{sum(sizes.values()):>10,d}  total in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
