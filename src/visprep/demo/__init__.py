"""Offline demo: real bundled data (Fashion-MNIST subset, OpenCV sample photos) and a demo catalog writer.

The files in ``data/`` are built by ``tools/build_demo_data.py``; see ``data/README.md`` for provenance and
``data/LICENSE-*.txt`` for their licenses.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from visprep.config import VisprepConfig

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
"""Fashion-MNIST class names, indexed by label."""

OPENCV_SAMPLES: tuple[str, ...] = (
    "box.png", "box_in_scene.png", "Blender_Suzanne1.jpg", "Blender_Suzanne2.jpg",
)
"""Bundled OpenCV sample photos: two real same-object pairs."""


def data_dir() -> Path:
    """Directory holding the bundled demo data files."""
    return Path(str(resources.files("visprep.demo") / "data"))


@dataclass(frozen=True)
class FashionMnistSubset:
    """The bundled Fashion-MNIST subset.

    Attributes:
        images: uint8 (N, 28, 28), 0 = background.
        labels: uint8 (N,), class ids into `FASHION_MNIST_CLASSES`.
        indices: int64 (N,), each image's index in the original 60,000-image train set.
    """

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load_fashion_mnist_subset() -> FashionMnistSubset:
    """Load the bundled balanced Fashion-MNIST train subset (about 2,600 images)."""
    path = data_dir() / "fashion_mnist_subset.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; build it with `python tools/build_demo_data.py`")
    with np.load(path, allow_pickle=False) as npz:
        return FashionMnistSubset(images=npz["images"], labels=npz["labels"], indices=npz["indices"])


DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's `dataset-fashion-mnist` package puts the 70,000 images (idx files, gzipped)."""


def load_fashion_mnist_idx(folder: Path = DEBIAN_FASHION_MNIST, *, part: str = "train",
                           limit: int | None = None) -> FashionMnistSubset:
    """Load Fashion-MNIST from its idx files (`<part>-images-idx3-ubyte.gz`, `<part>-labels-idx1-ubyte.gz`), the
    first `limit` images; for benchmarks at a larger scale than the bundled subset.

    Raises:
        FileNotFoundError: the files are missing (install Debian's `dataset-fashion-mnist`).
        ValueError: a file is not an idx file of the expected kind.
    """
    import gzip

    paths = {k: Path(folder) / f"{'t10k' if part == 'test' else part}-{k}-idx{d}-ubyte.gz"
             for k, d in (("images", 3), ("labels", 1))}
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: apt-get install dataset-fashion-mnist")
    raw = {k: gzip.decompress(p.read_bytes()) for k, p in paths.items()}
    if int.from_bytes(raw["images"][:4], "big") != 2051 or int.from_bytes(raw["labels"][:4], "big") != 2049:
        raise ValueError(f"{paths['images']} / {paths['labels']}: not Fashion-MNIST idx files (bad magic number)")
    n = int.from_bytes(raw["images"][4:8], "big")
    rows, cols = int.from_bytes(raw["images"][8:12], "big"), int.from_bytes(raw["images"][12:16], "big")
    take = n if limit is None else min(limit, n)
    images = np.frombuffer(raw["images"], np.uint8, take * rows * cols, 16).reshape(take, rows, cols)
    labels = np.frombuffer(raw["labels"], np.uint8, take, 8)
    return FashionMnistSubset(images=images.copy(), labels=labels.copy(), indices=np.arange(take, dtype=np.int64))


def opencv_sample_path(name: str) -> Path:
    """Path of one bundled OpenCV sample photo (one of `OPENCV_SAMPLES`)."""
    if name not in OPENCV_SAMPLES:
        raise ValueError(f"unknown OpenCV sample {name!r}; valid: {list(OPENCV_SAMPLES)}")
    return data_dir() / name


def demo_config() -> "VisprepConfig":
    """The demo workspace's configuration: every default, except what keeps a CPU-only demo to minutes."""
    from visprep.config import EmbedConfig, SplitConfig, SyntheticConfig, VisprepConfig

    # Fashion-MNIST garments are 28 px: a 64 crop still upsamples them and embeds ~10x faster than 224 on CPU
    # (128 px: a 31-min demo on 2 loaded cores, embedding 13k images took 20 of them). One view per kind of
    # synthetic recipe instead of seven keeps the demo's image count near twice the catalog's. A fifth of the groups
    # in eval gives the demo's experiment enough judged queries for useful confidence intervals.
    return VisprepConfig(embed=EmbedConfig(options={"profile": "imagenet-64"}),
                         split=SplitConfig(fractions={"train": 0.8, "eval": 0.2}),
                         synthetic=SyntheticConfig(backgrounds=["texture"], reframe_scales=[0.8],
                                                   hue_shifts_deg=[180.0]))


from visprep.demo.sources import BAD_ROW_REASONS, DemoSources, write_demo_sources  # noqa: E402

__all__ = [
    "BAD_ROW_REASONS",
    "FASHION_MNIST_CLASSES",
    "OPENCV_SAMPLES",
    "DemoSources",
    "FashionMnistSubset",
    "data_dir",
    "demo_config",
    "load_fashion_mnist_idx",
    "load_fashion_mnist_subset",
    "opencv_sample_path",
    "write_demo_sources",
]
