"""The stage registry: every stage declared by the config sections, tables and resources it reads and writes.

Everything that composes stages derives from these declarations: `visprep run`'s order (a topological order of the
reads and writes, `plan`), the freshness of a stage (its last good run read the same fingerprints, with the same
sections, and its outputs are as it left them: `visprep.pipeline.is_up_to_date`), the run record's `reads` and
`writes` (filled by `Workspace.run` from here, so no stage fingerprints its own inputs), the CLI's per-stage
commands, and the stage graph in docs/architecture.md (`mermaid`). Each table has exactly one writer
(`visprep.schema.WRITERS` is checked against `writers()` by the tests).

A *resource* is something a stage reads or writes that is not a table: the feature store's vectors (one resource
per writer, so that the synth views' vectors do not make a reader of the catalog's vectors stale), the export's
shards. Its fingerprint function is named in `RESOURCES`.

This module imports no stage: bodies, conditions and fingerprints are named as "module:function" and imported
when called, so that `import visprep.stages` stays cheap (the workspace imports it on every run).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from visprep.config import VisprepConfig
    from visprep.workspace import Workspace


@dataclass
class StageOutput:
    """What a table stage's computation returns for the runner to write (`visprep.pipeline.execute`): whole tables
    (each one the stage declares among its writes; a table equal to the stored one, run ids aside, is not rewritten,
    so its readers stay up to date) or parts of one (the mine stage's one part per miner), refused records by quarantine key (one quarantine part per key, replaced), the
    run record's counts, metrics and notes, and the result the caller and the CLI get."""

    tables: dict[str, Any] = field(default_factory=dict)  # name -> pyarrow.Table
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {part: pyarrow.Table}, in order
    quarantine: dict[str, list[Any]] = field(default_factory=dict)  # key -> [QuarantineRecord]
    counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    result: Any = None


@dataclass(frozen=True)
class Option:
    """A keyword option a stage's body takes, exposed by its CLI command as `--name`."""

    name: str
    type: type
    default: Any
    help: str
    flag: str | None = None  # the CLI flag when it is not `--name`


@dataclass(frozen=True)
class Stage:
    """One stage: what it reads and writes, which config sections it depends on, and its body.

    `body` is "module:function" called as `function(ws, progress, **options)`. An *incremental* stage (fetch,
    inspect, embed, synth, embed_views) is always called and does only the missing work; a *table* stage rewrites its
    tables and is skipped while up to date. `reads_if` names a function of the config returning reads that depend
    on it (dedup reads the vectors only when its rule uses them); `applies` a function of the workspace telling
    whether there is anything to work on (popularity needs the events stage's tables). `per_batch` names the
    per-record function an engine maps over batches of records (stages whose work is per record).
    """

    name: str
    summary: str
    sections: tuple[str, ...]  # incl. sections of shared views it reads (`[pairs]` floors of `usable_images`)
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    body: str
    incremental: bool = False
    in_run: bool = True
    reads_if: str | None = None
    applies: str | None = None
    per_batch: str | None = None
    options: tuple[Option, ...] = ()

    def all_reads(self, config: VisprepConfig) -> tuple[str, ...]:
        """The declared reads plus those the config adds (`reads_if`), in declaration order, without repeats."""
        extra = tuple(_resolve(self.reads_if)(config)) if self.reads_if else ()
        return tuple(dict.fromkeys(self.reads + extra))

    def run(self, ws: Workspace, progress: Callable[[int, int], None] | None = None, **options: Any) -> Any:
        """Call the stage's body (no freshness check: `visprep.pipeline.run_stage` decides that)."""
        return _resolve(self.body)(ws, progress, **options)

    def has_work(self, ws: Workspace) -> bool:
        """Whether the stage has anything to work on in `ws` (its `applies` condition; True without one)."""
        return bool(_resolve(self.applies)(ws)) if self.applies else True


def _resolve(ref: str) -> Callable[..., Any]:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


_B = "visprep.stage_bodies:"

STAGES: tuple[Stage, ...] = (
    # --- sources (not part of `visprep run`: they read files, a broker or raters' answers) ---
    Stage("catalog", "Ingest catalog files (CSV, JSONL, Parquet) into products and product_images.",
          ("catalog",), (), ("products", "product_images"), _B + "catalog", in_run=False),
    Stage("events", "Ingest interaction events (files or Kafka) into events and interaction_pairs.",
          ("events",), ("products",), ("events", "interaction_pairs"), _B + "not_composable", in_run=False),
    Stage("labels", "Ingest raters' judgments into the evaluation tables.",
          ("labels",), ("products",), ("eval_queries", "judgments", "eval_qrels", "label_agreement", "rater_stats"),
          _B + "not_composable", in_run=False),
    Stage("queries", "Clean user query photos into the image store and queries.",
          ("queries",), (), ("queries",), _B + "not_composable", in_run=False,
          per_batch="visprep.queries.clean:clean_query_batch"),
    # --- the pipeline ---
    Stage("fetch", "Fetch every image not yet in the store (resumable).",
          ("fetch",), ("product_images", "products"), ("urls",), _B + "fetch", incremental=True,
          per_batch="visprep.fetch.stage:fetch_batch",
          options=(Option("limit", int, None, "Fetch at most this many URLs."),)),
    Stage("inspect", "Decode each stored image once: size, format, orientation, pHash, blur, signature.",
          ("inspect",), ("urls", "product_images"), ("images",), _B + "inspect", incremental=True,
          per_batch="visprep.images.stage:inspect_batch"),
    Stage("embed", "Embed the decoded catalog images that have no current vector (incremental).",
          ("embed",), ("images",), ("features",), _B + "embed", incremental=True,
          per_batch="visprep.embed.stage:embed_batch",
          options=(Option("model", str, None, "Registered embedder name (default: the embed section's model)."),
                   Option("import_path", Path, None, "Import a trainer's (id, vector) Parquet (a checkpoint's "
                          "embeddings) instead of embedding; needs --model-id.", flag="--import"),
                   Option("model_id", str, None, "Feature store the --import vectors go into (then `visprep mine "
                                                 "--model ID`)."))),
    Stage("dedup", "Group near-duplicate products (hashes, pHash, titles, dedup.rule, colour/brand vetoes).",
          ("dedup",), ("products", "product_images", "urls", "images"), ("product_groups", "duplicate_edges"),
          _B + "dedup", reads_if=_B + "dedup_reads", per_batch="visprep.dedup.visual:signature_batch"),
    Stage("split", "Assign products to splits by a hash of their duplicate group.",
          ("split", "labels"), ("products", "product_groups", "eval_qrels"), ("splits",), _B + "split"),
    Stage("synth", "Make synthetic views of train products (background, framing, colour variants).",
          ("synthetic",), ("products", "product_images", "urls", "images", "splits"),
          ("synthetic_views", "synthetic_products", "synthetic_product_images", "synthetic_images"),
          _B + "synth", incremental=True, per_batch="visprep.synthetic.stage:render_batch"),
    Stage("embed_views", "Embed the synthetic views that have no current vector (incremental).",
          ("embed",), ("synthetic_images",), ("view_features",), _B + "embed_views", incremental=True,
          per_batch="visprep.embed.stage:embed_batch"),
    Stage("quality", "Flag likely mislabelled products (confident learning) into label_issues.",
          ("quality",), ("products", "product_images", "urls", "images"), ("label_issues",), _B + "quality", reads_if=_B + "quality_reads",
          applies="visprep.quality.stage:quality_applies",
          options=(Option("embeddings", str, None, "(id, vector) Parquet; default: quality.embeddings, else the "
                                                   "feature store."),)),
    Stage("pairs", "Build training pairs (same product, synthetic views, image-title), applying quality.policy.",
          ("pairs", "quality"),
          ("products", "product_images", "urls", "images", "splits", "interaction_pairs", "synthetic_views",
           "synthetic_products", "synthetic_product_images", "synthetic_images", "label_issues"),
          ("pairs",), _B + "pairs"),
    Stage("mix", "Mix user photos linked by visual-search interactions into user_pairs (mix.fraction; 0 empties "
          "it).",
          ("mix", "quality", "labels", "pairs"),
          ("pairs", "interaction_pairs", "queries", "eval_queries", "splits", "product_images", "urls", "images",
           "products", "label_issues", "synthetic_views", "synthetic_products", "synthetic_product_images",
           "synthetic_images"),
          ("user_pairs",), _B + "mix", applies=_B + "mix_applies"),
    Stage("shift", "Catalog vs user-photo shift: domain-classifier AUC, feature drift, verdict.",
          ("shift", "embed"), ("queries", "images", "product_images", "urls"), ("domain_shift", "user_features"),
          _B + "shift", applies="visprep.quality.shift:shift_applies"),
    Stage("mine", "Mine negatives (random, other-category, brand, ANN hard negatives behind the guard).",
          ("mining", "pairs"),
          ("products", "pairs", "splits", "product_images", "urls", "images", "interaction_pairs", "product_groups",
           "synthetic_views", "synthetic_products", "synthetic_product_images", "synthetic_images"),
          ("negatives",), _B + "mine", reads_if=_B + "mine_reads",
          options=(Option("model", str, None, "Feature store (model id) the ann miner reads, e.g. a checkpoint "
                                              "imported with `visprep embed --import`."),)),
    Stage("popularity", "Per-product exposure, re-sampling weights and logQ (popularity).",
          ("popularity",), ("events", "interaction_pairs", "products", "synthetic_products"), ("popularity",),
          _B + "popularity",
          applies=_B + "has_interactions"),
    Stage("sample", "Plan P x K batches (batch_plan), stratified by category, no group twice per batch.",
          ("sampling", "pairs"),
          ("products", "product_images", "urls", "splits", "images", "interaction_pairs", "user_pairs", "pairs",
           "popularity", "synthetic_views", "synthetic_products", "synthetic_product_images", "synthetic_images"),
          ("batch_plan",), _B + "sample"),
    Stage("export", "Write WebDataset shards, a manifest and a sample index per split.",
          ("preprocess", "export", "pairs"),
          ("pairs", "products", "product_images", "urls", "images", "splits", "user_pairs", "queries", "eval_queries",
           "synthetic_views", "synthetic_products", "synthetic_product_images", "synthetic_images"),
          ("shards",), _B + "export", per_batch="visprep.export.stage:preprocess_batch"),
    # --- after the pipeline: they read what it wrote and write only their own results ---
    Stage("evaluate", "Evaluate a model's retrieval on the judged eval queries.",
          ("evaluate",), ("eval_qrels", "products", "splits"), ("eval_metrics", "eval_query_scores"),
          _B + "not_composable", in_run=False),
    Stage("experiment", "Train a small head per data-preparation variant; evaluate each on the judgments.",
          ("experiment", "training", "augment"),
          ("eval_qrels", "splits", "pairs", "negatives", "batch_plan", "user_pairs"), ("experiment_results",),
          _B + "not_composable", in_run=False),
)

RESOURCES: dict[str, str] = {
    "features": "visprep.views.fingerprints:catalog_features",
    "view_features": "visprep.views.fingerprints:view_features",
    "user_features": "visprep.views.fingerprints:user_features",
    "model_features": "visprep.views.fingerprints:mining_model_features",
    "quality_embeddings": "visprep.views.fingerprints:quality_embeddings",
    "shards": "visprep.views.fingerprints:shards",
}
"""Non-table things stages read or write, and the function fingerprinting each now ("module:function"(ws))."""

BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}


def get(name: str) -> Stage:
    """The stage called `name`; unknown names raise with the list of stages."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; stages: {', '.join(BY_NAME)}") from None


def writers() -> dict[str, str]:
    """Each table or resource -> the one stage that writes it (a second writer raises: the registry is wrong)."""
    out: dict[str, str] = {}
    for s in STAGES:
        for w in s.writes:
            if w in out:
                raise ValueError(f"{w!r} has two writers, {out[w]!r} and {s.name!r}: each table has one writer")
            out[w] = s.name
    return out


def fingerprint(ws: Workspace, name: str) -> str | None:
    """The fingerprint of table or resource `name` now (None for a resource that does not exist)."""
    if name in RESOURCES:
        return _resolve(RESOURCES[name])(ws)
    return ws.table_fingerprint(name)


def fingerprints(ws: Workspace, names: Sequence[str]) -> dict[str, str | None]:
    """`fingerprint` of each of `names`."""
    return {n: fingerprint(ws, n) for n in names}


def order(stages: Sequence[Stage], config: VisprepConfig) -> list[Stage]:
    """`stages` in an order where each runs after the writers of what it reads (a topological order; ties keep
    the registry's order); a cycle raises naming the stages in it."""
    chosen = {s.name: s for s in stages}
    by_output = {w: s.name for s in stages for w in s.writes}
    needs = {s.name: {by_output[r] for r in s.all_reads(config) if r in by_output} - {s.name} for s in stages}
    rank = {s.name: k for k, s in enumerate(STAGES)}
    done: list[Stage] = []
    left = dict(needs)
    while left:
        ready = sorted((n for n, deps in left.items() if not deps & left.keys()), key=lambda n: rank.get(n, 0))
        if not ready:
            cycle = _cycle_members(left)
            raise ValueError(f"the stages {sorted(cycle)} read each other's tables in a cycle: "
                             + "; ".join(f"{n} reads what {', '.join(sorted(left[n] & cycle))} writes"
                                         for n in sorted(cycle)))
        done.append(chosen[ready[0]])
        del left[ready[0]]
    return done


def _cycle_members(needs: dict[str, set[str]]) -> set[str]:
    """The stages of `needs` on a cycle or between cycles: drop, again and again, those nothing left needs."""
    left = set(needs)
    while True:
        needed = {d for n in left for d in needs[n] & left}
        if needed >= left:
            return left
        left &= needed


def plan(config: VisprepConfig) -> list[Stage]:
    """The stages `visprep run` runs for `config` (`pipeline.stages`), in dependency order."""
    enabled = set(config.pipeline.stages)
    return order([s for s in STAGES if s.in_run and s.name in enabled], config)


def upstream(name: str, config: VisprepConfig) -> list[Stage]:
    """The pipeline stages `name` depends on, directly or not, in run order (for `--with-deps`)."""
    by_output = {w: s for s in STAGES if s.in_run for w in s.writes}
    seen: dict[str, Stage] = {}
    todo = [get(name)]
    while todo:
        for r in todo.pop().all_reads(config):
            w = by_output.get(r)
            if w is not None and w.name != name and w.name not in seen:
                seen[w.name] = w
                todo.append(w)
    return [s for s in plan(config) if s.name in seen]


def downstream(names: Sequence[str], config: VisprepConfig) -> list[str]:
    """The pipeline stages that read, directly or not, what any of `names` writes (themselves excluded)."""
    stages = plan(config)
    hit: set[str] = set()
    outputs = {w for n in names for w in get(n).writes}
    for s in stages:  # run order: a reader comes after its writers
        if s.name not in names and set(s.all_reads(config)) & outputs:
            hit.add(s.name)
            outputs |= set(s.writes)
    return [s.name for s in stages if s.name in hit]


def mermaid(config: VisprepConfig) -> str:
    """The stage graph as a Mermaid flowchart: pipeline stages as boxes, the others (sources, evaluation) rounded;
    an edge where a stage reads what another writes, labelled with those tables, left out where a longer path
    already orders the two (a transitive reduction: `visprep stages` lists every read)."""
    by_output = {w: s.name for s in STAGES for w in s.writes}
    edges: dict[tuple[str, str], list[str]] = {}
    for s in STAGES:
        for r in s.all_reads(config):
            w = by_output.get(r)
            if w is not None and w != s.name:
                edges.setdefault((w, s.name), []).append(r)
    succ: dict[str, set[str]] = {}
    for a, b in edges:
        succ.setdefault(a, set()).add(b)

    def longer_path(a: str, b: str) -> bool:
        todo, seen = [n for n in succ.get(a, ()) if n != b], set()
        while todo:
            n = todo.pop()
            if n == b:
                return True
            if n not in seen:
                seen.add(n)
                todo.extend(succ.get(n, ()))
        return False

    lines = ["flowchart LR"]
    lines += [f'  {s.name}["{s.name}"]' if s.in_run else f'  {s.name}(["{s.name}"])' for s in STAGES]
    for (a, b), tables in edges.items():
        if not longer_path(a, b):
            lines.append(f"  {a} -->|{', '.join(tables)}| {b}")
    return "\n".join(lines) + "\n"
