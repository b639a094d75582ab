"""Run a picklable batch function over batches in a local process pool, with bounded work in flight; size the pool
to a memory budget; workers end with the process that started them."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def resolve_workers(workers: int) -> int:
    """Return the worker count: `workers`, or one per usable CPU core when 0."""
    if workers > 0:
        return workers
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


_MIB = 1 << 20


@dataclass(frozen=True)
class WorkerPlan:
    """How many worker processes a memory budget allows.

    Attributes:
        requested: the worker count asked for (`resolve_workers` of the setting).
        used: the count to start: `requested`, lowered so that used x per_worker_bytes <= budget_bytes.
        per_worker_bytes: memory one worker may reach.
        budget_bytes: memory all workers may take together.
    """

    requested: int
    used: int
    per_worker_bytes: int
    budget_bytes: int

    @property
    def limited(self) -> bool:
        """Whether the budget lowered the worker count."""
        return self.used < self.requested

    def note(self) -> str:
        """One line for logs and run records."""
        return (f"{self.used} of {self.requested} workers: each may reach {self.per_worker_bytes / _MIB:.0f} MiB, "
                f"the memory budget is {self.budget_bytes / _MIB:.0f} MiB")

    def to_dict(self) -> dict[str, int]:
        """JSON-able figures for run records (sizes in MiB)."""
        return {"requested": self.requested, "used": self.used, "per_worker_mb": round(self.per_worker_bytes / _MIB),
                "budget_mb": round(self.budget_bytes / _MIB)}


def plan_workers(workers: int, *, per_worker_bytes: int, budget_bytes: int,
                 budget_name: str = "memory budget") -> WorkerPlan:
    """Worker count for `workers` (0 = one per core) that keeps workers x per_worker_bytes within budget_bytes.

    Args:
        workers: the requested count; 0 means one per usable core.
        per_worker_bytes: memory one worker may reach (e.g. `visprep.images.decode.decode_worker_bytes`).
        budget_bytes: memory all workers may take together.
        budget_name: the setting that gave `budget_bytes`, named in the error.

    Raises:
        ValueError: the budget cannot hold even one worker, or an argument is not a positive int.
    """
    for name, value in (("per_worker_bytes", per_worker_bytes), ("budget_bytes", budget_bytes)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0, got {workers!r}")
    requested = resolve_workers(workers)
    fit = budget_bytes // per_worker_bytes
    if fit < 1:
        raise ValueError(f"{budget_name} of {budget_bytes / _MIB:.0f} MiB cannot hold one worker, which may reach "
                         f"{per_worker_bytes / _MIB:.0f} MiB: raise it, or lower the per-image limit")
    return WorkerPlan(requested, min(requested, fit), per_worker_bytes, budget_bytes)


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _exit_with(main_pid: int) -> None:
    """Make this worker exit as soon as process `main_pid` (the one that started the pool) ends, however it ends.

    A worker's parent is the forkserver, not the main process, and the forkserver stays up while any worker holds
    its "alive" pipe; the workers hold the write ends of their own task queue. So after a SIGKILL of the main
    process nothing ever reads EOF: workers, forkserver and resource tracker would live on. A daemon thread waits
    on a pidfd of the main process (polls it each second where pidfds are missing) and ends the worker; the
    forkserver and the resource tracker then see their pipes close and exit on their own.
    """
    if sys.platform.startswith("linux"):
        # The forkserver dying (killed on its own) takes its workers too. Best effort: if a sandbox refuses prctl,
        # the watch below still covers the main process dying.
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    try:
        pidfd: int | None = os.pidfd_open(main_pid)
    except ProcessLookupError:
        os._exit(1)  # the main process is already gone
    except (AttributeError, OSError):  # not Linux >= 5.3
        pidfd = None
    threading.Thread(target=_wait_then_exit, args=(main_pid, pidfd), name="visprep-main-watch", daemon=True).start()


def _wait_then_exit(pid: int, pidfd: int | None) -> None:
    if pidfd is not None:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.poll()  # a pidfd turns readable when its process has ended
    else:
        while True:
            time.sleep(1.0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:  # alive (or its pid reused by another user's process)
                continue
    os._exit(1)  # os._exit: no cleanup may block on the dead main process's queues


def _init_worker(main_pid: int | None = None, environ: dict[str, str] | None = None) -> None:
    if main_pid is not None:
        _exit_with(main_pid)
    if environ is not None:
        # The forkserver started with the environment of the pool's first use; a worker must see the caller's now
        # (credentials and endpoints set since, e.g. the AWS variables of a workspace on object storage).
        os.environ.clear()
        os.environ.update(environ)
    # One process per core: stop OpenCV/BLAS from also spawning a thread per core in every worker.
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Yield lists of up to `size` consecutive items."""
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def map_batches(fn: Callable[[Sequence[T]], R], items: Iterable[T], *, batch_size: int, workers: int = 0,
                max_in_flight: int | None = None) -> Iterator[tuple[list[T], R]]:
    """Yield `(batch, fn(batch))` in input order; one worker runs in-process, so tracebacks stay readable."""
    n = resolve_workers(workers)
    batches = batched(items, batch_size)
    if n == 1:
        _init_worker()
        for batch in batches:
            yield batch, fn(batch)
        return
    limit = max_in_flight or 2 * n
    # forkserver, not fork: the caller has threads (fetch pool, DuckDB, OpenCV) and fork would copy held locks.
    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=n, initializer=_init_worker, initargs=(os.getpid(), dict(os.environ)),
                             mp_context=ctx) as pool:
        pending: deque[tuple[list[T], Future[R]]] = deque()
        for batch in batches:
            pending.append((batch, pool.submit(fn, batch)))
            if len(pending) >= limit:
                b, fut = pending.popleft()
                yield b, fut.result()
        while pending:
            b, fut = pending.popleft()
            yield b, fut.result()


def prefetch(chunks: Iterator[T], depth: int = 1) -> Iterator[T]:
    """Yield `chunks` while a thread makes the next `depth` of them ahead: work that releases the GIL (file reads,
    DuckDB parsing, JPEG decoding) overlaps with the consumer. Errors surface where they happened."""
    import queue
    import threading

    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for c in chunks:
                while not stop.is_set():
                    try:
                        q.put(("chunk", c), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("end", None))
        except Exception as exc:  # noqa: BLE001 - any failure is handed to the consumer and raised there
            q.put(("error", exc))

    t = threading.Thread(target=produce, name="visprep-read-ahead", daemon=True)
    t.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(timeout=0.05)
