"""Execution backends for the per-batch functions of the per-record stages (`Stage.per_batch`): a local process
pool, or Ray Data on a Ray cluster for catalogs that outgrow a machine. `get_engine(config)` picks one from
`[engine]`; both map a function over batches and yield `(batch, result)` in input order."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from visprep.engines import local

if TYPE_CHECKING:
    from visprep.config import EngineConfig, VisprepConfig

T = TypeVar("T")
R = TypeVar("R")


class Engine(Protocol):
    """Maps a picklable per-batch function over batches of items."""

    name: str

    def map_batches(self, fn: Callable[[Sequence[T]], R], items: Iterable[T], *, batch_size: int, workers: int = 0,
                    max_in_flight: int | None = None, stateful: bool = False) -> Iterator[tuple[list[T], R]]:
        """Yield `(batch, fn(batch))` for consecutive batches of up to `batch_size` items, in input order.

        Args:
            fn: a top-level (picklable) function of one batch.
            items: the items; consumed once.
            batch_size: items per batch.
            workers: processes (local) or concurrent tasks/actors (Ray) at most; 0 means one per usable CPU.
            max_in_flight: batches submitted ahead of the one yielded (local; Ray's streaming executor applies
                its own backpressure); default twice the workers.
            stateful: `fn` holds a model it builds once per process: Ray runs it in a pool of `workers` actors
                (one model each); a local worker process keeps it across batches anyway.
        """
        ...


class LocalEngine:
    """The local process pool (`visprep.engines.local.map_batches`)."""

    name = "local"

    def map_batches(self, fn: Callable[[Sequence[T]], R], items: Iterable[T], *, batch_size: int, workers: int = 0,
                    max_in_flight: int | None = None, stateful: bool = False) -> Iterator[tuple[list[T], R]]:
        """Yield `(batch, fn(batch))` in input order from a forkserver process pool (`Engine.map_batches`)."""
        return local.map_batches(fn, items, batch_size=batch_size, workers=workers, max_in_flight=max_in_flight)


def get_engine(config: VisprepConfig | EngineConfig) -> Engine:
    """The engine `[engine] kind` names, for a whole config or its `[engine]` section."""
    from visprep.config import VisprepConfig

    cfg = config.engine if isinstance(config, VisprepConfig) else config
    if cfg.kind == "local":
        return LocalEngine()
    if cfg.kind == "ray":
        from visprep.engines.ray_engine import RayEngine

        return RayEngine(cfg)
    raise ValueError(f"engine.kind must be 'local' or 'ray', got {cfg.kind!r}")
