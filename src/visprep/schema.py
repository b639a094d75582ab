"""The Arrow schema of every workspace table, defined once."""

from __future__ import annotations

import pyarrow as pa

_TS = pa.timestamp("us", tz="UTC")

PRODUCTS = pa.schema(
    [
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("category_path", pa.list_(pa.string())),
        pa.field("top_category", pa.string()),
        pa.field("description", pa.string()),
        pa.field("brand", pa.string()),
        pa.field("color", pa.string()),
        pa.field("material", pa.string()),
        pa.field("size", pa.string()),
        pa.field("price", pa.float64()),
        pa.field("seller", pa.string()),
        pa.field("inventory", pa.int64()),
        pa.field("attributes", pa.string()),  # JSON object of the extra columns
        pa.field("image_urls", pa.list_(pa.string())),
        pa.field("source_file", pa.string()),
        pa.field("source_line", pa.int64()),
        pa.field("row_hash", pa.string()),
        pa.field("updated_run", pa.string()),
    ]
)

PRODUCT_IMAGES = pa.schema(
    [
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("position", pa.int32()),
        pa.field("url", pa.string(), nullable=False),
        pa.field("source", pa.string()),  # catalog | synthetic | user
        pa.field("recipe", pa.string()),  # JSON recipe of a synthetic view, else null
    ]
)

URLS = pa.schema(
    [
        pa.field("url", pa.string(), nullable=False),
        pa.field("status", pa.string()),  # ok, or a failure code of visprep.fetch
        pa.field("image_id", pa.string()),  # sha256 of the stored bytes
        pa.field("format", pa.string()),
        pa.field("bytes", pa.int64()),
        pa.field("http_status", pa.int32()),
        pa.field("attempts", pa.int32()),
        pa.field("reason", pa.string()),
        pa.field("final_url", pa.string()),
        pa.field("fetched_at", _TS),
        pa.field("run_id", pa.string()),
    ]
)

IMAGES = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("status", pa.string()),  # ok | corrupt | truncated | too_many_pixels | ...
        pa.field("reason", pa.string()),
        pa.field("format", pa.string()),
        pa.field("bytes", pa.int64()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("exif_orientation", pa.int8()),
        pa.field("phash", pa.uint64()),
        pa.field("blur", pa.float32()),
        pa.field("progressive", pa.bool_()),
        pa.field("mode", pa.string()),
        pa.field("run_id", pa.string()),
        # Crop/border-tolerant signature (visprep.images.signature), null on rows inspected before it existed:
        pa.field("phash_trimmed", pa.uint64()),  # pHash of the image with uniform margins trimmed
        pa.field("phash_trimmed_center70", pa.uint64()),  # of the trimmed region's central 70 %
        pa.field("phash_center50", pa.uint64()),  # of the whole image's central 50 %
        pa.field("fg_l", pa.float32()),  # foreground median CIELAB L* minus the backdrop's (OpenCV 8-bit scale)
        pa.field("fg_a", pa.float32()),  # foreground median a*
        pa.field("fg_b", pa.float32()),  # foreground median b*
    ]
)

SPLITS = pa.schema(
    [
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("group_id", pa.string()),
        pa.field("split", pa.string()),
    ]
)

PAIRS = pa.schema(
    [
        pa.field("anchor_id", pa.string(), nullable=False),
        pa.field("positive_id", pa.string()),  # null for image_title: the text is in positive_text
        pa.field("positive_text", pa.string()),
        pa.field("kind", pa.string()),  # same_product | image_title | ...
        pa.field("weight", pa.float32()),
        pa.field("anchor_product_id", pa.string()),
        pa.field("positive_product_id", pa.string()),
        pa.field("split", pa.string()),
    ]
)

NEGATIVES = pa.schema(
    [
        pa.field("anchor_id", pa.string(), nullable=False),
        pa.field("negative_id", pa.string(), nullable=False),
        pa.field("kind", pa.string()),  # other_category | ...
        pa.field("score", pa.float32()),  # similarity when known (mined), else null
        pa.field("rank", pa.int32()),
        pa.field("anchor_product_id", pa.string()),
        pa.field("negative_product_id", pa.string()),
        pa.field("split", pa.string()),
    ]
)

QUARANTINE = pa.schema(
    [
        pa.field("stage", pa.string(), nullable=False),
        pa.field("run_id", pa.string()),
        pa.field("source", pa.string()),  # file path or URL the record came from
        pa.field("line", pa.int64()),  # 1-based line (or row) in that source, when it has lines
        pa.field("record_id", pa.string()),  # product_id / image_id / url, when known
        pa.field("field", pa.string()),
        pa.field("value", pa.string()),
        pa.field("reason", pa.string()),  # short code
        pa.field("detail", pa.string()),  # human-readable explanation
        pa.field("ts", _TS),
    ]
)

# --- events tables ---

EVENTS = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("ts", _TS, nullable=False),
        pa.field("day", pa.date32(), nullable=False),  # UTC day of ts: the partition key (part file names)
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("session_id", pa.string(), nullable=False),
        pa.field("type", pa.string(), nullable=False),  # search | impression | click | add_to_cart | purchase | view
        pa.field("query_id", pa.string()),
        pa.field("query_image_id", pa.string()),
        pa.field("product_id", pa.string()),
        pa.field("position", pa.int32()),  # 1-based rank shown
        pa.field("source", pa.string()),  # file path or kafka://topic/partition
        pa.field("line", pa.int64()),  # line / row in a file, offset in a Kafka partition
    ]
)

INTERACTION_PAIRS = pa.schema(
    [
        pa.field("anchor_id", pa.string(), nullable=False),
        pa.field("anchor_type", pa.string(), nullable=False),  # query | product
        pa.field("anchor_image_id", pa.string()),  # the query image of a visual search, when known
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # click | add_to_cart | purchase | coview | skip_above
        pa.field("count", pa.int64(), nullable=False),
        pa.field("exposures", pa.int64()),  # result lists of the anchor that showed the product
        pa.field("mean_position", pa.float64()),
        pa.field("raw_weight", pa.float64()),  # signal weight x count
        pa.field("ips_weight", pa.float64()),  # signal weight x sum of 1/propensity(rank)
        pa.field("log_q", pa.float64()),  # log sampling frequency of the product among positives (logQ)
        pa.field("debiased_weight", pa.float64()),  # ips_weight x popularity correction
    ]
)

# --- labels / evaluation tables ---

EVAL_QUERIES = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),  # image id (sha256) of the query image
        pa.field("query_ref", pa.string()),  # as written in the rater file: an image id, a path or a URL
        pa.field("format", pa.string()),
        pa.field("source_file", pa.string()),
        pa.field("run_id", pa.string()),
    ]
)

JUDGMENTS = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("rater_id", pa.string(), nullable=False),
        pa.field("grade", pa.int8(), nullable=False),  # 0-4, see visprep.labels.rubric
        pa.field("batch", pa.string()),  # the file's `batch` column, else the file name
        pa.field("ts", _TS),
        pa.field("comment", pa.string()),
        pa.field("query_ref", pa.string()),
        pa.field("source_file", pa.string()),
        pa.field("source_line", pa.int64()),
        pa.field("run_id", pa.string()),
    ]
)

EVAL_QRELS = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("grade", pa.int8(), nullable=False),  # the consensus grade
        pa.field("grade_name", pa.string()),
        pa.field("method", pa.string()),  # median | majority
        pa.field("n_raters", pa.int32()),
        pa.field("mean_grade", pa.float32()),
        pa.field("spread", pa.int8()),  # max - min of the raters' grades
        pa.field("relabel", pa.bool_()),  # raters disagree by >= labels.relabel_spread grades
        pa.field("grades", pa.list_(pa.int8())),  # every rater's grade, sorted
    ]
)

LABEL_AGREEMENT = pa.schema(
    [
        pa.field("batch", pa.string(), nullable=False),  # "*" is all batches together
        pa.field("n_items", pa.int64()),  # (query, product) pairs with >= 2 raters
        pa.field("n_raters", pa.int32()),
        pa.field("n_judgments", pa.int64()),
        pa.field("alpha_ordinal", pa.float64()),  # Krippendorff's alpha, ordinal metric
        pa.field("fleiss_kappa", pa.float64()),  # Fleiss' kappa, items with a varying number of raters
        pa.field("cohen_kappa_mean", pa.float64()),  # mean pairwise Cohen's kappa (unweighted)
        pa.field("cohen_kappa_quadratic_mean", pa.float64()),  # mean pairwise quadratic-weighted kappa
        pa.field("relabel_items", pa.int64()),
    ]
)

RATER_STATS = pa.schema(
    [
        pa.field("rater_id", pa.string(), nullable=False),
        pa.field("n_judgments", pa.int64()),
        pa.field("n_batches", pa.int32()),
        pa.field("n_compared", pa.int64()),  # judgments of items with >= 2 other raters
        pa.field("exact_agreement", pa.float64()),  # share equal to the consensus of the OTHER raters
        pa.field("mean_abs_error", pa.float64()),  # mean |grade - consensus of the others|
        pa.field("bias", pa.float64()),  # mean (grade - consensus of the others): > 0 grades too high
        pa.field("kappa_quadratic", pa.float64()),  # quadratic-weighted kappa against that consensus
        pa.field("suspect", pa.bool_()),  # kappa_quadratic below labels.suspect_kappa
    ]
)

EVAL_METRICS = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),  # ndcg@10, recall@10, map, mrr
        pa.field("category", pa.string()),  # "*" is all queries
        pa.field("value", pa.float64()),
        pa.field("ci_low", pa.float64()),
        pa.field("ci_high", pa.float64()),
        pa.field("n_queries", pa.int64()),
        pa.field("run_id", pa.string()),
    ]
)

EVAL_QUERY_SCORES = pa.schema(
    [
        pa.field("model", pa.string(), nullable=False),
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("category", pa.string()),
        pa.field("run_id", pa.string()),
    ]
)

# --- embed / mining / sampling tables ---

BATCH_PLAN = pa.schema(
    [
        pa.field("split", pa.string(), nullable=False),
        pa.field("epoch", pa.int32(), nullable=False),
        pa.field("batch", pa.int32(), nullable=False),
        pa.field("class_index", pa.int16(), nullable=False),  # 0..P-1 within the batch
        pa.field("slot", pa.int16(), nullable=False),  # 0..K-1 within the class
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("group_id", pa.string()),
        pa.field("top_category", pa.string()),
        pa.field("repeat", pa.bool_()),  # beyond the epoch's covering visit (top-up, over-sampling, filler)
        pa.field("weight", pa.float32()),  # popularity weight of the product (1 when no events)
    ]
)

# --- queries / augmentation tables ---

QUERIES = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),  # the path or URL given
        pa.field("listing", pa.string()),  # the CSV/JSONL that listed it, when one did
        pa.field("line", pa.int64()),  # 1-based line/row in that listing
        pa.field("input_sha256", pa.string()),  # sha256 of the bytes as uploaded
        pa.field("image_id", pa.string()),  # the cleaned image in the store (null when rejected)
        pa.field("status", pa.string(), nullable=False),  # accepted | rejected
        pa.field("reason", pa.string()),  # null | fetch_<status> | decode_<reason> | blurred | too_small | nsfw
        pa.field("detail", pa.string()),
        pa.field("width", pa.int32()),  # of the cleaned image
        pa.field("height", pa.int32()),
        pa.field("steps", pa.string()),  # JSON list: each step's name, decision, numbers and ms
        pa.field("run_id", pa.string()),
        pa.field("ts", _TS),
    ]
)

SYNTHETIC_VIEWS = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),  # the synthetic image in the store
        pa.field("source_image_id", pa.string(), nullable=False),  # the catalog image it was made from
        pa.field("source_product_id", pa.string(), nullable=False),
        pa.field("product_id", pa.string(), nullable=False),  # source_product_id, or a new id for a colour variant
        pa.field("relation", pa.string(), nullable=False),  # same_product | color_variant
        pa.field("grade", pa.int8()),  # relevance to the source product: 4 exact (same SKU), 3 same style
        pa.field("op", pa.string()),  # replace_background | reframe | recolor | <plug-in op>
        pa.field("recipe", pa.string()),  # JSON recipe (every parameter, including random draws)
        pa.field("source", pa.string()),  # always "synthetic"
        pa.field("split", pa.string()),  # split of the source product when known
        pa.field("generator", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("color", pa.string()),  # declared colour of a colour variant (its new product's `color`)
        pa.field("params_key", pa.string()),  # hash of the generator settings that made it: reused while equal
    ]
)

# --- dedup / quality tables ---

PRODUCT_GROUPS = pa.schema(
    [
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("group_id", pa.string(), nullable=False),  # the smallest product_id of the group: stable
        pa.field("canonical_product_id", pa.string(), nullable=False),  # the member kept as the group's face
        pa.field("group_size", pa.int32()),
    ]
)

DUPLICATE_EDGES = pa.schema(
    [
        pa.field("product_a", pa.string(), nullable=False),  # product_a < product_b
        pa.field("product_b", pa.string(), nullable=False),
        # identical_image | phash | trimmed_phash | title | color | declared_color_differs | declared_brand_differs
        pa.field("signal", pa.string(), nullable=False),
        # phash/trimmed_phash: Hamming bits of the closest image pair; identical_image: 0; color: chroma distance
        pa.field("distance", pa.int16()),
        pa.field("similarity", pa.float32()),  # title: rapidfuzz score / 100
        pa.field("image_a", pa.string()),  # the image pair that gave the evidence (image signals)
        pa.field("image_b", pa.string()),
        pa.field("accepted", pa.bool_()),  # the pair satisfied dedup.rule
        pa.field("run_id", pa.string()),
    ]
)

LABEL_ISSUES = pa.schema(
    [
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("given_label", pa.string()),
        pa.field("predicted_label", pa.string()),  # argmax of the out-of-fold probabilities
        pa.field("label_quality", pa.float32()),  # self-confidence of the given label: low = suspect
        pa.field("rank", pa.int32()),  # 1 = most suspect
        pa.field("action", pa.string()),  # exclude | down_weight | keep (quality.policy)
        pa.field("run_id", pa.string()),
    ]
)

# quality: popularity re-sampling weights and the catalog-vs-user-photo shift report
POPULARITY = pa.schema(
    [
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("exposures", pa.int64()),  # impressions of the product in the events table
        pa.field("interactions", pa.int64()),  # positive interaction pairs' counts (skip-above excluded)
        pa.field("weight", pa.float64()),  # re-sampling weight (1 + interactions)^(-1/T), mean 1 over products
        pa.field("log_q_raw", pa.float64()),  # log frequency among positives before re-sampling (events' log_q)
        pa.field("log_q", pa.float64()),  # log frequency among positives after re-sampling: the logQ term to use
        pa.field("run_id", pa.string()),
    ]
)

DOMAIN_SHIFT = pa.schema(
    [
        pa.field("check", pa.string(), nullable=False),  # domain_auc | brightness | blur | resolution | aspect
        pa.field("value", pa.float64()),  # AUC, or the KS statistic of a feature
        pa.field("p_value", pa.float64()),  # KS p-value; AUC: permutation p-value
        pa.field("psi", pa.float64()),  # population stability index (features)
        pa.field("catalog_median", pa.float64()),
        pa.field("user_median", pa.float64()),
        pa.field("threshold", pa.string()),  # the rule that decides `shift`, in words
        pa.field("shift", pa.bool_()),
        pa.field("n_catalog", pa.int64()),
        pa.field("n_user", pa.int64()),
        pa.field("run_id", pa.string()),
    ]
)

# experiment: one row per (experiment run, variant, metric)
EXPERIMENT_RESULTS = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # ok | skipped
        pa.field("reason", pa.string()),  # why a variant was skipped
        pa.field("control", pa.string()),  # the variant this one isolates its choice against
        pa.field("seeds", pa.int32()),
        pa.field("steps", pa.int32()),
        pa.field("metric", pa.string()),  # ndcg@10 | recall@1 | recall@10 | map (null on a skipped row)
        pa.field("value", pa.float64()),  # mean over queries of the per-query mean over seeds
        pa.field("ci_low", pa.float64()),  # bootstrap over queries
        pa.field("ci_high", pa.float64()),
        pa.field("diff_vs_frozen", pa.float64()),
        pa.field("p_vs_frozen", pa.float64()),  # paired sign-flip randomisation test over queries
        pa.field("diff_vs_in_batch", pa.float64()),
        pa.field("p_vs_in_batch", pa.float64()),
        pa.field("diff_vs_control", pa.float64()),
        pa.field("diff_ci_low", pa.float64()),  # bootstrap CI of the paired difference against the control
        pa.field("diff_ci_high", pa.float64()),
        pa.field("p_vs_control", pa.float64()),
        pa.field("queries", pa.int64()),
        pa.field("seconds", pa.float64()),  # training and evaluation time of the variant, all seeds
    ]
)

TABLES: dict[str, pa.Schema] = {
    "products": PRODUCTS,
    "product_images": PRODUCT_IMAGES,
    "urls": URLS,
    "images": IMAGES,
    "splits": SPLITS,
    "pairs": PAIRS,
    "negatives": NEGATIVES,
    "quarantine": QUARANTINE,
    # --- events tables ---
    "events": EVENTS,
    "interaction_pairs": INTERACTION_PAIRS,
    # --- labels / evaluation tables ---
    "eval_queries": EVAL_QUERIES,
    "judgments": JUDGMENTS,
    "eval_qrels": EVAL_QRELS,
    "label_agreement": LABEL_AGREEMENT,
    "rater_stats": RATER_STATS,
    "eval_metrics": EVAL_METRICS,
    "eval_query_scores": EVAL_QUERY_SCORES,
    # --- embed / mining / sampling tables ---
    "batch_plan": BATCH_PLAN,
    # --- queries / augmentation tables ---
    "queries": QUERIES,
    "synthetic_views": SYNTHETIC_VIEWS,
    # synth's own catalog-shaped tables: read beside products, product_images and images (visprep.views.catalog)
    "synthetic_products": PRODUCTS,  # colour variants, linked to their source in attributes.synthetic
    "synthetic_product_images": PRODUCT_IMAGES,  # views (on their source product) and variant images
    "synthetic_images": IMAGES,  # the facts of each view, computed by synth from the bytes it encoded
    # --- dedup / quality tables ---
    "product_groups": PRODUCT_GROUPS,
    "duplicate_edges": DUPLICATE_EDGES,
    "label_issues": LABEL_ISSUES,
    "popularity": POPULARITY,
    "domain_shift": DOMAIN_SHIFT,
    "user_pairs": PAIRS,  # quality: the user-photo mix's rows (kind user_photo), read beside pairs
    "experiment_results": EXPERIMENT_RESULTS,
}


WRITERS: dict[str, tuple[str, ...]] = {
    "products": ("catalog",), "product_images": ("catalog",), "urls": ("fetch",),
    "images": ("inspect",), "splits": ("split",), "pairs": ("pairs",), "negatives": ("mine",),
    "quarantine": ("*",), "events": ("events",), "interaction_pairs": ("events",), "eval_queries": ("labels",),
    "judgments": ("labels",), "eval_qrels": ("labels",), "label_agreement": ("labels",),
    "rater_stats": ("labels",), "eval_metrics": ("evaluate",), "eval_query_scores": ("evaluate",),
    "batch_plan": ("sample",), "queries": ("queries",), "synthetic_views": ("synth",),
    "synthetic_products": ("synth",), "synthetic_product_images": ("synth",), "synthetic_images": ("synth",),
    "product_groups": ("dedup",), "duplicate_edges": ("dedup",), "label_issues": ("quality",),
    "popularity": ("popularity",), "domain_shift": ("shift",), "user_pairs": ("mix",),
    "experiment_results": ("experiment",),
}
"""The stage run (`Workspace.run` name) that writes each table, its one writer; `Workspace` refuses any other
stage's write. Every stage writes its own quarantine part ("*"). `visprep.stages` declares the same writers (a test
holds the two equal)."""


def schema_for(name: str) -> pa.Schema:
    """Return the schema of table `name`; unknown names raise with the list of valid ones."""
    try:
        return TABLES[name]
    except KeyError:
        raise ValueError(f"unknown table {name!r}; valid tables: {', '.join(sorted(TABLES))}") from None
