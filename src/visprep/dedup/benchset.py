"""A near-duplicate benchmark with known truth, built from real photos (Fashion-MNIST subset, OpenCV sample photos).

* **Base products**: each a real photo (a Fashion-MNIST garment colourised on a light backdrop, or an OpenCV sample
  photo) with a catalog-style title in its category.
* **Near duplicates**: a base product's photo through one known transform (`DUPLICATE_TRANSFORMS`: re-encode,
  resize, crop, border, brightness, text overlay) listed under a new SKU with a reworded title. Truth: same group.
* **Look-alikes**: a new SKU with the SAME category and title as a base product but a DIFFERENT real photo (another
  garment of the same class in the same colour). Truth: a different product; merging it is a false positive.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from visprep.demo import load_fashion_mnist_subset

OPENCV_PHOTO_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
SIZE = 256

_CLASSES = {  # label -> (top category, nouns)
    0: ("Apparel", ["T-Shirt", "Tee", "Crew-Neck Top"]), 1: ("Apparel", ["Trousers", "Chinos", "Slacks"]),
    2: ("Apparel", ["Pullover", "Sweater", "Jumper"]), 3: ("Apparel", ["Dress", "Midi Dress", "Shift Dress"]),
    4: ("Apparel", ["Coat", "Parka", "Overcoat"]), 5: ("Footwear", ["Sandals", "Slides", "Espadrilles"]),
    6: ("Apparel", ["Shirt", "Oxford Shirt", "Blouse"]), 7: ("Footwear", ["Sneakers", "Trainers", "Runners"]),
    8: ("Accessories", ["Tote Bag", "Shoulder Bag", "Handbag"]), 9: ("Footwear", ["Ankle Boots", "Chelsea Boots"]),
}
_BRANDS = ("Nordhaven", "Alder & Finch", "Corvo", "Kestrel Works", "Bellwether", "Oakline", "Tidewater", "Marlow Row")
_MATERIALS = ("Cotton", "Wool-Blend", "Leather", "Linen", "Suede", "Recycled Polyester", "Canvas")
_COLORS = (("Black", (32, 32, 34)), ("Navy", (28, 42, 92)), ("Red", (190, 36, 40)), ("Olive", (104, 110, 50)),
           ("Camel", (193, 154, 107)), ("Grey", (140, 140, 144)), ("Sky Blue", (110, 164, 216)),
           ("Mustard", (212, 168, 40)), ("Teal", (22, 122, 128)), ("Rust", (170, 74, 38)))
_SYNONYMS = {"t-shirt": "tee", "trousers": "pants", "sweater": "knit", "coat": "jacket", "sneakers": "shoes",
             "bag": "purse", "black": "jet black", "grey": "gray", "navy": "navy blue"}
_JUNK = ("- Free Shipping", "NEW", "| Best Seller", "(2025 Edition)", "- Official Store", "Sale")


# ------------------------------------------------------------------------------------------ transforms


def _jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _decode(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _reencode(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _decode(_jpeg(img, int(rng.integers(30, 70))))


def _resize(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    f = float(rng.uniform(0.4, 0.8))
    return cv2.resize(img, (max(8, round(img.shape[1] * f)), max(8, round(img.shape[0] * f))),
                      interpolation=cv2.INTER_AREA)


def _crop(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    t, b, l, r = (int(rng.uniform(0.03, 0.10) * s) for s in (h, h, w, w))
    return np.ascontiguousarray(img[t : h - b, l : w - r])


def _border(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pad = int(rng.uniform(0.04, 0.10) * max(img.shape[:2]))
    color = [int(v) for v in rng.integers(200, 256, 3)] if rng.random() < 0.7 else [0, 0, 0]
    return cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=color)


def _brightness(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    delta = float(rng.choice([-1, 1]) * rng.uniform(20, 45))
    return cv2.convertScaleAbs(img, alpha=float(rng.uniform(0.9, 1.15)), beta=delta)


def _text_overlay(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = img.copy()
    h, w = out.shape[:2]
    text = str(rng.choice(["SALE -30%", "NEW", "BEST PRICE", "www.shop.example", "-50%"]))
    scale = w / 400
    y = int(h * float(rng.uniform(0.12, 0.95)))
    cv2.putText(out, text, (int(w * 0.05), y), cv2.FONT_HERSHEY_SIMPLEX, scale, (220, 20, 20), max(1, round(2 * scale)),
                cv2.LINE_AA)
    return out


DUPLICATE_TRANSFORMS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "reencode": _reencode, "resize": _resize, "crop": _crop, "border": _border, "brightness": _brightness,
    "text_overlay": _text_overlay,
}
"""Registry of near-duplicate transforms: name -> fn(rgb, rng) -> rgb."""


def reword_title(title: str, rng: np.random.Generator) -> str:
    """A reseller's rewording of `title`: synonyms, a dropped or moved word, marketing junk, case changes."""
    words = title.split()
    words = [_SYNONYMS.get(w.casefold(), w) if rng.random() < 0.5 else w for w in words]
    if len(words) > 3 and rng.random() < 0.4:
        words.pop(int(rng.integers(1, len(words))))
    if rng.random() < 0.5:
        k = int(rng.integers(0, len(words)))
        words.insert(int(rng.integers(0, len(words))), words.pop(k))
    if rng.random() < 0.6:
        words.append(str(rng.choice(_JUNK)))
    out = " ".join(words)
    return out.upper() if rng.random() < 0.15 else out


# ------------------------------------------------------------------------------------------ photos


def render_garment(gray28: np.ndarray, rgb: tuple[int, int, int], *, size: int = SIZE) -> np.ndarray:
    """A Fashion-MNIST garment, colourised and composited on a light studio backdrop, (size, size, 3) uint8."""
    g = cv2.resize(gray28, (size - 32, size - 32), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255.0
    g = cv2.copyMakeBorder(g, 16, 16, 16, 16, cv2.BORDER_CONSTANT, value=0.0)
    alpha = np.clip((g - 0.03) / 0.10, 0.0, 1.0)[..., None]
    shade = (0.45 + 0.75 * g)[..., None]
    backdrop = np.full((size, size, 3), 240.0, np.float32)
    return cv2.convertScaleAbs(alpha * shade * np.asarray(rgb, np.float32) + (1 - alpha) * backdrop)


def opencv_photos(max_side: int = 512) -> list[tuple[str, np.ndarray]]:
    """The OpenCV sample photos (opencv-doc) as RGB, longer side at most `max_side`; empty when not installed."""
    out = []
    if not OPENCV_PHOTO_DIR.is_dir():
        return out
    for path in sorted(OPENCV_PHOTO_DIR.iterdir()):
        if path.suffix.lower() not in (".jpg", ".png"):
            continue
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None or min(bgr.shape[:2]) < 64:
            continue
        f = min(1.0, max_side / max(bgr.shape[:2]))
        if f < 1:
            bgr = cv2.resize(bgr, (round(bgr.shape[1] * f), round(bgr.shape[0] * f)), interpolation=cv2.INTER_AREA)
        out.append((path.stem, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    return out


# ------------------------------------------------------------------------------------------ the set


@dataclass
class DedupBenchmark:
    """Products (one image each) and the truth.

    Attributes:
        product_ids, titles, top_categories: one per product.
        images: encoded JPEG of each product's image.
        duplicate_pairs: (base, duplicate) product-id pairs that must share a group, with their transform.
        lookalike_pairs: (base, look-alike) product-id pairs that must not.
    """

    product_ids: list[str] = field(default_factory=list)
    titles: list[str] = field(default_factory=list)
    top_categories: list[str] = field(default_factory=list)
    images: list[bytes] = field(default_factory=list)
    duplicate_pairs: list[tuple[str, str, str]] = field(default_factory=list)
    lookalike_pairs: list[tuple[str, str]] = field(default_factory=list)

    def add(self, product_id: str, title: str, top: str, rgb: np.ndarray, rng: np.random.Generator) -> None:
        self.product_ids.append(product_id)
        self.titles.append(title)
        self.top_categories.append(top)
        self.images.append(_jpeg(rgb, int(rng.integers(85, 96))))

    def image_ids(self) -> list[str]:
        """Content hash (sha256) of each product's image, as the image store keys it."""
        return [hashlib.sha256(b).hexdigest() for b in self.images]


def build_dedup_benchmark(n_base: int = 600, *, duplicate_fraction: float = 0.5, lookalike_fraction: float = 0.5,
                          seed: int = 0, use_opencv: bool = True) -> DedupBenchmark:
    """Build the benchmark: `n_base` real-photo products, near duplicates of `duplicate_fraction` of them (transforms
    in turn) and look-alikes of `lookalike_fraction` of them.

    Fashion-MNIST base photos each use one garment; a look-alike uses another garment of the same class (rendered
    in the same colour), so the set needs about n_base * (1 + lookalike_fraction) garments (2,600 are bundled).
    """
    rng = np.random.default_rng(seed)
    fm = load_fashion_mnist_subset()
    photos = opencv_photos() if use_opencv else []
    n_photo = min(len(photos) // 2, n_base // 10)  # half of the photos are kept back as look-alike material
    n_fm = n_base - n_photo
    by_class: dict[int, list[int]] = {c: list(rng.permutation(np.flatnonzero(fm.labels == c))) for c in _CLASSES}
    bench = DedupBenchmark()
    base: list[tuple[str, str, str, np.ndarray, object]] = []  # (pid, title, top, rgb, lookalike source)
    for k in range(n_fm):
        label = k % len(_CLASSES)
        if not by_class[label]:
            raise ValueError(f"not enough Fashion-MNIST garments of class {label} for n_base={n_base}")
        top, nouns = _CLASSES[label]
        color, rgb = _COLORS[int(rng.integers(0, len(_COLORS)))]
        title = " ".join([str(rng.choice(_BRANDS)), color, str(rng.choice(_MATERIALS)), str(rng.choice(nouns))])
        img = render_garment(fm.images[by_class[label].pop()], rgb)
        base.append((f"FM-{k:06d}", title, top, img, (label, rgb)))
    photo_order = rng.permutation(len(photos))
    for k in range(n_photo):
        name, img = photos[int(photo_order[k])]
        other = photos[int(photo_order[n_photo + k])][1] if n_photo + k < len(photos) else None
        base.append((f"CV-{k:06d}", f"Art Print {name.replace('_', ' ').title()} Poster", "Home", img, other))
    for pid, title, top, img, _ in base:
        bench.add(pid, title, top, img, rng)
    names = list(DUPLICATE_TRANSFORMS)
    dup_of = rng.choice(len(base), size=round(duplicate_fraction * len(base)), replace=False)
    for k, b in enumerate(dup_of.tolist()):
        pid, title, top, img, _ = base[b]
        transform = names[k % len(names)]
        new = f"DUP-{k:06d}"
        bench.add(new, reword_title(title, rng), top, DUPLICATE_TRANSFORMS[transform](img, rng), rng)
        bench.duplicate_pairs.append((pid, new, transform))
    look_of = rng.choice(len(base), size=round(lookalike_fraction * len(base)), replace=False)
    for k, b in enumerate(look_of.tolist()):
        pid, title, top, _, source = base[b]
        if isinstance(source, tuple):
            label, rgb = source
            if not by_class[label]:
                continue
            other = render_garment(fm.images[by_class[label].pop()], rgb)
        elif source is not None:
            other = source
        else:
            continue
        new = f"LOOK-{k:06d}"
        bench.add(new, title, top, other, rng)
        bench.lookalike_pairs.append((pid, new))
    return bench
