"""Run a per-batch function as a Ray Data pipeline: one dataset row per batch, `map_batches` over them in Ray
tasks (or an actor pool for functions that hold a model), results streamed back to the driver in input order.

The driver cuts the batches (so each call of the function sees exactly the batch the local engine would give it)
and ships each as one pickled row; a worker unpickles it, runs the function, and returns the pickled result.
Results are plain data of heterogeneous shape (table rows, vectors, JPEG bytes or failure records), so they travel
pickled rather than as Arrow columns. Ray's streaming executor bounds the work in flight (backpressure on the
object store and the consumer), and a batch whose worker died is rerun up to `engine.max_retries` times.
"""

from __future__ import annotations

import atexit
import logging
import pickle
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from visprep.config import EngineConfig
from visprep.engines.local import batched, resolve_workers

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

_connect_lock = threading.Lock()


def _run(rows: dict[str, Any], fn: Callable[[Any], Any]) -> dict[str, list]:
    """Ray Data UDF of a task: each row's pickled batch -> its pickled result, keeping the row's sequence number."""
    return {"seq": list(rows["seq"]),
            "result": [pickle.dumps(fn(pickle.loads(b)), protocol=5) for b in rows["batch"]]}


class _BatchActor:
    """Ray Data UDF of an actor pool: holds the function for the actor's life, so a model it caches per process
    is built once per actor."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def __call__(self, rows: dict[str, Any]) -> dict[str, list]:
        return _run(rows, self.fn)


def connect(cfg: EngineConfig) -> None:
    """Join the Ray cluster `cfg.address` names, or start a local Ray with `cfg.num_cpus` CPUs; nothing when this
    process is already connected (a caller's `ray.init` wins)."""
    import ray

    with _connect_lock:
        if ray.is_initialized():
            return
        if cfg.address:
            ray.init(address=cfg.address, log_to_driver=False)
        else:
            # "local": a new Ray of this process. Without it ray.init joins a cluster that `ray start` left on the
            # machine (or RAY_ADDRESS names) and then refuses num_cpus; engine.address = "auto" is how to join one.
            ray.init(address="local", num_cpus=resolve_workers(cfg.num_cpus), include_dashboard=False,
                     log_to_driver=False)
        atexit.register(ray.shutdown)


class RayEngine:
    """Ray Data `map_batches` over the per-batch functions (`visprep.engines.Engine`)."""

    name = "ray"
    remote = True

    def __init__(self, cfg: EngineConfig) -> None:
        try:
            import ray.data  # noqa: F401 - a missing extra is named with its setting
        except ImportError as exc:
            raise ValueError(f"engine.kind = 'ray' needs Ray Data: pip install 'visprep[ray]' ({exc})") from exc
        self.cfg = cfg

    def slots(self, workers: int = 0) -> int:
        """Tasks at once: `workers`, or the cluster's CPUs (one task per CPU) (`Engine.slots`)."""
        import ray

        if workers > 0:
            return workers
        connect(self.cfg)
        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    def map_batches(self, fn: Callable[[Sequence[T]], R], items: Iterable[T], *, batch_size: int, workers: int = 0,
                    max_in_flight: int | None = None, stateful: bool = False) -> Iterator[tuple[list[T], R]]:
        """Yield `(batch, fn(batch))` in input order, each batch run by a Ray task (or actor when `stateful`).

        `workers` caps the concurrent tasks (0: as many as the cluster's CPUs allow) and sizes the actor pool;
        `max_in_flight` is the local engine's knob: here Ray's streaming executor applies backpressure.
        """
        import ray
        import ray.data

        batches = list(batched(items, batch_size))
        if not batches:
            return
        connect(self.cfg)
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # the stage bodies write parts in input order
        ctx.enable_progress_bars = False  # the CLI draws its own
        ctx.enable_rich_progress_bars = False
        rows = [{"seq": i, "batch": pickle.dumps(b, protocol=5)} for i, b in enumerate(batches)]
        # One block (hence one task, one retry unit) per batch.
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        common: dict[str, Any] = {"batch_size": 1, "batch_format": "numpy", "num_cpus": 1}
        retries = self.cfg.max_retries
        # Ray Data's own default retries a dead worker's batch forever: a batch that crashes its worker every time
        # (a decoder fault on a hostile image) would never end the stage. The bound goes through Ray's remote args,
        # the only channel Ray Data has for it (deprecated from 2.60, removed in 2.64: pyproject pins below that).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
            if stateful:
                size = min(self.slots(workers), len(rows))
                out = ds.map_batches(_BatchActor, fn_constructor_args=(fn,),
                                     compute=ray.data.ActorPoolStrategy(size=size), max_restarts=retries,
                                     max_task_retries=retries, **common)
            else:
                out = ds.map_batches(_run, fn_args=(fn,), compute=ray.data.TaskPoolStrategy(
                    size=min(workers, len(rows)) or None), max_retries=retries, **common)
        for expected, row in enumerate(out.iter_rows()):
            if row["seq"] != expected:  # preserve_order is a promise of Ray Data; the tables depend on it
                raise RuntimeError(f"Ray returned batch {row['seq']} where batch {expected} was due")
            yield batches[expected], pickle.loads(row["result"])
