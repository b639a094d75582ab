"""The pairs stage: positives from the catalog (same-product image pairs, image-title pairs), within each split."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

import pyarrow as pa
import pyarrow.compute as pc

from visprep.pairs.titles import REFUSAL_REASONS, TitleCategoryChecker, get_title_checker, judge_titles
from visprep.schema import PAIRS
from visprep.stages import StageOutput
from visprep.views.catalog import all_products, flagged_products
from visprep.views.images import USABLE_COLUMNS, judged_images
from visprep.workspace import QuarantineRecord, RunRecord, Workspace


@dataclass
class PairsResult:
    """Counts of one pairs run (`images`: usable images after the quality floors)."""

    products: int = 0
    images: int = 0
    same_product: int = 0
    image_title: int = 0
    products_single_image: int = 0
    images_too_small: int = 0  # distinct images left out by pairs.min_side
    images_too_blurry: int = 0  # by pairs.min_blur
    image_title_refused: dict[str, int] = field(default_factory=dict)  # products whose title makes no pair, by reason
    image_title_downweighted: int = 0  # products whose kept title disagrees with its category
    label_issue_pairs: int = 0  # pairs of products in label_issues that quality.policy touched


def images_below_floors(judged: pa.Table, *, min_side: int, min_blur: float) -> list[QuarantineRecord]:
    """One quarantine record per distinct image of `judged` (rows of `judged_images`) that a floor leaves out:
    record_id the image id, source its URL, field the failing column (width/height/blur), value the figure."""
    out: dict[str, QuarantineRecord] = {}
    for r in judged.filter(pc.is_valid(judged.column("floor_reason"))).to_pylist():
        iid = r["image_id"]
        if iid in out:
            continue
        via = "" if r["judged_by"] == iid else f"synthetic view of image {r['judged_by']}, whose "
        if r["floor_reason"] == "too_small":
            col, side = min(((c, r[f"judged_{c}"]) for c in ("width", "height") if r[f"judged_{c}"] is not None),
                            key=lambda cs: cs[1])
            detail = (f"image {iid} (product {r['product_id']}): {via}shorter side {side} px "
                      f"({r['judged_width']}x{r['judged_height']}) < pairs.min_side {min_side}")
            out[iid] = QuarantineRecord(reason="too_small", detail=detail, source=r["url"], record_id=iid,
                                        field=col, value=str(side))
        else:
            detail = (f"image {iid} (product {r['product_id']}): {via}blur score {r['judged_blur']:.3g} "
                      f"(Laplacian variance at a 256 px shorter side) < pairs.min_blur {min_blur}")
            out[iid] = QuarantineRecord(reason="too_blurry", detail=detail, source=r["url"], record_id=iid,
                                        field="blur", value=f"{r['judged_blur']:.6g}")
    return list(out.values())


def same_product_pairs(product_ids: list[str], image_ids: list[str], sources: list[str], *, max_per_product: int,
                       weight: float, synthetic_weight: float) -> list[tuple[str, str, str, float]]:
    """Every pair of different images of one product (rows grouped by product), capped per product."""
    out = []
    start = 0
    n = len(product_ids)
    while start < n:
        end = start
        while end < n and product_ids[end] == product_ids[start]:
            end += 1
        idx = range(start, end)
        for k, (a, b) in enumerate(combinations(idx, 2)):
            if k >= max_per_product:
                break
            w = weight if sources[a] == sources[b] == "catalog" else synthetic_weight
            out.append((product_ids[a], image_ids[a], image_ids[b], w))
        start = end
    return out


def pairs_stage(ws: Workspace) -> PairsResult:
    """Write `pairs` from products with usable images (other-category negatives are a miner of the mine stage)."""
    cfg = ws.config.pairs
    # Resolved before the run starts: an unknown checker name fails here, listing the valid ones.
    checker = get_title_checker(cfg.title_consistency) if cfg.image_title and cfg.title_filter else None
    from visprep.pipeline import execute

    return execute(ws, "pairs", lambda ws, run: compute_pairs(ws, run, checker))


def compute_pairs(ws: Workspace, run: RunRecord, checker: TitleCategoryChecker | None) -> StageOutput:
    """The pairs stage's computation: `pairs` under `quality.policy` (a section of this stage), and the images
    and titles its floors and filters refused, as quarantine parts "images" and "titles"."""
    cfg = ws.config.pairs
    res = PairsResult()
    judged = judged_images(ws)
    below = images_below_floors(judged, min_side=cfg.min_side, min_blur=cfg.min_blur)
    res.images_too_small = sum(r.reason == "too_small" for r in below)
    res.images_too_blurry = sum(r.reason == "too_blurry" for r in below)
    imgs = judged.filter(pc.is_null(judged.column("floor_reason"))).select(list(USABLE_COLUMNS))
    pid = imgs.column("product_id").to_pylist()
    iid = imgs.column("image_id").to_pylist()
    src = imgs.column("source").to_pylist()
    split = imgs.column("split").to_pylist()
    title = imgs.column("title").to_pylist()
    res.images = len(iid)
    res.products = len(set(pid))
    split_of = dict(zip(pid, split))
    title_of = dict(zip(pid, title))
    # Column lists, not a dict per pair (three pairs a product: the dicts were most of this stage's memory).
    same = same_product_pairs(pid, iid, src, max_per_product=cfg.max_pairs_per_product,
                              weight=cfg.same_product_weight, synthetic_weight=cfg.synthetic_weight)
    same_pid = [p for p, _, _, _ in same]
    tables = [pa.table({
        "anchor_id": pa.array([a for _, a, _, _ in same], pa.string()),
        "positive_id": pa.array([b for _, _, b, _ in same], pa.string()),
        "positive_text": pa.nulls(len(same), pa.string()),
        "kind": pa.array(["same_product"] * len(same), pa.string()),
        "weight": pa.array([w for _, _, _, w in same], pa.float32()),
        "anchor_product_id": pa.array(same_pid, pa.string()),
        "positive_product_id": pa.array(same_pid, pa.string()),
        "split": pa.array([split_of[p] for p in same_pid], pa.string()),
    }, schema=PAIRS)]
    res.same_product = len(same)
    res.products_single_image = res.products - len(set(same_pid))
    del same, same_pid
    titles = title_outcome(ws, set(pid), checker=checker)
    res.image_title_refused, res.image_title_downweighted = titles.counts, titles.downweighted
    if cfg.image_title:
        keep = [k for k, p in enumerate(pid) if titles.weight[p] > 0]
        kept_pid = [pid[k] for k in keep]
        tables.append(pa.table({
            "anchor_id": pa.array([iid[k] for k in keep], pa.string()),
            "positive_id": pa.nulls(len(keep), pa.string()),
            "positive_text": pa.array([title_of[p] for p in kept_pid], pa.string()),
            "kind": pa.array(["image_title"] * len(keep), pa.string()),
            "weight": pa.array([titles.weight[p] for p in kept_pid], pa.float32()),
            "anchor_product_id": pa.array(kept_pid, pa.string()),
            "positive_product_id": pa.array(kept_pid, pa.string()),
            "split": pa.array([split_of[p] for p in kept_pid], pa.string()),
        }, schema=PAIRS))
        res.image_title += len(keep)
        del keep, kept_pid
    pairs, res.label_issue_pairs = apply_label_issues(ws, pa.concat_tables(tables))
    return StageOutput(
        tables={"pairs": pairs}, quarantine={"images": below, "titles": titles.refused}, result=res,
        counts={"images_in": res.images, "products_in": res.products, "same_product": res.same_product,
                "image_title": res.image_title, "products_single_image": res.products_single_image,
                "images_too_small": res.images_too_small, "images_too_blurry": res.images_too_blurry,
                "image_title_downweighted": res.image_title_downweighted, "label_issue_pairs": res.label_issue_pairs,
                **{f"image_title_refused_{k}": v for k, v in res.image_title_refused.items()}})


def apply_label_issues(ws: Workspace, pairs: pa.Table) -> tuple[pa.Table, int]:
    """`pairs` under `quality.policy` for the products the quality stage flagged (`label_issues`), and how many
    pairs that touched. The pairs stage applies it (the quality stage writes only `label_issues`), so a policy is
    applied once, to fresh pairs, whatever order the stages ran in."""
    if not ws.has_table("label_issues"):
        return pairs, 0
    from visprep.quality.policy import apply_policy

    cfg = ws.config.quality
    return apply_policy(pairs, flagged_products(ws), policy=cfg.policy, down_weight=cfg.down_weight)


@dataclass
class TitleOutcome:
    """What the title filter decided for the products with usable images: `weight` of each product's image-title
    pairs (0 = refused), the `refused` titles as quarantine records, refusals per reason, and how many kept titles
    disagree with their category (`downweighted`)."""

    weight: dict[str, float]
    refused: list[QuarantineRecord] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    downweighted: int = 0


def title_outcome(ws: Workspace, products: set[str], *, checker: TitleCategoryChecker | None) -> TitleOutcome:
    """Judge the titles of `products` for image-title pairs per `pairs.title_*`; `checker` None turns the filter off
    (every weight 1.0, nothing refused).

    The titles are judged against the whole catalog (`products` table), so a boilerplate title shared across
    categories and each category's own words are seen even where a product has no usable image.
    """
    cfg = ws.config.pairs
    if checker is None:
        return TitleOutcome(weight=dict.fromkeys(products, 1.0), counts=dict.fromkeys(REFUSAL_REASONS, 0))
    table = all_products(ws, ["product_id", "title", "category", "top_category", "source_file", "source_line"])
    # Columns, not a dict per catalog product; the titles are judged against the whole catalog all the same.
    cat = {c: table.column(c).to_pylist() for c in ("product_id", "title", "category", "top_category")}
    v = judge_titles(cat["title"], cat["category"], cat["top_category"],
                     min_words=cfg.title_min_words, max_words=cfg.title_max_words,
                     min_word_share=cfg.title_min_word_share, max_top_categories=cfg.title_max_top_categories,
                     mismatch_weight=cfg.title_mismatch_weight, checker=checker)
    out = TitleOutcome(weight={}, counts=dict.fromkeys(REFUSAL_REASONS, 0))
    for k, (p, refusal, ok, w) in enumerate(zip(cat["product_id"], v.refusal, v.consistent.tolist(),
                                                v.weight.tolist())):
        if p not in products:
            continue
        out.weight[p] = w
        if refusal is not None:
            out.counts[refusal.reason] += 1
            out.refused.append(QuarantineRecord(
                reason=refusal.reason, detail=f"product {p}: {refusal.detail}; its image-title pairs are dropped "
                                              "(its images are kept)",
                source=table.column("source_file")[k].as_py(), line=table.column("source_line")[k].as_py(),
                record_id=p, field="title", value=cat["title"][k]))
        elif not ok:
            out.downweighted += 1
    return out
