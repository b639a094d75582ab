"""The `queries` stage: fetch user photos, clean them, store the accepted ones, record every decision.

Writes the cleaned images to the content-addressed store (JPEG), one row per input in `tables/queries`
(rows of earlier runs for other sources are kept; a source cleaned again is replaced), and one quarantine row per
rejected input under this batch's key. Rejected photos are never stored, so nothing downstream (embedding,
shards) can pick them up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from visprep.config import section_params
from visprep.engines.threads import apply_threads, plan_threads
from visprep.fetch import Fetcher, FetchSettings
from visprep.queries.clean import QueryCleaner, clean_query_batch
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
    # One process cleans one photo at a time: its models get every core, OpenCV one thread (the plan's).
    plan = plan_threads()
    apply_threads(plan)
    cleaner = cleaner or QueryCleaner.from_config(cfg, threads=plan.model)
    res = QueriesResult(inputs=len(sources))
    params = {**section_params(ws.config, "queries"), "resolved": cleaner.describe()}
    with ws.run(STAGE, params) as run, Fetcher(FetchSettings.from_config(ws.config.fetch)) as fetcher:
        res.run_id = run.run_id
        run.inputs = {"sources": len(sources)}
        run.metrics["threads"] = plan.as_dict()
        rows, refused = [], []
        by_source = {s.source: s for s in sources}
        now = utcnow()
        if progress:
            progress(0, len(sources))
        # fetch_many keeps bounded concurrency for URLs; cleaning is CPU work done here, one photo at a time.
        for fetched in fetcher.fetch_many([s.source for s in sources]):
            src: QuerySource = by_source[fetched.url]
            row = {"source": src.source, "listing": src.listing, "line": src.line, "run_id": run.run_id, "ts": now}
            if not fetched.ok:
                row.update(status="rejected", reason=f"fetch_{fetched.status}", detail=fetched.reason, steps="[]")
            else:
                [cleaned] = clean_query_batch([(src.source, fetched.data)], cleaner, store_root=str(ws.store.root),
                                              jpeg_quality=cfg.jpeg_quality)
                row.update(cleaned)
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
