"""The `queries` stage: fetch user photos, clean them, store the accepted ones, record every decision.

Writes the cleaned images to the content-addressed store (JPEG), one row per input in `tables/queries`
(rows of earlier runs for other sources are kept; a source cleaned again is replaced), and one quarantine row per
rejected input under this batch's key. Rejected photos are never stored, so nothing downstream (embedding,
shards) can pick them up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from visprep.config import section_params
from visprep.engines import get_engine
from visprep.engines.threads import apply_threads, plan_threads
from visprep.fetch import Fetcher, FetchSettings
from visprep.fetch.stage import client_settings, split_window
from visprep.queries.clean import QueryCleaner, clean_query_batch, cleaner_for
from visprep.queries.inputs import QuerySource, expand_sources
from visprep.schema import QUERIES
from visprep.workspace import QuarantineRecord, Workspace, utcnow

STAGE = "queries"


@dataclass
class QueriesResult:
    """Counts of one queries run."""

    inputs: int = 0
    accepted: int = 0
    rejected: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    run_id: str = ""


QUERY_BATCH = 8
"""Photos per actor call when the cleaning runs on an engine's workers."""


def _fetch_and_clean(fetcher: Fetcher, sources: list[str], cleaner: dict[str, Any] | QueryCleaner, *,
                     store_root: str, jpeg_quality: int, threads: int = 0) -> Iterator[dict[str, Any]]:
    """Yield one `queries` row (source, status, reason, detail, steps; for an accepted photo its image_id and size)
    per source as its fetch finishes: a failed fetch is a rejected row, a fetched photo is cleaned
    (`clean_query_batch`, the cleaned JPEG into the store at `store_root`)."""
    # fetch_many keeps bounded concurrency for URLs; cleaning is CPU work, one photo at a time.
    for fetched in fetcher.fetch_many(sources):
        if not fetched.ok:
            yield {"source": fetched.url, "status": "rejected", "reason": f"fetch_{fetched.status}",
                   "detail": fetched.reason, "steps": "[]"}
        else:
            yield from clean_query_batch([(fetched.url, fetched.data)], cleaner, store_root=store_root,
                                         jpeg_quality=jpeg_quality, threads=threads)


def _clean_here(ws: Workspace, sources: list[str], cleaner: QueryCleaner, jpeg_quality: int
                ) -> Iterator[dict[str, Any]]:
    """`_fetch_and_clean` in this process, with one client for the whole run."""
    with Fetcher(FetchSettings.from_config(ws.config.fetch)) as fetcher:
        yield from _fetch_and_clean(fetcher, sources, cleaner, store_root=str(ws.store.root),
                                    jpeg_quality=jpeg_quality)


def fetch_and_clean_batch(sources: Sequence[str], *, cleaner: dict[str, Any], settings: Mapping[str, Any],
                          store_root: str, jpeg_quality: int, threads: int = 0) -> list[dict[str, Any]]:
    """Fetch and clean a batch of query photos with a client of its own and the cleaner of the `[queries]` section
    `cleaner` (built once per process: an actor keeps its NSFW classifier and detector across batches); one row
    per source, in the order given, without the bytes (`_fetch_and_clean`). The queries stage's per-batch function
    on an engine's workers."""
    with Fetcher(FetchSettings(**settings)) as fetcher:
        rows = {r["source"]: r for r in _fetch_and_clean(fetcher, list(sources), cleaner, store_root=store_root,
                                                          jpeg_quality=jpeg_quality, threads=threads)}
    return [rows[s] for s in sources]


def queries_stage(ws: Workspace, items: Iterable[str | Path], *, cleaner: QueryCleaner | None = None,
                  progress: Callable[[int, int], None] | None = None) -> QueriesResult:
    """Clean the photos `items` names (paths, URLs, or CSV/JSONL listings of them) into workspace `ws`.

    Args:
        ws: the workspace.
        items: photos or listings, as given on the command line.
        cleaner: a cleaner built once (default: from ``ws.config.queries``).
        progress: called as ``progress(advance, total)``.
    """
    sources = expand_sources(items)
    cfg = ws.config.queries
    engine = get_engine(ws.config)
    # A cleaner handed in (tests, notebooks) is a live object: it runs here, whatever the engine.
    remote = engine.remote and cleaner is None
    res = QueriesResult(inputs=len(sources))
    if remote:
        # Each actor builds the cleaner once (NSFW classifier, detector, upscaler), its models single-threaded.
        spec = cfg.model_dump()
        resolved = cleaner_for(spec, threads=1).describe()
    else:
        # One process cleans one photo at a time: its models get every core, OpenCV one thread (the plan's).
        plan = plan_threads()
        apply_threads(plan)
        cleaner = cleaner or QueryCleaner.from_config(cfg, threads=plan.model)
        resolved = cleaner.describe()
    params = {**section_params(ws.config, "queries"), "resolved": resolved}
    with ws.run(STAGE, params) as run:
        res.run_id = run.run_id
        run.inputs = {"sources": len(sources)}
        run.metrics["engine"] = engine.name if remote else "local"
        rows, refused = [], []
        by_source = {s.source: s for s in sources}
        now = utcnow()
        if progress:
            progress(0, len(sources))
        if remote:
            run.metrics["threads"] = {"model": 1, "per": "Ray actor"}
            tasks = engine.slots(0)
            clean = partial(fetch_and_clean_batch, cleaner=spec, store_root=str(ws.store.root),
                            jpeg_quality=cfg.jpeg_quality, threads=1,
                            settings=split_window(client_settings(ws.config.fetch), tasks))
            cleaned_rows: Iterator[dict] = (r for _, out in engine.map_batches(
                clean, [s.source for s in sources], batch_size=QUERY_BATCH, workers=tasks, stateful=True)
                for r in out)
        else:
            run.metrics["threads"] = plan.as_dict()
            cleaned_rows = _clean_here(ws, [s.source for s in sources], cleaner, cfg.jpeg_quality)
        for cleaned in cleaned_rows:
            src: QuerySource = by_source[cleaned["source"]]
            row = {"listing": src.listing, "line": src.line, "run_id": run.run_id, "ts": now, **cleaned}
            if row["status"] == "accepted":
                res.accepted += 1
            else:
                res.rejected += 1
                res.by_reason[row["reason"]] = res.by_reason.get(row["reason"], 0) + 1
                refused.append(QuarantineRecord(reason=row["reason"], detail=row["detail"] or "",
                                                source=src.listing or src.source, line=src.line,
                                                record_id=src.source, field="image", value=src.source))
            rows.append(row)
            if progress:
                progress(1, len(sources))
        new = pa.Table.from_pylist(rows, schema=QUERIES)
        old = ws.read_table("queries")
        if old.num_rows:
            old = old.filter(pc.invert(pc.is_in(old["source"], value_set=new["source"])))
            new = pa.concat_tables([old, new])
        ws.write_table("queries", new)
        key = "batch-" + hashlib.sha256("\n".join(sorted(by_source)).encode()).hexdigest()[:16]
        ws.quarantine(refused, stage=STAGE, run_id=run.run_id, key=key)
        run.counts = {"inputs": res.inputs, "accepted": res.accepted, "rejected": res.rejected,
                      **{f"rejected_{k}": v for k, v in sorted(res.by_reason.items())}}
    return res
