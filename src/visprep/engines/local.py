"""Run a picklable batch function over batches in a local process pool, with bounded work in flight."""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
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


def _init_worker() -> None:
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
    with ProcessPoolExecutor(max_workers=n, initializer=_init_worker, mp_context=ctx) as pool:
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
