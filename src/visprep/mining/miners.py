"""The miners behind one interface: each one turns the item pool into `negatives` rows of its own kind.

A miner is a `Miner` subclass with a `name` (its kind in `negatives` and in `mining.kinds`), the `mining.*` keys
it reads (`config_keys`), and `mine(ctx) -> MinerResult`. `register_miner` adds it to `MINERS`; `mine_stage` runs,
in registration order, every registered miner that `mining.kinds` names. Adding a miner: write the class, register
it, and add its keys to `MiningConfig`.

The built-in miners share one random stream in registration order (random, then brand): the order of `MINERS` is
part of their output, so new miners draw from their own stream (`np.random.default_rng([seed, ...])`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa

from visprep.schema import NEGATIVES
from visprep.views.items import MiningItems

if TYPE_CHECKING:
    from visprep.config import MiningConfig
    from visprep.mining.positives import PositiveSets
    from visprep.workspace import Workspace


def negatives_table(items: MiningItems, rows: np.ndarray, a: np.ndarray, n: np.ndarray, kind: str,
                    rank: np.ndarray, score: np.ndarray | None = None) -> pa.Table:
    """`negatives` rows of pool-local (anchor, negative) index pairs `a`, `n` of pool `rows` of `items`."""
    ga, gn = rows[a], rows[n]
    return pa.table({
        "anchor_id": pa.array(items.image_id[ga].tolist(), pa.string()),
        "negative_id": pa.array(items.image_id[gn].tolist(), pa.string()),
        "kind": pa.array([kind] * len(ga), pa.string()),
        "score": pa.array(score if score is not None else np.full(len(ga), np.nan, np.float32), pa.float32(),
                          mask=None if score is not None else np.ones(len(ga), bool)),
        "rank": pa.array(rank, pa.int32()),
        "anchor_product_id": pa.array(items.product_id[ga].tolist(), pa.string()),
        "negative_product_id": pa.array(items.product_id[gn].tolist(), pa.string()),
        "split": pa.array(items.split[ga].tolist(), pa.string()),
    }, schema=NEGATIVES)


_CODED = ("anchor_id", "negative_id", "kind", "anchor_product_id", "negative_product_id", "split")
_COMPACT_NEGATIVES = pa.schema([pa.field(f.name, pa.dictionary(pa.int32(), pa.string()), f.nullable)
                                if f.name in _CODED else f for f in NEGATIVES])


def compact_negatives_table(items: MiningItems, rows: np.ndarray, a: np.ndarray, n: np.ndarray, kind: str,
                            rank: np.ndarray, score: np.ndarray | None = None) -> pa.Table:
    """`negatives_table`'s rows with the id, product and split columns dictionary-encoded over the item pool's own
    columns (int32 item rows instead of strings: about 30 B a row instead of 200): what a miner holds until the
    stage writes it, when `conform` decodes it to the `negatives` schema."""
    ga, gn = rows[a].astype(np.int32), rows[n].astype(np.int32)

    def coded(indices: np.ndarray, column: str) -> pa.DictionaryArray:
        return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), items.arrow_column(column))

    return pa.table({
        "anchor_id": coded(ga, "image_id"),
        "negative_id": coded(gn, "image_id"),
        "kind": pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(ga), np.int32)), pa.array([kind], pa.string())),
        "score": pa.array(score if score is not None else np.full(len(ga), np.nan, np.float32), pa.float32(),
                          mask=None if score is not None else np.ones(len(ga), bool)),
        "rank": pa.array(rank, pa.int32()),
        "anchor_product_id": coded(ga, "product_id"),
        "negative_product_id": coded(gn, "product_id"),
        "split": coded(ga, "split"),
    }, schema=_COMPACT_NEGATIVES)


def decoded_schema(schema: pa.Schema) -> pa.Schema:
    """`schema` with each dictionary-encoded column given its value type (what `conform` casts it to)."""
    return pa.schema([pa.field(f.name, f.type.value_type, f.nullable) if pa.types.is_dictionary(f.type) else f
                      for f in schema])


@dataclass
class MiningContext:
    """What every miner of one mine run reads.

    Attributes:
        ws: the workspace.
        items: the item pool (`visprep.views.items.load_items`).
        positives: positive group sets of every item.
        pools: item rows of each pool (one per split with `mining.same_split`, else one of every item).
        splits: the split of each pool (None: every split).
        rng: the random stream the built-in miners share, in registration order.
        feature_model: the feature store model id asked for on the command line (None: the configured one).
    """

    ws: Workspace
    items: MiningItems
    positives: PositiveSets
    pools: list[np.ndarray]
    splits: list[str | None]
    rng: np.random.Generator
    feature_model: str | None = None

    @property
    def cfg(self) -> MiningConfig:
        """The `[mining]` section."""
        return self.ws.config.mining


@dataclass
class MinerResult:
    """One miner's output: its `negatives` rows, its counts (unprefixed; the stage prefixes them with the kind),
    and notes for the run record. `write=False`: the miner could not run, and its part of `negatives` is left
    as it was."""

    rows: pa.Table
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    write: bool = True

    def __post_init__(self) -> None:
        # Dictionary-encoded string columns (`compact_negatives_table`) are written decoded, so they pass.
        if decoded_schema(self.rows.schema).remove_metadata() != NEGATIVES.remove_metadata():
            raise ValueError(f"a miner's rows must have the negatives schema, got {self.rows.schema}")


def add_counts(total: dict[str, int], counts: dict[str, Any]) -> None:
    """Add `counts` into `total` (summed over pools)."""
    for name, v in counts.items():
        total[name] = total.get(name, 0) + int(v)


class Miner(ABC):
    """One kind of negatives. Subclasses set `name` and `config_keys` and implement `mine`."""

    name: ClassVar[str]
    config_keys: ClassVar[tuple[str, ...]] = ()

    def inputs(self, ws: Workspace, feature_model: str | None) -> dict[str, str]:
        """Fingerprints of what the miner reads beyond the tables every mine reads (for the run's freshness)."""
        return {}

    @abstractmethod
    def mine(self, ctx: MiningContext) -> MinerResult:
        """Mine this kind's negatives of every pool of `ctx`."""

    def result(self, ctx: MiningContext, parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                           np.ndarray | None]],
               counts: dict[str, int], notes: list[str] | None = None) -> MinerResult:
        """A `MinerResult` from per-pool (pool rows, anchor, negative, rank, score or None) arrays."""
        tables = [compact_negatives_table(ctx.items, rows, a, n, self.name, r, s) for rows, a, n, r, s in parts]
        return MinerResult(pa.concat_tables(tables) if tables else NEGATIVES.empty_table(), counts, notes or [])


MINERS: dict[str, Miner] = {}
"""Every registered miner by name, in registration order (the order they run in)."""


def register_miner(miner: Miner) -> Miner:
    """Add `miner` to `MINERS`; a second miner of the same name is an error (unregister with `MINERS.pop`)."""
    name = getattr(miner, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"miner {type(miner).__name__}: name must be an identifier, got {name!r}")
    if name in MINERS:
        raise ValueError(f"miner {name!r} is already registered ({type(MINERS[name]).__name__})")
    MINERS[name] = miner
    return miner


class OtherCategoryMiner(Miner):
    """Easy negatives: images of another top-level category."""

    name = "other_category"
    config_keys = ("other_category_per_anchor", "seed")

    def mine(self, ctx: MiningContext) -> MinerResult:
        """`other_category_per_anchor` draws of another top category per anchor, per pool."""
        from visprep.mining.other_category import mine_other_category_negatives

        items, counts, parts = ctx.items, {}, []
        rng = np.random.default_rng([ctx.cfg.seed, 1])  # its own stream: the other miners' draws stay as they were
        for rows in ctx.pools:
            a, n, r, c = mine_other_category_negatives(items.top_category[rows], items.image_id[rows],
                                                       items.group[rows], ctx.positives.subset(rows),
                                                       k=ctx.cfg.other_category_per_anchor, rng=rng)
            parts.append((rows, a, n, r, None))
            add_counts(counts, c)
        return self.result(ctx, parts, counts)


class RandomMiner(Miner):
    """Uniform random non-positives."""

    name = "random"
    config_keys = ("random_per_anchor", "seed")

    def mine(self, ctx: MiningContext) -> MinerResult:
        """`random_per_anchor` random non-positives per anchor, per pool (the shared stream)."""
        from visprep.mining.random_negatives import mine_random_negatives

        counts: dict[str, int] = {}
        parts = []
        for rows in ctx.pools:
            a, n, r, c = mine_random_negatives(ctx.items.group[rows], ctx.positives.subset(rows),
                                               k=ctx.cfg.random_per_anchor, rng=ctx.rng)
            parts.append((rows, a, n, r, None))
            add_counts(counts, c)
        return self.result(ctx, parts, counts)


class BrandMiner(Miner):
    """Same category, another brand."""

    name = "brand"
    config_keys = ("brand_per_anchor", "brand_level", "seed")

    def mine(self, ctx: MiningContext) -> MinerResult:
        """`brand_per_anchor` same-category other-brand items per anchor, per pool (the shared stream)."""
        from visprep.mining.brand import mine_brand_negatives

        items, counts, parts = ctx.items, {}, []
        level = items.category if ctx.cfg.brand_level == "category" else items.top_category
        for rows in ctx.pools:
            a, n, r, c = mine_brand_negatives(level[rows], items.brand[rows], items.group[rows],
                                              ctx.positives.subset(rows), k=ctx.cfg.brand_per_anchor, rng=ctx.rng)
            parts.append((rows, a, n, r, None))
            add_counts(counts, c)
        return self.result(ctx, parts, counts)


class SkipAboveMiner(Miner):
    """Behavioural negatives: results shown above a clicked one and skipped (`interaction_pairs`)."""

    name = "skip_above"
    config_keys = ("skip_above_per_anchor",)

    def mine(self, ctx: MiningContext) -> MinerResult:
        """The `skip_above_per_anchor` heaviest skip-above rows per anchor, per pool; not run (its part left as
        it was) without `interaction_pairs`."""
        from visprep.mining.skip_above import mine_skip_above_negatives

        if not ctx.ws.has_table("interaction_pairs"):
            return MinerResult(NEGATIVES.empty_table(), {"skipped_no_interaction_pairs": 1},
                               ["skip_above: no interaction_pairs table (run the events stage first)"], write=False)
        items, counts, parts = ctx.items, {}, []
        inter = ctx.ws.read_table("interaction_pairs")
        for rows in ctx.pools:
            index = {iid: j for j, iid in enumerate(items.image_id[rows].tolist())}
            first: dict[str, int] = {}
            for j, p in enumerate(items.product_id[rows].tolist()):
                first.setdefault(p, j)  # usable_images is ordered by product, position
            a, n, w, r, c = mine_skip_above_negatives(inter, image_index=index, first_image_of_product=first,
                                                      group=items.group[rows], positives=ctx.positives.subset(rows),
                                                      k=ctx.cfg.skip_above_per_anchor)
            parts.append((rows, a, n, r, w))
            add_counts(counts, c)
        return self.result(ctx, parts, counts)


class AnnMiner(Miner):
    """Hard negatives: nearest non-positives in the feature store, in a hardness band, behind the guard;
    re-mined incrementally, searched in the shared index of its (model, pool) (`visprep.views.ann_index`)."""

    name = "ann"
    config_keys = ("model", "ann_per_anchor", "skip_top", "band_max", "relative_margin", "positive_score",
                   "max_similarity", "overfetch_margin", "search", "ivf_nlist", "ivf_nprobe", "hnsw_m",
                   "hnsw_ef_search", "query_batch", "threads", "incremental", "seed")

    def inputs(self, ws: Workspace, feature_model: str | None) -> dict[str, str]:
        """The feature store's fingerprint."""
        from visprep.mining.stage import features_fingerprint

        return {"features": features_fingerprint(ws, feature_model)}

    def mine(self, ctx: MiningContext) -> MinerResult:
        """ANN negatives of every pool, from the feature store of `ann_model_id`."""
        from visprep.embed.store import FeatureStore
        from visprep.mining.ann import positive_scores
        from visprep.mining.guard import FalseNegativeGuard
        from visprep.mining.incremental import AnnState, mine_with_state, positive_signatures
        from visprep.mining.keys import string_keys
        from visprep.mining.stage import ann_model_id, ann_params, ann_state_path
        from visprep.views.ann_index import index_source
        from visprep.views.features import features_root

        ws, items, cfg = ctx.ws, ctx.items, ctx.cfg
        model_id = ann_model_id(ws, ctx.feature_model)
        store = FeatureStore.open_existing(features_root(ws), model_id)
        notes = [f"ann: feature store {model_id}"]
        total: dict[str, int] = {}
        parts = []
        if cfg.threads:
            import faiss

            faiss.omp_set_num_threads(cfg.threads)
        guard = FalseNegativeGuard(relative_margin=cfg.relative_margin, max_similarity=cfg.max_similarity)
        options = {"ivf_nlist": cfg.ivf_nlist, "ivf_nprobe": cfg.ivf_nprobe, "hnsw_m": cfg.hnsw_m,
                   "hnsw_ef_search": cfg.hnsw_ef_search, "seed": cfg.seed}
        params = ann_params(ws, model_id)
        group_keys = string_keys(items.group_id.astype(str).tolist())
        for rows, split in zip(ctx.pools, ctx.splits):
            vecs, found = store.get(items.image_id[rows].tolist())
            add_counts(total, {"no_vector": int((~found).sum())})
            rows = rows[found]
            vecs = vecs[found]
            path = ann_state_path(ws, model_id, split)
            if len(rows) == 0:
                path.unlink(missing_ok=True)
                continue
            group = items.group[rows]
            pos = ctx.positives.subset(rows)
            s_pos = positive_scores(vecs, group=group, positives=pos, how=cfg.positive_score)
            keys = string_keys([f"{p}\x00{i}" for p, i in zip(items.product_id[rows], items.image_id[rows])])
            # A group's key is the same whatever its code this run: codes are renumbered, ids are not.
            key_of_code = np.zeros(int(items.group.max()) + 1, np.uint64)
            key_of_code[items.group] = group_keys
            old = AnnState.load(path) if cfg.incremental else None
            source = index_source(store, items.image_id[rows].tolist(), vecs, search=cfg.search,
                                  options=options, auto_k=cfg.band_max)
            res, state, decision = mine_with_state(
                vecs, group=group, positives=pos, s_pos=s_pos, keys=keys, group_key=group_keys[rows],
                pos_sig=positive_signatures(pos, key_of_code), params=params, old=old, band_max=cfg.band_max,
                k=cfg.ann_per_anchor, skip_top=cfg.skip_top, guard=guard, overfetch_margin=cfg.overfetch_margin,
                search=cfg.search, query_batch=cfg.query_batch, index_options=options, seed=cfg.seed,
                index_source=source)
            state.save(path)
            parts.append((rows, res.anchor, res.negative, res.rank, res.score))
            counts = {k: v for k, v in res.counts.items() if k != "kept"}
            counts["kept"] = len(res.anchor)  # reused anchors' rows included
            for name, v in decision.counts.items():
                counts[name if name in ("remined", "reused", "full_remines") else f"incremental.{name}"] = v
            add_counts(total, counts)
            reason = decision.reason if cfg.incremental else "mining.incremental = false"
            notes.append(f"ann[{split}]: {'full' if decision.full else 'incremental'} re-mine ({reason}): "
                         f"{decision.counts['remined']} anchors re-mined, {decision.counts['reused']} reused")
        return self.result(ctx, parts, total, notes)


for _miner in (OtherCategoryMiner(), RandomMiner(), BrandMiner(), SkipAboveMiner(), AnnMiner()):
    register_miner(_miner)
