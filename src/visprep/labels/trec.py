"""Exports of the eval set: TREC qrels text (grade-0 lines included) and Parquet."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from visprep.labels.rubric import rubric_text
from visprep.workspace import Workspace, atomic_write_bytes


def qrels_lines(qrels: pa.Table) -> list[str]:
    """`query_id 0 product_id grade` lines, sorted; grade-0 (Irrelevant) pairs are written too."""
    rows = sorted(zip(*(qrels.column(c).to_pylist() for c in ("query_id", "product_id", "grade"))))
    return [f"{q} 0 {p} {g}" for q, p, g in rows]


def export_qrels(ws: Workspace, dest: str | Path) -> dict[str, Path]:
    """Write `<dest>/eval.qrels` (TREC), `<dest>/eval_qrels.parquet`, `<dest>/judgments.parquet` and
    `<dest>/rubric.txt`; return their paths. The TREC file holds every judged pair, grade 0 included."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    qrels = ws.read_table("eval_qrels")
    for name in ("query_id", "product_id"):
        bad = [v for v in qrels.column(name).to_pylist() if any(ch.isspace() for ch in v)]
        if bad:
            raise ValueError(f"{name} {bad[0]!r} contains whitespace; TREC qrels cannot hold it")
    out = {"trec": dest / "eval.qrels", "qrels": dest / "eval_qrels.parquet",
           "judgments": dest / "judgments.parquet", "rubric": dest / "rubric.txt"}
    atomic_write_bytes(out["trec"], ("\n".join(qrels_lines(qrels)) + "\n").encode())
    for key, table in (("qrels", qrels), ("judgments", ws.read_table("judgments"))):
        tmp = out[key].with_name(f".{out[key].name}.tmp")
        pq.write_table(table, tmp, compression="zstd")
        tmp.replace(out[key])
    atomic_write_bytes(out["rubric"], (rubric_text() + "\n").encode())
    return out
