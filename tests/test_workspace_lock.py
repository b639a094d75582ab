"""One writer per workspace: every writing command takes the lock at its start, a second writer is refused
at once naming the holder (or queues with --wait), a dead holder's lock is taken over, readers never block."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

from visprep.cli import EXIT_BUSY, app
from visprep.demo.sources import write_demo_sources
from visprep.split.stage import split_stage
from visprep.workspace import Workspace, WorkspaceLocked

HOLD = ("import sys, time; from visprep.workspace import Workspace\n"
        "with Workspace(sys.argv[1]).writer('holder-test'):\n"
        "    print('locked', flush=True); time.sleep(float(sys.argv[2]))\n")
SMALL_RUN = ('[pipeline]\nstages = ["fetch", "inspect", "split", "pairs", "export"]\n[inspect]\nworkers = 1\n'
             '[preprocess]\nsize = 32\n')


def _hold(ws: Workspace, seconds: float) -> subprocess.Popen:
    """Start a process that holds `ws`'s writer lock for `seconds`; return once it holds it."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(ws.root), str(seconds)], stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline().strip() == b"locked"
    return p


def test_second_writer_is_refused_at_once_naming_the_holder(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    holder = _hold(ws, 120)
    try:
        t0 = time.monotonic()
        out = CliRunner().invoke(app, ["split", "-w", str(ws.root)])
        assert out.exit_code == EXIT_BUSY, out.output
        assert time.monotonic() - t0 < 10  # refused at once, not after the holder finishes
        text = " ".join(out.output.split())
        for part in (f'"pid": {holder.pid}', f'"host": "{socket.gethostname()}"', '"command": "holder-test"',
                     '"since": "', "--wait"):
            assert part in text, (part, text)
        # The library raises, naming the holder too; nothing was written.
        with pytest.raises(WorkspaceLocked, match=f'"pid": {holder.pid}') as exc:
            split_stage(ws)
        assert exc.value.holder["pid"] == holder.pid
        assert ws.holder() == exc.value.holder
        assert not ws.has_table("splits") and ws.runs() == []
    finally:
        holder.kill()
        holder.wait()
    assert ws.holder() is None  # the kernel dropped the dead holder's lock; its record is stale
    assert ws.lock_path.exists()


def test_wait_queues_behind_the_holder(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    ws.config_path.write_text(SMALL_RUN)  # no dedup: the split has no upstream table stage to be stale
    holder = _hold(ws, 2.0)
    try:
        t0 = time.monotonic()
        out = CliRunner().invoke(app, ["split", "-w", str(ws.root), "--wait"])
        assert out.exit_code == 0, out.output
        assert "waiting for the visprep writer" in out.output
        assert time.monotonic() - t0 >= 1.0
    finally:
        holder.kill()
        holder.wait()
    assert ws.last_run("split") is not None


def test_a_killed_holder_is_taken_over(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    holder = _hold(ws, 120)
    holder.kill()  # SIGKILL: no cleanup; the lock file keeps the dead holder's record
    holder.wait()
    assert json.loads(ws.lock_path.read_text())["pid"] == holder.pid
    split_stage(ws)
    assert ws.last_run("split")["status"] == "ok"
    assert ws.lock_path.read_text() == ""  # released


def test_readers_never_block(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    split_stage(ws)
    holder = _hold(ws, 120)
    try:
        out = CliRunner().invoke(app, ["status", "-w", str(ws.root)])
        assert out.exit_code == 0, out.output
        assert ws.read_table("splits").num_rows == 0
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_reentrant_in_one_process_and_exclusive_across_threads_of_others(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    with ws.writer("outer"):
        with ws.writer("inner"):  # the CLI command, then the pipeline, then each stage run
            split_stage(ws)
        assert json.loads(ws.lock_path.read_text())["command"] == "outer"
        assert ws.holder()["pid"] == os.getpid()
        other = subprocess.run([sys.executable, "-c", HOLD, str(ws.root), "0"], capture_output=True, text=True)
        assert other.returncode != 0 and "WorkspaceLocked" in other.stderr
    assert ws.holder() is None


def test_two_runs_at_once_one_writes_and_the_tables_stay_whole(tmp_path: Path) -> None:
    """The race of the issue: two `visprep run` on one workspace. Before the lock, the loser died with a
    traceback and `images` could keep every image twice."""
    src = write_demo_sources(tmp_path / "src", n_products=40, seed=5)
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    ws.config_path.write_text(SMALL_RUN)
    cmd = [sys.executable, "-m", "visprep.cli", "run", "-w", str(ws.root), *map(str, src.catalog_files)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "400"}  # one line per message: no wrapping
    go = threading.Barrier(2)
    results: list[subprocess.CompletedProcess] = []

    def one() -> None:
        go.wait()
        results.append(subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.returncode for r in results)
    for r in results:
        assert "Traceback" not in r.stderr + r.stdout, r.stderr
    # Either one was refused while the other wrote, or (a slow start) the second ran after the first finished.
    assert codes in ([0, EXIT_BUSY], [0, 0]), [(r.returncode, r.stdout[-500:], r.stderr[-500:]) for r in results]
    if codes == [0, EXIT_BUSY]:
        loser = next(r for r in results if r.returncode == EXIT_BUSY)
        assert "is busy" in loser.stdout and '"command": "run"' in " ".join(loser.stdout.split()), loser.stdout
    images = ws.read_table("images", ["image_id"])
    assert images.num_rows == len(pc.unique(images["image_id"])) > 0
    stored = {p.stem for p in (ws.root / "images").glob("*/*/*.*")}
    assert set(images["image_id"].to_pylist()) <= stored
    # A clean rerun changes nothing.
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr
    assert ws.read_table("images", ["image_id"]).num_rows == images.num_rows


def test_a_stage_command_runs_only_its_stage_or_its_stale_upstream_with_deps(tmp_path: Path) -> None:
    """`visprep pairs` with a stale split names it and stops; --with-deps runs the split first."""
    src = write_demo_sources(tmp_path / "src", n_products=20, seed=2)
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    ws.config_path.write_text(SMALL_RUN)
    run = CliRunner().invoke(app, ["run", "-w", str(ws.root), *map(str, src.catalog_files)])
    assert run.exit_code == 0, run.output
    ws.config_path.write_text(SMALL_RUN + "[split]\nseed = 7\n")
    out = CliRunner().invoke(app, ["pairs", "-w", str(ws.root)])
    assert out.exit_code == 1 and "split" in out.output and "--with-deps" in " ".join(out.output.split())
    pairs_runs = len([r for r in Workspace(ws.root).runs() if r["stage"] == "pairs"])
    out = CliRunner().invoke(app, ["pairs", "-w", str(ws.root), "--with-deps"])
    assert out.exit_code == 0, out.output
    runs = Workspace(ws.root).runs()
    assert runs[-2]["stage"] == "split" and runs[-1]["stage"] == "pairs"
    assert len([r for r in runs if r["stage"] == "pairs"]) == pairs_runs + 1


def test_a_killed_writers_half_written_files_are_removed_by_the_next_writer(tmp_path: Path) -> None:
    """A writer killed inside an atomic write leaves `.<name>.<pid>.<random>.tmp`; the next writer removes it, and
    never a live writer's (found by the kill -9 harness: a run record's temporary outlived its killed writer)."""
    from visprep.workspace import clean_dead_temporaries

    ws = Workspace(tmp_path / "ws")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (ws.runs_dir).mkdir(parents=True)
    (ws.tables_dir / "pairs.parquet").mkdir(parents=True)
    leftovers = [ws.runs_dir / f".x-split.json.{dead.pid}.abc123.tmp",
                 ws.tables_dir / "pairs.parquet" / f".part-1.parquet.{dead.pid}.q9.tmp"]
    live = ws.runs_dir / f".y.json.{os.getpid()}.zz.tmp"
    for p in [*leftovers, live]:
        p.write_bytes(b"half")
    split_stage(ws)  # takes the writer lock
    assert not any(p.exists() for p in leftovers) and live.exists()
    assert clean_dead_temporaries(ws.runs_dir) == 0
