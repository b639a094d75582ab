"""The duplicate rule (`dedup.rule`): a boolean expression over named pair signals, e.g. ``identical_image or
(image_match and title_similar)``, parsed once (only names, ``and``, ``or`` and parentheses) and evaluated on arrays
of pairs.

It lives outside the dedup package so that `visprep.config` (the lowest layer) can validate a rule at load without
importing a stage package; keep its imports to the standard library and numpy."""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

SIGNALS: dict[str, str] = {
    "identical_image": "the two products list a byte-identical image (same content hash)",
    "image_near": "closest pHash pair within dedup.image_radius bits (found by the Hamming index)",
    "image_similar": "closest pHash pair within dedup.image_similar_radius bits (checked on candidates only)",
    "image_match": "closest pHash pair, plain or border-trimmed (dedup.visual), within dedup.match_radius bits: "
                   "tolerates crops and added borders (checked on candidates only; the trimmed hash is computed "
                   "from the stored images of the pairs whose verdict depends on it)",
    "title_similar": "same top-level category and title similarity >= dedup.title_threshold (found by MinHash LSH)",
    "same_category": "same top-level category (checked on candidates only)",
    "embedding_similar": "cosine similarity of the closest image pair's embeddings (the feature store of the embed "
                         "model) >= dedup.embedding_threshold (checked on candidates only, for the pairs whose "
                         "verdict depends on it)",
}
"""Registry of the signals a rule may name, with what each means."""

GENERATORS = frozenset({"identical_image", "image_near", "title_similar"})
"""Signals whose true pairs are enumerated (content hash, Hamming index, title LSH); the others are only checked on
pairs the generators found, so every way of satisfying the rule must include a generator."""


@dataclass(frozen=True)
class DuplicateRule:
    """A parsed rule. Build it with `parse_rule`."""

    text: str
    tree: ast.expr
    names: frozenset[str]

    def evaluate(self, signals: Mapping[str, np.ndarray]) -> np.ndarray:
        """Evaluate on (P,) bool arrays, one per signal the rule names; returns a (P,) bool array."""
        missing = self.names - set(signals)
        if missing:
            raise ValueError(f"rule {self.text!r} needs signals {sorted(missing)}")
        return np.asarray(_eval(self.tree, signals), dtype=bool)


def parse_rule(text: str) -> DuplicateRule:
    """Parse and validate a rule; raise ValueError naming what is wrong.

    A rule may use the names in `SIGNALS`, ``and``, ``or`` and parentheses. It must not accept a pair unless some
    generator signal (`GENERATORS`) holds, since only generator pairs are ever looked at.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"dedup rule must be a non-empty expression, got {text!r}")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"dedup rule {text!r} is not a valid expression: {exc.msg}") from None
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id not in SIGNALS:
                raise ValueError(f"dedup rule {text!r}: unknown signal {node.id!r}; valid: {sorted(SIGNALS)}")
            names.add(node.id)
        elif not isinstance(node, (ast.BoolOp, ast.And, ast.Or, ast.Load)):
            raise ValueError(f"dedup rule {text!r}: only signal names, 'and', 'or' and parentheses are allowed, "  # noqa: TRY004
                             f"found {type(node).__name__}")
    rule = DuplicateRule(text=text.strip(), tree=tree, names=frozenset(names))
    # The rule is monotone (no 'not'), so checking the one assignment "no generator, everything else" is exact.
    probe = {n: np.array([n not in GENERATORS]) for n in names}
    if rule.evaluate(probe)[0]:
        raise ValueError(f"dedup rule {text!r} accepts pairs with none of {sorted(GENERATORS)}; such pairs are never "
                         "enumerated, so every 'or' branch needs one of them")
    return rule


def _eval(node: ast.expr, signals: Mapping[str, np.ndarray]) -> np.ndarray:
    if isinstance(node, ast.Name):
        return np.asarray(signals[node.id], dtype=bool)
    assert isinstance(node, ast.BoolOp)  # parse_rule admits nothing else
    values = [_eval(v, signals) for v in node.values]
    op = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
    out = values[0]
    for v in values[1:]:
        out = op(out, v)
    return out
