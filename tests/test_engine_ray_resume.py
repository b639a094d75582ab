"""The driver of a Ray run killed (kill -9 of `visprep run`) in the middle of inspect, whose batches run as Ray
tasks, then the run restarted: it resumes without redoing the inspected parts, every table ends equal to an
uninterrupted Ray run's, and of the killed run's Ray (GCS, raylet, workers, agents) only its two agents outlive the
rerun: they have seen their raylet die and wait out Ray's 60 s timeout publishing that to the dead GCS (the
agents' `publish_error_to_driver`), then exit on their own (docs/scaling.md, "Engines"). The same on a two-node
cluster the test starts (`engine.address`): the dead driver's workers end with its job, and Ray Data's detached
actors stay for the next driver, which reuses them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from ray.cluster_utils import Cluster
from test_engine_ray import _differences  # the engine test's table-by-table comparison
from test_golden_pipeline import snapshot  # the golden test's canonical form of every table

from visprep.demo.sources import write_demo_sources
from visprep.workspace import Workspace

# Each test with its setup runs three runs at most, two Ray starts; 600 s leaves room to wait for `ray_alone`.
pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("ray_alone")]

# Fetch and inspect in batches of 2 on one Ray worker: 50-odd tasks each, so the run can be caught between two of
# a stage's parts (each written by the worker that ran the batch).
# The Ray is the one the run starts itself (no engine.address), the case where the killed driver owned it.
CONFIG = ('[pipeline]\nstages = ["fetch", "inspect", "split", "pairs", "export"]\n'
          "[inspect]\nworkers = 1\nbatch_size = 2\n[export]\nmax_count = 20\n[preprocess]\nsize = 32\n"
          "[fetch]\ncheckpoint_every = 2\n"
          '[engine]\nkind = "ray"\nnum_cpus = 1\n')


# Ray Data's detached actors: one each per cluster, kept for the drivers that come next.
RAY_DATA_ACTORS = {"ray::_AutoscalingCoordinatorActor", "ray::_StatsActor", "ray::_UsageCollectionActor"}


def _start(ws: Workspace, files: list[Path]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "visprep.cli", "run", "-w", str(ws.root), *map(str, files)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _running_inspect(ws: Workspace, stage: str = "inspect") -> str | None:
    """The run id of the `stage` run in progress, if one is."""
    for rec in ws.runs():
        if rec["stage"] == stage and rec["status"] == "running":
            return rec["run_id"]
    return None


def _parts_of(ws: Workspace, run_id: str, table: str = "images") -> list[Path]:
    folder = ws.table_path(table)
    return sorted(folder.glob(f"part-{run_id}-*.parquet")) if folder.is_dir() else []


def _alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie, dead but not reaped, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _descendants(pid: int) -> dict[int, str]:
    """Every live process below `pid` (children, their children ...), with its command line."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out: dict[int, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        try:
            out[p] = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
        except OSError:
            continue
        todo.extend(children.get(p, []))
    return out


def _agent_log(pid: int) -> str:
    """The text of the log an agent process `pid` writes (`dashboard_agent.log`, `runtime_env_agent.log`)."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.endswith("_agent.log"):
            return Path(target).read_text(errors="replace")
    raise AssertionError(f"process {pid} has no agent log open")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Workspace]:
    """The demo catalog files and a workspace of an uninterrupted Ray run over them."""
    root = tmp_path_factory.mktemp("ray-resume")
    files = write_demo_sources(root / "src", n_products=40, seed=11).catalog_files
    ref = Workspace(root / "ref")
    ref.root.mkdir()
    ref.config_path.write_text(CONFIG)
    done = _start(ref, files)
    assert done.wait(timeout=40) == 0, done.stderr.read() if done.stderr else ""
    assert ref.last_run("inspect")["counts"]["inspected"] > 40
    return files, ref


def _kill_mid_inspect(ws: Workspace, files: list[Path], watch: int | None = None) -> tuple[str, dict, dict]:
    """Start `visprep run` on `ws`, kill -9 it once inspect has written two parts; the inspect run id, the
    `image_id -> run_id` of the parts written, and the processes below `watch` (default: the run) at the kill."""
    proc = _start(ws, files)
    run_id = None
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        run_id = run_id or _running_inspect(ws)
        # Two parts written: the Ray workers are up and inspect is mid-way.
        if run_id and len(_parts_of(ws, run_id)) >= 2:
            procs = _descendants(watch or proc.pid)
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    else:
        proc.kill()
        pytest.fail(f"inspect never reached two parts on Ray (exit {proc.poll()}, run {run_id})")
    assert proc.wait(timeout=10) == -signal.SIGKILL
    # Killed mid-stage: its run record never ended, and only some of its parts exist.
    assert _running_inspect(ws) == run_id
    before = {}
    for part in _parts_of(ws, run_id):
        rows = pq.read_table(part, columns=["image_id", "run_id"]).to_pylist()
        before.update({r["image_id"]: r["run_id"] for r in rows})
    return run_id, before, procs


def _rerun_resumes(ws: Workspace, files: list[Path], ref: Workspace, run_id: str, before: dict[str, str]) -> None:
    """Run `ws` again to its end: every table equals `ref`'s and the inspected images of `before` are not redone."""
    total = ref.last_run("inspect")["counts"]["inspected"]
    assert 4 <= len(before) < total
    rerun = subprocess.run([sys.executable, "-m", "visprep.cli", "run", "-w", str(ws.root), *map(str, files)],
                           check=False, capture_output=True, text=True, timeout=40)
    assert rerun.returncode == 0, rerun.stderr
    want, got = snapshot(ref, ref.root), snapshot(ws, ws.root)
    assert not _differences(want, got)
    # The images inspected before the kill kept the killed run's rows; the rerun inspected only the rest.
    kept = {r["image_id"]: r["run_id"] for r in ws.read_table("images", ["image_id", "run_id"]).to_pylist()}
    assert {i: kept[i] for i in before} == before
    second = ws.last_run("inspect")
    assert second["run_id"] != run_id and second["metrics"]["engine"] == "ray"
    assert second["counts"]["already"] == len(before)
    assert second["counts"]["inspected"] == total - len(before)
    assert sum(1 for r in kept.values() if r == second["run_id"]) == total - len(before)


def test_a_run_that_started_its_own_ray_killed_mid_inspect_resumes_without_redoing_parts(
        reference: tuple[list[Path], Workspace], tmp_path: Path) -> None:
    files, ref = reference
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    ws.config_path.write_text(CONFIG)
    run_id, before, ray_procs = _kill_mid_inspect(ws, files)
    assert any("raylet" in c for c in ray_procs.values()), ray_procs  # the run had started its own Ray
    _rerun_resumes(ws, files, ref, run_id, before)
    # Of the killed run's Ray, only the two agents are left once the rerun has ended, each having logged that its
    # raylet is dead: they exit when their report to the dead GCS times out (60 s after the kill).
    left = {p: c.split()[0] for p, c in ray_procs.items() if _alive(p)}
    try:
        assert sorted(left.values()) in ([], ["ray::DashboardAgent", "ray::RuntimeEnvAgent"]), left
        for pid, name in left.items():
            assert "The parent is dead." in _agent_log(pid), name
    finally:
        for pid in left:  # not to keep 200 MB for the rest of the 60 s on a test machine
            os.kill(pid, signal.SIGKILL)


def test_a_run_on_a_cluster_killed_mid_inspect_resumes_and_its_workers_end_with_it(
        reference: tuple[list[Path], Workspace], tmp_path: Path) -> None:
    files, ref = reference
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes(timeout=60)
        ws = Workspace(tmp_path / "ws")
        ws.root.mkdir()
        ws.config_path.write_text(CONFIG.replace("num_cpus = 1", f'address = "{cluster.address}"'))
        # The cluster's nodes are this process's children: every Ray process of the run is below it.
        run_id, before, procs = _kill_mid_inspect(ws, files, watch=os.getpid())
        workers = {p: c.split()[0] for p, c in procs.items() if c.startswith("ray::")
                   and c.split()[0] not in RAY_DATA_ACTORS | {"ray::DashboardAgent", "ray::RuntimeEnvAgent"}}
        actors = {p: c.split()[0] for p, c in procs.items() if c.split()[0] in RAY_DATA_ACTORS}
        assert workers and actors, procs
        _rerun_resumes(ws, files, ref, run_id, before)
        now = {p: c.split()[0] for p, c in _descendants(os.getpid()).items()}
        assert not {p: n for p, n in workers.items() if now.get(p) == n}  # the killed job's workers ended
        assert {p: n for p, n in now.items() if n in RAY_DATA_ACTORS} == actors  # reused by the rerun, not added
    finally:
        cluster.shutdown()


def test_a_run_killed_mid_fetch_on_ray_resumes_without_fetching_again(
        reference: tuple[list[Path], Workspace], tmp_path: Path) -> None:
    """Fetch on Ray: each task stores its images and writes its `urls` part; a driver killed after two parts keeps
    them, and the rerun fetches only the other URLs."""
    files, ref = reference
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    ws.config_path.write_text(CONFIG)
    proc = _start(ws, files)
    run_id, procs = None, {}
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        run_id = run_id or _running_inspect(ws, "fetch")
        if run_id and len(_parts_of(ws, run_id, "urls")) >= 2:
            procs = _descendants(proc.pid)
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    else:
        proc.kill()
        pytest.fail(f"fetch never reached two parts on Ray (exit {proc.poll()}, run {run_id})")
    try:
        assert proc.wait(timeout=10) == -signal.SIGKILL and _running_inspect(ws, "fetch") == run_id
        before = {}
        for part in _parts_of(ws, run_id, "urls"):
            before.update({r["url"]: r["run_id"] for r in pq.read_table(part, columns=["url", "run_id"]).to_pylist()})
        total = ref.last_run("fetch")["counts"]["attempted"]
        assert 4 <= len(before) < total
        rerun = subprocess.run([sys.executable, "-m", "visprep.cli", "run", "-w", str(ws.root), *map(str, files)],
                               check=False, capture_output=True, text=True, timeout=40)
        assert rerun.returncode == 0, rerun.stderr
        assert not _differences(snapshot(ref, ref.root), snapshot(ws, ws.root))
        kept = {r["url"]: r["run_id"] for r in ws.read_table("urls", ["url", "run_id"]).to_pylist()}
        assert {u: kept[u] for u in before} == before  # not fetched again: the killed run's rows stand
        second = ws.last_run("fetch")
        assert second["run_id"] != run_id and second["metrics"]["engine"] == "ray"
        assert second["counts"]["already"] == len(before) and second["counts"]["attempted"] == total - len(before)
    finally:
        for pid in procs:  # the killed run's Ray agents wait out a 60 s timeout: not to keep them for it
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
