"""visprep.engines.local: pool sizing to a memory budget, and no process left behind when the main one is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from visprep.engines.local import WorkerPlan, map_batches, plan_workers, resolve_workers

MIB = 1 << 20

linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a live process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """pid -> start time of every live process whose parent chain leads to `root`, from /proc/*/stat."""
    parent: dict[int, int] = {}
    started: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None and st[0] not in "ZX":
            parent[int(entry.name)], started[int(entry.name)] = st[1], st[2]
    found: dict[int, int] = {}
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        for child, ppid in parent.items():
            if ppid == pid and child not in found:
                found[child] = started[child]
                frontier.append(child)
    return found


def _alive(pid: int, started: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in "ZX" and st[2] == started  # a zombie has exited; a new start is reuse


# --- memory budget ---------------------------------------------------------------------------------------


def test_plan_lowers_workers_to_fit_the_budget():
    plan = plan_workers(4, per_worker_bytes=300 * MIB, budget_bytes=1000 * MIB)
    assert plan == WorkerPlan(requested=4, used=3, per_worker_bytes=300 * MIB, budget_bytes=1000 * MIB)
    assert plan.limited and "3 of 4 workers" in plan.note() and "1000 MiB" in plan.note()
    assert plan.to_dict() == {"requested": 4, "used": 3, "per_worker_mb": 300, "budget_mb": 1000}


def test_plan_keeps_workers_that_fit_and_resolves_zero():
    assert plan_workers(2, per_worker_bytes=100 * MIB, budget_bytes=1000 * MIB).used == 2
    auto = plan_workers(0, per_worker_bytes=1, budget_bytes=1 << 40)
    assert auto.used == auto.requested == resolve_workers(0) and not auto.limited


def test_plan_refuses_a_budget_below_one_worker_naming_the_setting():
    with pytest.raises(ValueError, match=r"inspect\.memory_budget_mb.*100 MiB cannot hold one worker.*400 MiB"):
        plan_workers(2, per_worker_bytes=400 * MIB, budget_bytes=100 * MIB, budget_name="inspect.memory_budget_mb")
    with pytest.raises(ValueError, match="per_worker_bytes"):
        plan_workers(2, per_worker_bytes=0, budget_bytes=100)
    with pytest.raises(ValueError, match="workers"):
        plan_workers(-1, per_worker_bytes=1, budget_bytes=100)


# --- orphaned workers ------------------------------------------------------------------------------------

_POOL_MAIN = """
    import time

    from visprep.engines.local import map_batches


    def slow(batch):
        time.sleep(0.3)
        return batch


    if __name__ == "__main__":
        for _batch, _out in map_batches(slow, range(100_000), batch_size=1, workers=2):
            print("batch", flush=True)
"""


@linux_only
def test_no_process_outlives_a_killed_main(tmp_path):
    """kill -9 of the process running map_batches: its forkserver, workers and resource tracker all exit."""
    script = tmp_path / "pool_main.py"
    script.write_text(textwrap.dedent(_POOL_MAIN))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    main = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            cwd=tmp_path, env=env)
    try:
        assert main.stdout is not None and main.stdout.readline() == b"batch\n"  # the pool is up and working
        deadline = time.monotonic() + 30
        tree = descendants(main.pid)
        while len(tree) < 3 and time.monotonic() < deadline:  # forkserver + 2 workers (+ resource tracker)
            time.sleep(0.05)
            tree = descendants(main.pid)
        assert len(tree) >= 3, tree
    finally:
        main.send_signal(signal.SIGKILL)
        main.wait()
    deadline = time.monotonic() + 10
    survivors = tree
    while survivors and time.monotonic() < deadline:
        time.sleep(0.1)
        survivors = {pid: started for pid, started in tree.items() if _alive(pid, started)}
    for pid in survivors:  # leave the machine clean, then fail
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"still alive 10 s after the main process was killed: {sorted(survivors)}"


def _worker_guards(batch: list[int]) -> list[tuple[int, int, bool]]:
    """(pid, parent-death signal, main-watch thread running) of the worker that runs the batch."""
    import ctypes
    import threading

    death_signal = ctypes.c_int(0)
    ctypes.CDLL(None).prctl(2, ctypes.byref(death_signal), 0, 0, 0)  # PR_GET_PDEATHSIG
    watching = any(t.name == "visprep-main-watch" and t.is_alive() for t in threading.enumerate())
    return [(os.getpid(), death_signal.value, watching) for _ in batch]


@linux_only
def test_workers_are_armed_and_the_pool_still_runs():
    """Every worker dies with its parent (SIGKILL) and watches the main process; a healthy pool is unaffected."""
    out = [guard for _, guards in map_batches(_worker_guards, range(8), batch_size=2, workers=2) for guard in guards]
    assert len(out) == 8
    assert all(pid != os.getpid() and death == signal.SIGKILL and watching for pid, death, watching in out), out


def _env_of(batch: list[str]) -> list[str | None]:
    return [os.environ.get(name) for name in batch]


def test_workers_see_the_callers_environment_as_it_is_now(monkeypatch):
    # The forkserver keeps the environment of the pool's first use; credentials set after it (the AWS variables of
    # a workspace on object storage, set by a notebook or a test) must still reach the workers.
    list(map_batches(_env_of, ["VISPREP_TEST_LATE"], batch_size=1, workers=2))
    monkeypatch.setenv("VISPREP_TEST_LATE", "set-after-the-first-pool")
    got = [v for _, out in map_batches(_env_of, ["VISPREP_TEST_LATE"] * 4, batch_size=1, workers=2) for v in out]
    assert got == ["set-after-the-first-pool"] * 4
