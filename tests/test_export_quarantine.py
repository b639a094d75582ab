"""The export stage quarantines each image it cannot export (missing from the store, undecodable), writes the rest,
and a rerun lists the same failures once."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc

from visprep.demo.sources import write_demo_sources
from visprep.export.manifest import read_manifest
from visprep.export.stage import PreprocessFailure, export_stage, preprocess_batch, resolve_profile
from visprep.images.sniff import extension_for
from visprep.views.images import usable_images
from visprep.pipeline import run_pipeline
from visprep.workspace import Workspace

CONFIG = ('[pipeline]\nstages = ["fetch", "inspect", "split", "pairs", "export"]\n'
          "[inspect]\nworkers = 1\n[export]\nworkers = 1\nmax_count = 16\n[preprocess]\nsize = 32\n")


def _export_quarantine(ws: Workspace) -> list[dict]:
    q = ws.read_table("quarantine")
    rows = q.filter(pc.equal(q.column("stage"), "export")).to_pylist()
    return sorted(({k: v for k, v in r.items() if k not in ("run_id", "ts")} for r in rows),
                  key=lambda r: (r["record_id"], r["detail"]))


def _samples(ws: Workspace) -> dict[str, int]:
    return {d.name: read_manifest(d).total_samples for d in ws.shards_dir.iterdir() if (d / "manifest.json").exists()}


def test_missing_and_corrupt_images_are_quarantined_once(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    ws.config_path.write_text(CONFIG)
    src = write_demo_sources(tmp_path / "src", n_products=20, seed=2)
    run_pipeline(ws, src.catalog_files)
    before = _samples(ws)
    assert ws.last_run("export")["counts"]["failed"] == 0 and not _export_quarantine(ws)
    # Two train images, each the photo of exactly one sample: one deleted from the store, one cut mid-scan.
    imgs = usable_images(ws).to_pylist()
    per_image: dict[str, list[dict]] = {}
    for r in imgs:
        per_image.setdefault(r["image_id"], []).append(r)
    single = sorted(i for i, rs in per_image.items() if len(rs) == 1 and rs[0]["split"] == "train")
    gone, broken = single[0], single[1]
    ok = ws.latest_urls().filter(pc.equal(ws.latest_urls().column("status"), "ok")).to_pylist()
    fmt = {r["image_id"]: r["format"] for r in ok}
    ws.store.path(gone, extension_for(fmt[gone])).unlink()
    path = ws.store.path(broken, extension_for(fmt[broken]))
    data = path.read_bytes()
    path.chmod(0o644)
    path.write_bytes(data[: len(data) // 3])

    summary = export_stage(ws)
    first = _export_quarantine(ws)
    assert [(r["record_id"], r["field"], r["value"]) for r in first] == sorted(
        [(gone, "image_id", gone), (broken, "image_id", broken)])
    reasons = {r["record_id"]: r["reason"] for r in first}
    assert reasons[gone] == "missing_bytes"
    assert reasons[broken] in ("truncated", "corrupt")
    for r in first:
        product = per_image[r["record_id"]][0]["product_id"]
        assert product in r["detail"] and "split train" in r["detail"] and r["record_id"] in r["detail"]
    # The shards hold every other sample.
    assert summary["train"]["samples"] == before["train"] - 2
    assert {s: v["samples"] for s, v in summary.items() if s != "train"} == {s: n for s, n in before.items()
                                                                             if s != "train"}
    run = ws.last_run("export")
    assert run["counts"]["failed"] == run["counts"]["quarantined"] == 2
    assert run["metrics"]["failed_by_reason"] == {"missing_bytes": 1, reasons[broken]: 1}
    assert len(run["notes"]) == 1 and "2 image(s)" in run["notes"][0]

    export_stage(ws)
    assert _export_quarantine(ws) == first  # replaced, not appended
    # Repaired, the next export clears the stage's quarantine.
    path.write_bytes(data)
    assert export_stage(ws)["train"]["samples"] == before["train"] - 1
    assert [r["record_id"] for r in _export_quarantine(ws)] == [gone]


def test_preprocess_batch_names_each_failure(tmp_path: Path) -> None:
    from visprep.config import PreprocessConfig

    profile = resolve_profile(PreprocessConfig(size=32))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    html = tmp_path / "page.jpg"
    html.write_bytes(b"<html>not found</html>")
    out = preprocess_batch([(str(tmp_path / "absent.jpg"), profile, 90), (str(empty), profile, 90),
                            (str(html), profile, 90)])
    assert all(isinstance(o, PreprocessFailure) for o in out)
    assert [o.reason for o in out] == ["missing_bytes", "empty", "unsupported_format"]
    assert all(str(tmp_path) in o.detail for o in out)
