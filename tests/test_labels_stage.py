"""The labels stage on a hand-built workspace: import, quarantine reasons, query fetch, policies, exports."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from labels_fixtures import image_id_of, png, tiny_workspace
from typer.testing import CliRunner

from visprep.cli import app
from visprep.labels.stage import labels_stage
from visprep.labels.trec import export_qrels

HEADER = "query_id,product_id,rater_id,grade,ts,comment\n"


def write_files(root: Path, ws) -> tuple[Path, Path]:
    (root / "raters").mkdir()
    (root / "raters" / "q1.png").write_bytes(png(100))
    known = image_id_of(ws, "p05")  # a catalog image used as a query by its id
    csv = root / "raters" / "batch1.csv"
    csv.write_text(HEADER + "".join([
        "q1.png,p00,alice,4,2026-01-01T10:00:00,\n",
        "q1.png,p00,bob,4,,\n",
        "q1.png,p00,carol,3,,\n",
        "q1.png,p01,alice,3,,\n",
        "q1.png,p01,bob,1,,\n",
        "q1.png,p01,carol,3,,\n",
        'q1.png,p03,alice,0,,"irrelevant, kept"\n',
        "q1.png,p03,bob,0,,\n",
        "q1.png,p04,alice,5,,\n",  # grade_out_of_range
        "q1.png,p04,bob,x,,\n",  # unparsable_grade
        "q1.png,nope,alice,2,,\n",  # unknown_product
        "missing.png,p00,alice,2,,\n",  # query fetch fails
        f"{'0' * 64},p00,alice,2,,\n",  # unknown_query_image
        "q1.png,p02,alice,2,2026-01-01T10:00:00,\n",
        "q1.png,p02,alice,1,2026-01-02T10:00:00,\n",  # conflicting duplicate (newer)
        "q1.png,p02,bob,2,,\n",
        "q1.png,p02,bob,2,,\n",  # identical duplicate
        ",p00,alice,2,,\n",  # missing_query_id
    ]))
    jsonl = root / "raters" / "batch2.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [
        {"query_id": known, "product_id": "p05", "rater_id": "alice", "grade": 4, "batch": "second"},
        {"query_id": known, "product_id": "p05", "rater_id": "bob", "grade": 4.0, "batch": "second"},
        {"query_id": known, "product_id": "p06", "rater_id": "bob", "grade": 2, "batch": "second"},
    ]) + "\n")
    return csv, jsonl


def test_import_quarantine_aggregate_and_export(tmp_path: Path) -> None:
    ws = tiny_workspace(tmp_path / "ws")
    csv, jsonl = write_files(tmp_path, ws)
    r = labels_stage(ws, [csv, jsonl])
    assert r.by_reason == {"grade_out_of_range": 1, "unparsable_grade": 1, "unknown_product": 1,
                           "query_not_found": 1, "unknown_query_image": 1, "missing_query_id": 1,
                           "conflicting_duplicate_judgment": 2}
    assert r.duplicate_identical == 1 and r.queries == 2 and r.queries_fetched == 1
    q = ws.read_table("quarantine").to_pylist()
    assert all(row["stage"] == "labels" and row["reason"] and row["detail"] for row in q)
    assert {row["line"] for row in q if row["reason"] == "conflicting_duplicate_judgment"} == {15, 16}

    # The query image was fetched and stored through the image store, keyed by its sha256.
    eq = {row["query_ref"]: row for row in ws.read_table("eval_queries").to_pylist()}
    fetched = eq[str(tmp_path / "raters" / "q1.png")]
    assert ws.store.exists(fetched["query_id"], "png") and fetched["format"] == "png"

    qrels = {(row["query_id"], row["product_id"]): row for row in ws.read_table("eval_qrels").to_pylist()}
    qid = fetched["query_id"]
    assert qrels[(qid, "p00")]["grade"] == 4 and qrels[(qid, "p00")]["grade_name"] == "Exact"
    assert qrels[(qid, "p01")]["grade"] == 3 and qrels[(qid, "p01")]["relabel"]  # 1 vs 3: spread 2
    assert qrels[(qid, "p03")]["grade"] == 0  # grade-0 pairs stay in the qrels
    assert qrels[(qid, "p02")]["n_raters"] == 1  # alice's conflicting pair was refused
    stats = {row["rater_id"]: row for row in ws.read_table("rater_stats").to_pylist()}
    assert stats["alice"]["n_judgments"] == 4 and stats["bob"]["n_batches"] == 2
    assert [a["batch"] for a in ws.read_table("label_agreement").to_pylist()] == ["batch1.csv", "second", "*"]

    out = export_qrels(ws, tmp_path / "export")
    lines = out["trec"].read_text().splitlines()
    assert len(lines) == len(qrels) and f"{qid} 0 p03 0" in lines
    assert pq.read_table(out["qrels"]).num_rows == len(qrels)
    assert "4 Exact" in out["rubric"].read_text()

    # Re-importing a file replaces its judgments (a snapshot), and nothing is fetched again.
    again = labels_stage(ws, [csv])
    assert again.queries_fetched == 0 and again.judgments == r.judgments


def test_latest_wins_policy(tmp_path: Path) -> None:
    ws = tiny_workspace(tmp_path / "ws", config='[labels]\non_conflict = "latest"\n')
    csv, _ = write_files(tmp_path, ws)
    r = labels_stage(ws, [csv])
    assert "conflicting_duplicate_judgment" not in r.by_reason
    j = [row for row in ws.read_table("judgments").to_pylist() if row["product_id"] == "p02"]
    assert {(row["rater_id"], row["grade"]) for row in j} == {("alice", 1), ("bob", 2)}


def test_bad_policy_is_refused_naming_the_key(tmp_path: Path) -> None:
    ws = tiny_workspace(tmp_path / "ws", config='[labels]\non_conflict = "first"\n')
    with pytest.raises(ValueError, match="labels.on_conflict"):
        _ = ws.config


def test_cli_labels(tmp_path: Path) -> None:
    ws = tiny_workspace(tmp_path / "ws")
    csv, jsonl = write_files(tmp_path, ws)
    res = CliRunner().invoke(app, ["labels", "-w", str(ws.root), str(csv), str(jsonl), "--export",
                                   str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "rater agreement" in res.output and (tmp_path / "out" / "eval.qrels").exists()


def test_demo_judgments_follow_the_rubric_and_stay_in_eval(tmp_path: Path) -> None:
    from visprep.labels.demo import build_demo_judgments
    from visprep.split.check import assert_no_split_leak
    from visprep.split.stage import split_stage

    ws = tiny_workspace(tmp_path / "ws", n_products=24, config="[split]\nfractions = { train = 0.5, eval = 0.5 }\n")
    split_stage(ws)
    before = ws.read_table("splits")
    labels_stage(ws, [build_demo_judgments(ws, seed=1, n_queries=5, per_grade=2)])
    split_stage(ws)
    assert ws.read_table("splits").equals(before)  # queries were drawn so that nothing new is pinned
    assert_no_split_leak(ws)
    split_of = dict(zip(*(before[c].to_pylist() for c in ("product_id", "split"))))
    refs = dict(zip(*(ws.read_table("eval_queries")[c].to_pylist() for c in ("query_id", "query_ref"))))
    for row in ws.read_table("eval_qrels").to_pylist():
        own = Path(refs[row["query_id"]]).stem  # queries/<product_id>.jpg
        assert split_of[own] == "eval"
        if row["product_id"] == own:
            assert row["grade"] == 4
        elif int(row["product_id"][1:]) // 2 == int(own[1:]) // 2:
            assert row["grade"] == 3  # same family_id (median of three mostly honest raters)


def test_query_photos_are_read_only_from_the_rater_files_folder(tmp_path: Path) -> None:
    """A rater file may name query photos beside it; a path out of its folder (or /proc) is refused, unread."""
    ws = tiny_workspace(tmp_path / "ws")
    rater_dir, elsewhere = tmp_path / "vendor", tmp_path / "elsewhere"
    (rater_dir / "q").mkdir(parents=True)
    elsewhere.mkdir()
    (rater_dir / "q" / "inside.png").write_bytes(png(101))
    (elsewhere / "outside.png").write_bytes(png(102))
    rows = [("q/inside.png", "p00"), ("../elsewhere/outside.png", "p01"), ("/proc/self/environ", "p02")]
    f = rater_dir / "judgments.csv"
    f.write_text("query_id,product_id,rater_id,grade\n" + "".join(f"{q},{p},r1,3\n" for q, p in rows))
    r = labels_stage(ws, [f])
    assert r.queries_fetched == 1 and r.queries == 1
    refused = {q["value"] or q["record_id"]: q for q in ws.read_table("quarantine").to_pylist()
               if q["stage"] == "labels"}
    reasons = {q["reason"] for q in refused.values()}
    assert reasons == {"query_local_path_refused"}, refused
    assert len(refused) == 2
