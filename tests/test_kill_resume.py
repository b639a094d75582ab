"""kill -9 at random points in every writing stage of `visprep run`, then resume: the workspace ends identical to an
uninterrupted run's. One chain: each restart is killed inside the next stage, the last one finishes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from visprep.demo.sources import write_demo_sources
from visprep.export.shards import read_manifest
from visprep.workspace import Workspace

CONFIG = ("[export]\nmax_count = 20\n[inspect]\nworkers = 2\nbatch_size = 8\n[fetch]\ncheckpoint_every = 8\n"
          "[preprocess]\nsize = 32\n[embed]\ncheckpoint_every = 16\n"
          '[embed.options]\nprofile = "imagenet-64"\n'
          '[synthetic]\nbackgrounds = ["texture"]\nreframe_scales = [0.8]\nhue_shifts_deg = [180.0]\n')
# Columns that say when or in which run a row was made, not what it holds; row_hash hashes the compared columns
# (with the workspace's own path in a synthetic view's URL).
VOLATILE = {"run_id", "fetched_at", "ts", "inspected_at", "created_at", "seconds", "row_hash"}


def _start(ws: Workspace, files: list[Path]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "visprep.cli", "run", "-w", str(ws.root), *map(str, files)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _running_stage(ws: Workspace, seen: set[str]) -> str | None:
    """The stage of a run record that appeared since `seen` and is still running."""
    for p in sorted(ws.runs_dir.glob("*.json")) if ws.runs_dir.exists() else []:
        if p.name in seen:
            continue
        try:
            rec = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if rec.get("status") == "running":
            seen.add(p.name)
            return rec["stage"]
    return None


def _content(ws: Workspace) -> dict[str, list]:
    """Every table's rows without volatile columns, sorted; and each split's shard samples."""
    out: dict[str, list] = {}
    for name in ws.table_names():
        t = ws.read_table(name)
        keep = [c for c, f in zip(t.column_names, t.schema) if c not in VOLATILE
                and not c.endswith("_run") and not pa.types.is_timestamp(f.type)]
        # Synthetic views name their file in the workspace's own store: compare them relative to the workspace.
        out[name] = sorted(json.dumps(r, sort_keys=True, default=str).replace(str(ws.root), "<ws>")
                           for r in t.select(keep).to_pylist())
    for m in sorted(ws.shards_dir.glob("*/manifest.json")):
        index = ws.shards_dir / m.parent.name / "index.parquet"
        out[f"shards/{m.parent.name}"] = sorted(
            json.dumps({k: r[k] for k in ("key", "product_id", "image_id")}) for r in pq.read_table(index).to_pylist())
        assert read_manifest(m.parent)
    return out


@pytest.mark.slow
def test_killed_at_random_points_in_every_stage_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    src = write_demo_sources(tmp_path / "src", n_products=40, seed=11)
    ref, ws = Workspace(tmp_path / "ref"), Workspace(tmp_path / "ws")
    for w in (ref, ws):
        w.root.mkdir()
        w.config_path.write_text(CONFIG)
    done = _start(ref, src.catalog_files)
    assert done.wait(timeout=900) == 0, done.stderr.read() if done.stderr else ""
    stages = [r["stage"] for r in ref.runs()]
    rng = random.Random(15)
    killed_in: list[str] = []
    seen: set[str] = set()
    for _ in range(len(stages) + 5):  # each restart gets further: a stage finished before is up to date
        proc = _start(ws, src.catalog_files)
        target_at = None
        while proc.poll() is None:
            stage = _running_stage(ws, seen)
            if stage is not None and stage not in killed_in:
                target_at = time.monotonic() + rng.uniform(0.0, 0.6)
                killed_in.append(stage)
            if target_at is not None and time.monotonic() >= target_at:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        code = proc.wait(timeout=900)
        if code == 0:
            break
        assert code == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    else:
        pytest.fail(f"the run never finished after kills in {killed_in}")
    # Killed inside (or right after) most stages of the run, each at a random moment.
    assert len(set(killed_in)) >= len(set(stages)) - 2, (killed_in, stages)
    final = subprocess.run([sys.executable, "-m", "visprep.cli", "run", "-w", str(ws.root)], capture_output=True,
                           text=True)
    assert final.returncode == 0, final.stderr
    want, got = _content(ref), _content(ws)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name] == want[name], name
    leftovers = [p for p in ws.root.rglob(".*.tmp")]
    assert not leftovers, leftovers
