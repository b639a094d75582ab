"""The labels stage: rater files → `judgments` (raw), `eval_qrels` (consensus), agreement and rater quality."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from visprep.config import section_params
from visprep.labels.aggregate import aggregate_judgments
from visprep.labels.agreement import (
    fleiss_kappa,
    krippendorff_alpha_ordinal,
    leave_one_out_stats,
    mean_pairwise_cohen,
    reliability_matrix,
)
from visprep.labels.queries import resolve_queries
from visprep.labels.readers import RaterRow, read_rater_file
from visprep.schema import EVAL_QUERIES, JUDGMENTS, LABEL_AGREEMENT, RATER_STATS
from visprep.workspace import QuarantineRecord, Workspace, file_fingerprint

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass
class LabelsResult:
    """Counts of one labels run."""

    rows_read: int = 0
    judgments: int = 0
    duplicate_identical: int = 0
    conflicts: int = 0
    quarantined: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    queries: int = 0
    queries_fetched: int = 0
    qrels: int = 0
    relabel: int = 0
    grade_counts: dict[int, int] = field(default_factory=dict)
    suspect_raters: list[str] = field(default_factory=list)
    run_id: str = ""


def resolve_duplicates(rows: list[dict], *, on_conflict: str) -> tuple[list[dict], list[dict], int]:
    """Keep one row per (query_id, product_id, rater_id); rows are in ingestion order (later = newer on equal ts).

    Returns (kept, conflicting rows refused, identical duplicates dropped). With `on_conflict="latest"` a
    conflict keeps the row with the newest `ts` (missing ts is oldest), then the last in ingestion order.
    """
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((r["query_id"], r["product_id"], r["rater_id"]), []).append(i)
    kept, refused, identical = [], [], 0
    for idx in groups.values():
        latest = max(idx, key=lambda i: (rows[i]["ts"] or _EPOCH, i))
        if len(idx) == 1 or len({rows[i]["grade"] for i in idx}) == 1:
            identical += len(idx) - 1
            kept.append(latest)
        elif on_conflict == "latest":
            kept.append(latest)
        elif on_conflict == "quarantine":
            refused.extend(idx)
        else:
            raise ValueError(f"unknown on_conflict policy {on_conflict!r}; valid: 'quarantine', 'latest'")
    return [rows[i] for i in sorted(kept)], [rows[i] for i in sorted(refused)], identical


def agreement_table(judgments: pa.Table, *, relabel_spread: int) -> pa.Table:
    """One `label_agreement` row per batch, and "*" for all judgments together."""
    cols = {c: judgments.column(c).to_pylist() for c in ("batch", "query_id", "product_id", "rater_id", "grade")}
    batches = sorted(set(cols["batch"]))
    rows = []
    for b in ([*batches, "*"] if len(batches) > 1 else batches or ["*"]):
        sel = [i for i, x in enumerate(cols["batch"]) if b == "*" or x == b]
        m, raters, _ = reliability_matrix([cols["rater_id"][i] for i in sel],
                                          [(cols["query_id"][i], cols["product_id"][i]) for i in sel],
                                          [cols["grade"][i] for i in sel])
        multi = (~np.isnan(m)).sum(axis=0) >= 2
        spread = np.nanmax(m, axis=0) - np.nanmin(m, axis=0) if m.size else np.empty(0)
        rows.append({"batch": b, "n_items": int(multi.sum()), "n_raters": len(raters), "n_judgments": len(sel),
                     "alpha_ordinal": krippendorff_alpha_ordinal(m), "fleiss_kappa": fleiss_kappa(m),
                     "cohen_kappa_mean": mean_pairwise_cohen(m),
                     "cohen_kappa_quadratic_mean": mean_pairwise_cohen(m, weights="quadratic"),
                     "relabel_items": int((multi & (spread >= relabel_spread)).sum())})
    return pa.Table.from_pylist(rows, schema=LABEL_AGREEMENT)


def rater_stats_table(judgments: pa.Table, *, method: str, suspect_kappa: float) -> pa.Table:
    """One `rater_stats` row per rater: agreement with the consensus of the other raters, bias, counts."""
    cols = {c: judgments.column(c).to_pylist() for c in ("batch", "query_id", "product_id", "rater_id", "grade")}
    m, raters, _ = reliability_matrix(cols["rater_id"], list(zip(cols["query_id"], cols["product_id"])),
                                      cols["grade"])
    stats = leave_one_out_stats(m, method=method)
    batches: dict[str, set[str]] = {}
    counts: dict[str, int] = {}
    for r, b in zip(cols["rater_id"], cols["batch"]):
        batches.setdefault(r, set()).add(b)
        counts[r] = counts.get(r, 0) + 1
    rows = [{"rater_id": r, "n_judgments": counts[r], "n_batches": len(batches[r]), **s,
             "suspect": bool(s["n_compared"] > 0 and not np.isnan(s["kappa_quadratic"])
                             and s["kappa_quadratic"] < suspect_kappa)}
            for r, s in zip(raters, stats)]
    return pa.Table.from_pylist(rows, schema=RATER_STATS)


def labels_stage(ws: Workspace, files: Sequence[str | Path]) -> LabelsResult:
    """Ingest rater files as the new snapshot of each file, then rebuild qrels, agreement and rater stats.

    Refused lines go to the quarantine with a reason: missing_<field>, unparsable_grade, grade_out_of_range,
    unparsable_ts, bad_query_ref, unknown_product, query_<fetch status>, unknown_query_image, and
    conflicting_duplicate_judgment (same query, product and rater with different grades, unless
    `labels.on_conflict = "latest"`).
    """
    cfg = ws.config.labels
    paths = [Path(f).expanduser().resolve() for f in files]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"rater file not found: {p}")
    result = LabelsResult()
    with ws.run("labels", section_params(ws.config, "labels")) as run:
        run.inputs = {"files": [file_fingerprint(p) for p in paths], "products": ws.table_fingerprint("products")}
        result.run_id = run.run_id
        refused: dict[str, list[QuarantineRecord]] = {str(p): [] for p in paths}
        parsed: list[RaterRow] = []
        for path in paths:
            for item in read_rater_file(path):
                result.rows_read += 1
                if isinstance(item, RaterRow):
                    parsed.append(item)
                else:
                    refused[str(path)].append(item)

        known_products = set(ws.read_table("products", ["product_id"]).column("product_id").to_pylist())
        # A query path may be read only from the folder of a rater file that names it (fetch.local_paths).
        roots: dict[str, set[str]] = {}
        for r in parsed:
            roots.setdefault(r.query_ref, set()).add(str(Path(r.source).resolve().parent))
        queries = resolve_queries(ws, {r.query_ref for r in parsed if r.product_id in known_products},
                                  local_roots={ref: sorted(folders) for ref, folders in roots.items()})
        result.queries_fetched = queries.fetched
        new_rows = []
        for r in parsed:
            where = f"{r.source}:{r.line}"
            if r.product_id not in known_products:
                refused[r.source].append(QuarantineRecord(
                    reason="unknown_product", detail=f"{where}: product_id {r.product_id!r} is not in the catalog",
                    source=r.source, line=r.line, record_id=r.product_id, field="product_id", value=r.product_id))
            elif r.query_ref in queries.failed:
                status, reason = queries.failed[r.query_ref]
                refused[r.source].append(QuarantineRecord(
                    reason=status, detail=f"{where}: query image {r.query_ref!r}: {reason}", source=r.source,
                    line=r.line, record_id=r.product_id, field="query_id", value=r.query_ref))
            else:
                new_rows.append({"query_id": queries.found[r.query_ref][0], "query_ref": r.query_ref,
                                 "product_id": r.product_id, "rater_id": r.rater_id, "grade": r.grade,
                                 "batch": r.batch, "ts": r.ts, "comment": r.comment, "source_file": r.source,
                                 "source_line": r.line, "run_id": run.run_id})

        # Each file is a snapshot: its earlier judgments are replaced; other files' judgments stay.
        old = ws.read_table("judgments")
        keep_old = old.filter(pc.invert(pc.is_in(old.column("source_file"),
                                                 value_set=pa.array([str(p) for p in paths], pa.string()))))
        combined = keep_old.to_pylist() + new_rows
        kept, conflicting, result.duplicate_identical = resolve_duplicates(combined, on_conflict=cfg.on_conflict)
        conflict_grades: dict[tuple[str, str, str], set[int]] = {}
        for c in conflicting:
            conflict_grades.setdefault((c["query_id"], c["product_id"], c["rater_id"]), set()).add(c["grade"])
        conflicts = []
        for r in conflicting:
            grades = sorted(conflict_grades[(r["query_id"], r["product_id"], r["rater_id"])])
            conflicts.append(QuarantineRecord(
                reason="conflicting_duplicate_judgment",
                detail=f"{r['source_file']}:{r['source_line']}: rater {r['rater_id']!r} graded query "
                       f"{r['query_ref']!r} / product {r['product_id']!r} several times with grades {grades}; "
                       "none is taken (labels.on_conflict = 'latest' keeps the newest)",
                source=r["source_file"], line=r["source_line"], record_id=r["product_id"], field="grade",
                value=str(r["grade"])))
        result.conflicts = len(conflicts)
        judgments = pa.Table.from_pylist(kept, schema=JUDGMENTS)
        ws.write_table("judgments", judgments)

        used = set(judgments.column("query_id").to_pylist())
        q_rows = {}
        for r in kept:
            q_rows.setdefault(r["query_id"], {"query_id": r["query_id"], "query_ref": r["query_ref"],
                                              "source_file": r["source_file"], "run_id": r["run_id"]})
        formats = {iid: fmt for iid, fmt in queries.found.values()}
        old_q = ws.read_table("eval_queries")
        for row in old_q.to_pylist():
            formats.setdefault(row["query_id"], row["format"])
        for qid, row in q_rows.items():
            row["format"] = formats.get(qid)
        ws.write_table("eval_queries", pa.Table.from_pylist(sorted(q_rows.values(), key=lambda r: r["query_id"]),
                                                            schema=EVAL_QUERIES))
        result.queries = len(used)

        qrels = aggregate_judgments(judgments, method=cfg.aggregate, relabel_spread=cfg.relabel_spread)
        ws.write_table("eval_qrels", qrels)
        ws.write_table("label_agreement", agreement_table(judgments, relabel_spread=cfg.relabel_spread))
        stats = rater_stats_table(judgments, method=cfg.aggregate, suspect_kappa=cfg.suspect_kappa)
        ws.write_table("rater_stats", stats)
        result.suspect_raters = [r for r, s in zip(stats.column("rater_id").to_pylist(),
                                                   stats.column("suspect").to_pylist()) if s]
        result.judgments = judgments.num_rows
        result.qrels = qrels.num_rows
        result.relabel = int(pc.sum(qrels.column("relabel")).as_py() or 0)
        for g in qrels.column("grade").to_pylist():
            result.grade_counts[g] = result.grade_counts.get(g, 0) + 1

        for source, records in refused.items():
            ws.quarantine(records, stage="labels", run_id=run.run_id, key=source)
        ws.quarantine(conflicts, stage="labels", run_id=run.run_id, key="conflicts")
        for rec in [*(r for recs in refused.values() for r in recs), *conflicts]:
            result.quarantined += 1
            result.by_reason[rec.reason] = result.by_reason.get(rec.reason, 0) + 1
        run.counts = {"rows_in": result.rows_read, "judgments_out": result.judgments, "qrels_out": result.qrels,
                      "queries": result.queries, "queries_fetched": result.queries_fetched,
                      "duplicate_identical": result.duplicate_identical, "conflicts": result.conflicts,
                      "quarantined": result.quarantined, "relabel": result.relabel,
                      "suspect_raters": len(result.suspect_raters)}
    return result
