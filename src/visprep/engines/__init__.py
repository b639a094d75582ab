"""Execution backends for the per-batch functions of the per-record stages (`Stage.per_batch`): a local process
pool, or Ray Data on a Ray cluster for catalogs that outgrow a machine. `get_engine(config)` picks one from
`[engine]`; both map a function over batches and yield `(batch, result)` in input order.

`map_parts` numbers the batches for functions that write their own output part per batch (named by that number,
so a retried batch replaces its part): on Ray the workers write the tables, shards and store parts, and only a
small summary per batch comes back to the driver."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Protocol, TypeVar

from visprep.engines import local

if TYPE_CHECKING:
    from visprep.config import EngineConfig, VisprepConfig
    from visprep.workspace import Workspace

T = TypeVar("T")
R = TypeVar("R")


class Engine(Protocol):
    """Maps a picklable per-batch function over batches of items."""

    name: str
    # Its workers may run on other machines: the stages then have them fetch, write their own outputs (export's
    # shards) and hold the models (the queries stage's), rather than pass bytes through this process.
    remote: bool

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

    def slots(self, workers: int = 0) -> int:
        """How many batches `map_batches(..., workers=workers)` runs at once at most (0: the engine's default)."""
        ...


class LocalEngine:
    """The local process pool (`visprep.engines.local.map_batches`)."""

    name = "local"
    remote = False

    def map_batches(self, fn: Callable[[Sequence[T]], R], items: Iterable[T], *, batch_size: int, workers: int = 0,
                    max_in_flight: int | None = None, stateful: bool = False) -> Iterator[tuple[list[T], R]]:
        """Yield `(batch, fn(batch))` in input order from a forkserver process pool (`Engine.map_batches`)."""
        return local.map_batches(fn, items, batch_size=batch_size, workers=workers, max_in_flight=max_in_flight)

    def slots(self, workers: int = 0) -> int:
        """Worker processes of the pool: `workers`, or one per usable core (`Engine.slots`)."""
        return local.resolve_workers(workers)


def _call_numbered(chunk: Sequence[tuple[int, list]], fn: Callable[[int, list], R]) -> R:
    """Run `fn(seq, batch)` on the one numbered batch an engine hands over (`map_parts`)."""
    ((seq, batch),) = chunk
    return fn(seq, batch)


def map_parts(engine: Engine, fn: Callable[[int, list[T]], R], items: Iterable[T], *, batch_size: int,
              workers: int = 0, stateful: bool = False) -> Iterator[tuple[list[T], R]]:
    """Yield `(batch, fn(seq, batch))` in input order, `seq` numbering the batches from 0: the same batches, in the
    same order, as `engine.map_batches(fn, items, batch_size=...)` would cut.

    For per-batch functions that write their batch's output part themselves, named after `seq` (so a retried batch
    replaces its part rather than adding a second) and return a small summary instead of the rows.
    """
    numbered = enumerate(local.batched(items, batch_size))
    for chunk, result in engine.map_batches(partial(_call_numbered, fn=fn), numbered, batch_size=1,
                                            workers=workers, stateful=stateful):
        yield chunk[0][1], result


def spread(n_items: int, batch: int, slots: int, *, multiple_of: int = 1) -> int:
    """Items per batch: `batch`, or fewer where `n_items` would otherwise make fewer batches than `slots` (so every
    worker gets one), rounded up to a multiple of `multiple_of`; at least 1."""
    even = -(-n_items // max(1, slots))  # ceil
    size = max(1, min(batch, even))
    return -(-size // multiple_of) * multiple_of


def workspace_location(ws: Workspace) -> str:
    """What an engine's worker opens `ws` with (`Workspace(location)`), in another process or on another node: the
    workspace's folder, which every node mounts at the same path, or its URL (each worker then commits its own
    parts to the object store)."""
    return ws.location


def before_parallel_parts(ws: Workspace, name: str, first_part: str) -> None:
    """Make table `name` of `ws` safe for several workers adding parts at once: a one-file table becomes a folder
    on its first `write_part`, which moves the file, a step two workers must not race on. Done here, once, by
    writing an empty part named `first_part`: the first batch's own part, which replaces it."""
    from visprep.schema import schema_for

    if ws.table_path(name).is_file():
        ws.write_part(name, schema_for(name).empty_table(), first_part)


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
