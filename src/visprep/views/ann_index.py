"""One ANN index per (model, pool): built once, kept beside the feature store, reused by every search of that pool.

The mine stage's `ann` miner and the experiment's in-process ANN mining search the same pools (a split's images
with vectors) with the same `mining.*` index settings; each used to build its own FAISS index per call. Here the
index is keyed by:

- the model id,
- the pool: its image ids in order (the index's ids are row positions),
- the feature store's fingerprint (`views.features.store_fingerprint`: any new or replaced part changes it),
- the index parameters (search, its options, the recall target's k for `search = "auto"`),

and saved under `features/<model>/ann-index/<key digest>.faiss` with a JSON sidecar (the key, what the build
chose, the file's sha256). A file whose sidecar, checksum, size or shape does not match is rebuilt and replaced,
never trusted. Entries of an older store fingerprint are removed when a new one is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from visprep.views.features import store_fingerprint
from visprep.workspace import atomic_write_bytes

if TYPE_CHECKING:
    from visprep.embed.store import FeatureStore

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_DIR = "ann-index"
MAX_ENTRIES = 8
"""Index files kept per feature store (the newest; each split's pool of each setting is one)."""
MEMORY_ENTRIES = 2
"""Indexes kept in memory per process (an experiment mines the same pool several times in a row)."""

STATS = {"builds": 0, "loads": 0, "memory_hits": 0}
"""What this process did: indexes built, read from disk, and served from memory (tests and benchmarks read it)."""

_MEMORY: OrderedDict[tuple[str, str], tuple[Any, dict[str, Any]]] = OrderedDict()

BuildFn = Callable[[], tuple[Any, dict[str, Any]]]


def pool_fingerprint(ids: Sequence[str]) -> str:
    """sha256 of the pool's ids in order (the index's row positions)."""
    h = hashlib.sha256()
    for i in ids:
        h.update(i.encode())
        h.update(b"\x00")
    return h.hexdigest()


def index_key(model_id: str, ids: Sequence[str], store_fp: str, params: dict[str, Any]) -> dict[str, Any]:
    """The key of one (model, pool, store state, index parameters) index."""
    return {"version": FORMAT_VERSION, "model_id": model_id, "pool": pool_fingerprint(ids), "size": len(ids),
            "store": store_fp, "params": params}


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def cached_index(folder: Path, key: dict[str, Any], dim: int, build: BuildFn) -> tuple[Any, dict[str, Any]]:
    """The index of `key` from memory, else from `folder`, else `build()` (then saved there atomically).

    Args:
        folder: where this store's indexes live (`features/<model>/ann-index/`).
        key: from `index_key`.
        dim: the vectors' dimension (a saved index of another shape is rebuilt).
        build: builds (index, info) over the pool's vectors in pool order; info is JSON (what the build chose).
    """
    digest = _digest(key)
    mem = (str(folder), digest)
    if mem in _MEMORY:
        _MEMORY.move_to_end(mem)
        STATS["memory_hits"] += 1
        return _MEMORY[mem]
    found = _load(folder, digest, key, dim)
    if found is not None:
        STATS["loads"] += 1
    else:
        found = build()
        STATS["builds"] += 1
        _save(folder, digest, key, *found)
    _MEMORY[mem] = found
    while len(_MEMORY) > MEMORY_ENTRIES:
        _MEMORY.popitem(last=False)
    return found


def _load(folder: Path, digest: str, key: dict[str, Any], dim: int) -> tuple[Any, dict[str, Any]] | None:
    import faiss

    side, data = folder / f"{digest}.json", folder / f"{digest}.faiss"
    try:
        meta = json.loads(side.read_text())
        raw = data.read_bytes()
    except (OSError, ValueError):
        return None
    try:
        if meta.get("key") != key or meta.get("sha256") != hashlib.sha256(raw).hexdigest():
            raise ValueError("key or checksum differs")
        index = faiss.deserialize_index(np.frombuffer(raw, np.uint8))
        if index.ntotal != key["size"] or index.d != dim:
            raise ValueError(f"index holds {index.ntotal} x {index.d}, pool is {key['size']} x {dim}")
    except (ValueError, RuntimeError) as exc:  # FAISS raises RuntimeError on a truncated or foreign file
        log.warning("ann index %s is stale or corrupt (%s): rebuilding it", data, exc)
        return None
    return index, meta.get("info", {})


def _save(folder: Path, digest: str, key: dict[str, Any], index: Any, info: dict[str, Any]) -> None:
    import faiss

    raw = faiss.serialize_index(index).tobytes()
    # The index first, its sidecar last: a sidecar only ever names a complete file with its checksum.
    atomic_write_bytes(folder / f"{digest}.faiss", raw)
    meta = {"key": key, "info": info, "sha256": hashlib.sha256(raw).hexdigest()}
    atomic_write_bytes(folder / f"{digest}.json", json.dumps(meta, sort_keys=True, default=_plain).encode())
    _prune(folder, keep=digest, store_fp=key["store"])


def _plain(value: Any) -> Any:
    """JSON for numpy scalars in a build's info."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {value!r}")


def _prune(folder: Path, *, keep: str, store_fp: str) -> None:
    """Drop entries of another store state (never reusable), then all but the MAX_ENTRIES newest."""
    entries = []
    for side in folder.glob("*.json"):
        digest = side.stem
        try:
            stale = json.loads(side.read_text())["key"]["store"] != store_fp
            mtime = side.stat().st_mtime_ns
        except FileNotFoundError:  # another process pruned it meanwhile
            continue
        except (OSError, ValueError, KeyError, TypeError):
            stale, mtime = True, 0
        if stale and digest != keep:
            _remove(folder, digest)
        else:
            entries.append((mtime, digest))
    for _, digest in sorted(entries, reverse=True)[MAX_ENTRIES:]:
        if digest != keep:
            _remove(folder, digest)


def _remove(folder: Path, digest: str) -> None:
    for suffix in (".json", ".faiss"):
        (folder / f"{digest}{suffix}").unlink(missing_ok=True)


def index_params(search: str, options: dict[str, Any], auto_k: int) -> dict[str, Any]:
    """The parameters an index of `search` depends on (those a build reads; `auto_k` only for "auto")."""
    if search == "auto":
        return {"search": search, "auto_k": auto_k, "seed": options.get("seed", 0)}
    return {"search": search, **{k: options[k] for k in sorted(options)}}


def index_source(store: FeatureStore, ids: Sequence[str], vectors: np.ndarray, *, search: str,
                 options: dict[str, Any], auto_k: int) -> BuildFn:
    """A function returning the shared index (and what its build chose) of the pool `ids` of `store`, whose
    vectors in pool order are `vectors`; it builds or loads only when called (an incremental re-mine that
    re-mines nothing never needs the index)."""
    from visprep.mining.ann import build_pool_index

    ids = list(ids)
    if len(ids) != len(vectors):
        raise ValueError(f"ann index of {store.model_id}: {len(ids)} ids but {len(vectors)} vectors")
    params = index_params(search, options, auto_k)

    def get() -> tuple[Any, dict[str, Any]]:
        key = index_key(store.model_id, ids, store_fingerprint(store.path), params)
        return cached_index(store.path / INDEX_DIR, key, int(vectors.shape[1]),
                            lambda: build_pool_index(vectors, search, options=options, auto_k=auto_k))
    return get
