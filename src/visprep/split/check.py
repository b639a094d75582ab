"""The split-leak check: proves no eval product, group or query image reaches training data."""

from __future__ import annotations

from dataclasses import dataclass, field

from visprep.schema import TABLES
from visprep.views.catalog import all_latest_urls, all_product_images, all_splits
from visprep.workspace import Workspace


class SplitLeakError(RuntimeError):
    """Raised by `assert_no_split_leak` when training data can see evaluation products."""


@dataclass
class SplitLeakReport:
    """Leaks found (each a readable line, with an example) and warnings that are not leaks yet."""

    leaks: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no leak was found."""
        return not self.leaks


def _examples(items: list, n: int = 3) -> str:
    shown = ", ".join(repr(x) for x in items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def check_split_leaks(ws: Workspace) -> SplitLeakReport:
    """Check the workspace's splits, pairs, negatives and eval qrels for train/eval leaks.

    Leaks: a group in two splits; a pair or negative whose split differs from a product's split (so a training
    row holds an eval product); a product judged >= `labels.pin_min_grade` for an eval query outside the eval
    split; an eval query image that is an image of a training product. Warning: one stored image listed by
    products of different splits (exact duplicates: dedup's product_groups will merge them).
    """
    rep = SplitLeakReport()
    eval_split = ws.config.labels.eval_split
    s = all_splits(ws)  # a synthetic colour variant is in its source's split
    split_of = dict(zip(s.column("product_id").to_pylist(), s.column("split").to_pylist()))
    group_splits: dict[str, set[str]] = {}
    for g, sp in zip(s.column("group_id").to_pylist(), s.column("split").to_pylist()):
        group_splits.setdefault(g, set()).add(sp)
    rep.checked["products"] = len(split_of)
    crossing = sorted(g for g, sps in group_splits.items() if len(sps) > 1)
    if crossing:
        rep.leaks.append(f"{len(crossing)} product groups span several splits: {_examples(crossing)}")

    for table, other in (("pairs", "positive_product_id"), ("user_pairs", "positive_product_id"),
                         ("negatives", "negative_product_id")):
        t = ws.read_table(table, ["anchor_product_id", other, "split"])
        rep.checked[table] = t.num_rows
        bad = []
        for a, o, sp in zip(*(t.column(c).to_pylist() for c in ("anchor_product_id", other, "split"))):
            for pid in (a, o):
                if pid is not None and split_of.get(pid) != sp:
                    bad.append(f"{table}[split={sp}] holds {pid} of split {split_of.get(pid)}")
        if bad:
            rep.leaks.append(f"{len(bad)} {table} rows mix splits: {_examples(bad)}")

    if ws.has_table("eval_qrels"):
        q = ws.read_table("eval_qrels", ["query_id", "product_id", "grade"])
        min_grade = ws.config.labels.pin_min_grade
        relevant = {p for p, g in zip(q.column("product_id").to_pylist(), q.column("grade").to_pylist())
                    if g >= min_grade}
        judged = sorted(p for p in relevant if p in split_of and split_of[p] != eval_split)
        # A judged product that left the catalog (e.g. a synthetic colour variant whose source moved to eval)
        # cannot reach training: not a leak, but its judgments can no longer be matched.
        gone = sorted(p for p in relevant if p not in split_of)
        if gone:
            rep.warnings.append(f"{len(gone)} products judged >= {min_grade} are no longer in the catalog: "
                                f"{_examples(gone)}")
        rep.checked["eval_products"] = len({p for p, g in zip(q.column("product_id").to_pylist(),
                                                              q.column("grade").to_pylist()) if g >= min_grade})
        if judged:
            rep.leaks.append(f"{len(judged)} products judged >= {min_grade} for eval queries are not in split "
                             f"{eval_split!r} (rerun `visprep split`): {_examples(judged)}")
        image_products = _image_products(ws)
        if "synthetic_views" in TABLES and ws.has_table("synthetic_views"):
            # A synthetic view of a product is an image of that product (and of the product it was made from).
            v = ws.read_table("synthetic_views", ["image_id", "product_id", "source_product_id"])
            for iid, pid, src in zip(*(v.column(c).to_pylist() for c in ("image_id", "product_id",
                                                                          "source_product_id"))):
                image_products.setdefault(iid, set()).update(x for x in (pid, src) if x)
        qids = set(q.column("query_id").to_pylist())
        rep.checked["eval_queries"] = len(qids)
        seen = sorted(f"query image {qid[:12]}… is an image of {p} ({split_of.get(p)})"
                      for qid in qids for p in image_products.get(qid, ()) if split_of.get(p) != eval_split)
        if seen:
            rep.leaks.append(f"{len(seen)} eval query images are catalog images of non-eval products: "
                             f"{_examples(seen)}")

    shared = sorted(iid for iid, ps in _image_products(ws).items() if len({split_of.get(p) for p in ps}) > 1)
    if shared:
        rep.warnings.append(f"{len(shared)} stored images are listed by products of different splits (exact "
                            f"duplicates; a product_groups table from dedup would merge them): "
                            f"{_examples([i[:12] for i in shared])}")
    return rep


def _image_products(ws: Workspace) -> dict[str, set[str]]:
    """image_id -> the products listing it (through their newest successful fetch)."""
    t = ws.sql("SELECT DISTINCT u.image_id, pi.product_id FROM pi JOIN u ON u.url = pi.url AND u.status = 'ok'",
               pi=all_product_images(ws, ["product_id", "url"]), u=all_latest_urls(ws))
    out: dict[str, set[str]] = {}
    for iid, pid in zip(t.column("image_id").to_pylist(), t.column("product_id").to_pylist()):
        out.setdefault(iid, set()).add(pid)
    return out


def assert_no_split_leak(ws: Workspace) -> SplitLeakReport:
    """Run `check_split_leaks` and raise `SplitLeakError` listing every leak; return the report when clean."""
    rep = check_split_leaks(ws)
    if rep.leaks:
        raise SplitLeakError("split leak: " + "; ".join(rep.leaks))
    return rep
