"""The feature store: one folder per model id, `features/<model_id>/`, holding

- `parts/part-<seq>-<writer>.parquet`: rows (image_id, content_hash, made_at, vector) in append order; a part is
  one checkpoint of one run of its writer (the stage that wrote it: embed, embed_views, shift, ...), written
  atomically, so a killed run keeps what it finished; a fingerprint per writer (`writer_fingerprint`) lets a
  reader of one writer's vectors ignore another's appends. Parts written before the tag (`part-<seq>.parquet`)
  count as the embed stage's;
- `index.faiss`: a FAISS index over the vectors whose ids are row positions in that order (so appending vectors
  appends to the index); rebuilt or extended on open when it lags the parts (a run killed between the two writes);
- `meta.json`: model id, dimension, index kind.

Vectors are L2-normalised float32, so inner product is cosine similarity.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from visprep.views.features import store_dir_name
from visprep.workspace import Workspace, atomic_write_bytes, atomic_write_parquet, files_fingerprint, utcnow

IndexKind = Literal["flat", "hnsw"]
INDEX_KINDS: tuple[str, ...] = ("flat", "hnsw")


STORE_WRITERS = ("embed", "embed_views", "shift", "embed-import")
"""The stages that append to feature stores, each tagging its parts with its name."""
UNTAGGED_WRITER = "embed"
"""The writer of parts written before parts were tagged (the embed stage embedded everything then)."""


PARALLEL_PART = re.compile(r"\d{8}\.\d{6}")
"""The sequence field of a part that one of several parallel workers wrote: `<base>.<batch>`."""


def parallel_part_name(base: int, batch: int) -> str:
    """The sequence field of batch `batch` of a run that started when the store had `base` parts: it sorts after
    every part written before the run and in batch order within it, so store order is the batches' order."""
    return f"{base:08d}.{batch:06d}"


def part_writer(path: Path) -> str:
    """The writer of a store part, from its file name `part-<seq>-<writer>.parquet` (untagged: `UNTAGGED_WRITER`)."""
    stem = path.name[: -len(".parquet")]
    _, _, rest = stem.partition("-")
    _, sep, writer = rest.partition("-")
    return writer if sep else UNTAGGED_WRITER


def writer_fingerprint(root: Workspace | Path | str, model_id: str, writer: str) -> str:
    """A cheap fingerprint (names, sizes, mtimes) of the parts `writer` appended to `model_id`'s store under the
    `features/` folder `root` (or a workspace, whose `features/` it uses): what a reader of only that writer's
    vectors depends on. Equal while that writer appends nothing, whatever the other writers do."""
    if writer not in STORE_WRITERS:
        raise ValueError(f"unknown feature store writer {writer!r}; valid: {', '.join(STORE_WRITERS)}")
    root = root.root / "features" if isinstance(root, Workspace) else Path(root)
    parts = root / store_dir_name(model_id) / "parts"
    return files_fingerprint(p for p in (sorted(parts.glob("part-*.parquet")) if parts.is_dir() else [])
                             if part_writer(p) == writer)


def feature_schema(dim: int) -> pa.Schema:
    """Arrow schema of the store's parts for vectors of dimension `dim`."""
    return pa.schema([
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("content_hash", pa.string(), nullable=False),  # sha256 of the bytes embedded
        pa.field("made_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
    ])


def new_index(dim: int, kind: str, *, hnsw_m: int = 32) -> Any:
    """Return an empty inner-product FAISS index of `kind` ("flat": exact; "hnsw": graph, appendable)."""
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        return faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    raise ValueError(f"unknown index kind {kind!r}; valid: {', '.join(INDEX_KINDS)}")


class FeatureStore:
    """Embeddings of one model, keyed by image id.

    Args:
        root: the workspace's `features/` folder.
        model_id: the embedder's id (includes the weights' version); a new id is a new store.
        dim: vector dimension; checked against an existing store.
        index_kind: "flat" or "hnsw", used when the store is created.
    """

    def __init__(self, root: Path, model_id: str, dim: int, *, index_kind: str = "flat", hnsw_m: int = 32) -> None:
        if index_kind not in INDEX_KINDS:
            raise ValueError(f"unknown index kind {index_kind!r}; valid: {', '.join(INDEX_KINDS)}")
        self.path = Path(root) / store_dir_name(model_id)
        self.model_id = model_id
        meta_path = self.path / "meta.json"
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if meta["model_id"] != model_id or int(meta["dim"]) != dim:
                raise ValueError(f"feature store {self.path} holds {meta['model_id']} dim {meta['dim']}, "
                                 f"not {model_id} dim {dim}")
            self.index_kind = meta["index_kind"]
            self.hnsw_m = int(meta.get("hnsw_m", hnsw_m))
        else:
            self.index_kind, self.hnsw_m = index_kind, hnsw_m
        self.dim = dim
        self.schema = feature_schema(dim)
        self._ids: list[str] | None = None
        self._hashes: list[str] | None = None
        self._id_array: pa.Array | None = None
        self._index: Any = None

    @classmethod
    def open_existing(cls, root: Path, model_id: str) -> FeatureStore:
        """Open the store of `model_id`; FileNotFoundError when it was never written."""
        meta_path = Path(root) / store_dir_name(model_id) / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"no feature store for model {model_id!r} under {root}; run `visprep embed` first")
        return cls(root, model_id, int(json.loads(meta_path.read_text())["dim"]))

    # --- reading ------------------------------------------------------------------------------------------
    def _parts(self) -> list[Path]:
        d = self.path / "parts"
        return sorted(p for p in d.glob("part-*.parquet")) if d.exists() else []

    def part_count(self) -> int:
        """How many parts the store holds (what `parallel_part_name` of a new run starts from)."""
        return len(self._parts())

    def _load_keys(self) -> None:
        ids: list[str] = []
        hashes: list[str] = []
        for p in self._parts():
            t = pq.read_table(p, columns=["image_id", "content_hash"])
            ids.extend(t.column("image_id").to_pylist())
            hashes.extend(t.column("content_hash").to_pylist())
        self._ids, self._hashes = ids, hashes

    def ids(self) -> list[str]:
        """Image ids in store order (row i is index id i)."""
        if self._ids is None:
            self._load_keys()
        assert self._ids is not None
        return self._ids

    def __len__(self) -> int:
        return len(self._ids) if self._ids is not None else len(self.id_array())

    def id_array(self) -> pa.Array:
        """Image ids in store order as one Arrow string array (what bulk lookups search: no Python string per
        row), read once per store object."""
        if self._id_array is None:
            if self._ids is not None:
                self._id_array = pa.array(self._ids, pa.string())
            else:
                cols = [pq.read_table(p, columns=["image_id"]).column("image_id") for p in self._parts()]
                self._id_array = (pa.chunked_array([c for col in cols for c in col.chunks], pa.string())
                                  .combine_chunks() if cols else pa.array([], pa.string()))
        return self._id_array

    def current(self, image_ids: Sequence[str], content_hashes: Sequence[str] | None = None) -> np.ndarray:
        """(N,) bool: which images have a vector made from these exact bytes (hash = image id when omitted)."""
        if self._ids is None:
            self._load_keys()
        have = set(zip(self._ids or [], self._hashes or []))
        hashes = image_ids if content_hashes is None else content_hashes
        return np.fromiter(((i, h) in have for i, h in zip(image_ids, hashes)), bool, len(image_ids))

    def table(self, columns: list[str] | None = None) -> pa.Table:
        """All rows, in store order."""
        parts = [pq.read_table(p, columns=columns) for p in self._parts()]
        if not parts:
            return self.schema.empty_table().select(columns) if columns else self.schema.empty_table()
        return pa.concat_tables(parts)

    def vectors(self, start: int = 0) -> np.ndarray:
        """(len - start, dim) float32: the vectors from store position `start` on, in store order."""
        parts, seen = [], 0
        for p in self._parts():
            rows = pq.ParquetFile(p).metadata.num_rows
            if seen + rows > start:
                t = pq.read_table(p, columns=["vector"])
                parts.append(t.slice(max(0, start - seen)))
            seen += rows
        col = pa.concat_tables(parts).column("vector") if parts else pa.chunked_array([], self.schema.field("vector").type)
        if len(col) == 0:
            return np.zeros((0, self.dim), np.float32)
        flat = pa.concat_arrays([c.flatten() for c in col.chunks]) if col.num_chunks > 1 else col.chunk(0).flatten()
        return flat.to_numpy(zero_copy_only=False).reshape(-1, self.dim).astype(np.float32, copy=False)

    def get(self, image_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Bulk lookup: (vectors (N, dim) float32, found (N,) bool); rows not found are zero.

        The newest vector of an id wins when it was embedded twice.
        """
        pos = self.positions(image_ids)
        found = pos >= 0
        out = np.zeros((len(image_ids), self.dim), np.float32)
        if found.any():
            out[found] = self.vectors_at(pos[found])
        return out, found

    def vectors_at(self, positions: np.ndarray) -> np.ndarray:
        """(len(positions), dim) float32: the vectors at store `positions`, read part by part (only one part's
        vectors besides the result are in memory, never the whole store's)."""
        positions = np.asarray(positions, np.int64)
        out = np.zeros((len(positions), self.dim), np.float32)
        if len(positions) == 0:
            return out
        if positions.min() < 0 or positions.max() >= len(self):
            raise ValueError(f"feature store {self.path}: positions must be in 0..{len(self) - 1}, got "
                             f"{positions.min()}..{positions.max()}")
        order = np.argsort(positions, kind="stable")
        sorted_pos = positions[order]
        seen = 0
        for p in self._parts():
            rows = pq.ParquetFile(p).metadata.num_rows
            lo, hi = np.searchsorted(sorted_pos, [seen, seen + rows])
            if hi > lo:
                col = pq.read_table(p, columns=["vector"]).column("vector")
                flat = pa.concat_arrays([c.flatten() for c in col.chunks]) if col.num_chunks > 1 else \
                    col.chunk(0).flatten()
                part = flat.to_numpy(zero_copy_only=False).reshape(-1, self.dim)
                out[order[lo:hi]] = part[sorted_pos[lo:hi] - seen]
            seen += rows
        return out

    def positions(self, image_ids: Sequence[str]) -> np.ndarray:
        """(N,) int64 store positions (index ids) of `image_ids`, -1 when absent; the newest row wins."""
        import pyarrow.compute as pc

        ids = self.id_array()
        n = len(ids)
        if n == 0 or len(image_ids) == 0:
            return np.full(len(image_ids), -1, np.int64)
        # index_in finds an id's first occurrence: searched in reverse store order, that is its newest row.
        newest_first = ids.take(pa.array(np.arange(n - 1, -1, -1, dtype=np.int64)))
        at = pc.index_in(pa.array(image_ids, pa.string()), value_set=newest_first)
        at = pc.fill_null(at, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        return np.where(at >= 0, n - 1 - at, -1)

    # --- index --------------------------------------------------------------------------------------------
    def index(self) -> Any:
        """The FAISS index over every vector (ids = store positions), brought up to date on first use."""
        import faiss

        n = len(self)
        if self._index is not None and self._index.ntotal == n:
            return self._index
        path = self.path / "index.faiss"
        if self._index is not None:
            index = self._index
        elif path.exists():
            index = faiss.read_index(str(path))
        else:
            index = new_index(self.dim, self.index_kind, hnsw_m=self.hnsw_m)
        if index.ntotal > n:  # parts were lost or replaced: the index cannot be trusted
            index = new_index(self.dim, self.index_kind, hnsw_m=self.hnsw_m)
        if index.ntotal < n:
            index.add(self.vectors(index.ntotal))
            self._save_index(index)
        self._index = index
        return index

    def _save_index(self, index: Any) -> None:
        import faiss

        atomic_write_bytes(self.path / "index.faiss", faiss.serialize_index(index).tobytes())

    # --- writing ------------------------------------------------------------------------------------------
    def append(self, image_ids: Sequence[str], vectors: np.ndarray, *, content_hashes: Sequence[str] | None = None,
               made_at: dt.datetime | None = None, update_index: bool = True, writer: str = "embed",
               part: str | None = None) -> int:
        """Append rows atomically (one new part, tagged with `writer`) and add them to the index; return how many.

        With `update_index=False` the index catches up on the next `index()` call (one index write per run
        instead of one per checkpoint).

        Args:
            image_ids: N ids.
            vectors: (N, dim) float32, L2-normalised.
            content_hashes: sha256 of the bytes embedded; default the image ids (content-addressed store).
            writer: the stage appending (one of `STORE_WRITERS`), named in the part's file name.
            part: the part's sequence field, instead of the next number: `parallel_part_name` of a batch, for
                workers that append at the same time (each its own part; a rerun of the batch replaces it).
                Needs `update_index=False`: the index is brought up to date by one process afterwards.
        """
        if part is not None and (update_index or not PARALLEL_PART.fullmatch(part)):
            raise ValueError(f"part must be a parallel_part_name and go with update_index=False, got {part!r}")
        if writer not in STORE_WRITERS:
            raise ValueError(f"unknown feature store writer {writer!r}; valid: {', '.join(STORE_WRITERS)}")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape != (len(image_ids), self.dim):
            raise ValueError(f"vectors must be ({len(image_ids)}, {self.dim}), got {vectors.shape}")
        if len(image_ids) == 0:
            return 0
        hashes = list(image_ids if content_hashes is None else content_hashes)
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / "meta.json").exists():
            meta = {"model_id": self.model_id, "dim": self.dim, "index_kind": self.index_kind,
                    "hnsw_m": self.hnsw_m, "created_at": utcnow().isoformat()}
            atomic_write_bytes(self.path / "meta.json", json.dumps(meta, indent=2).encode())
        index = self.index() if update_index else None  # bring the saved index up to date first
        seq = f"{len(self._parts()):08d}" if part is None else part
        when = made_at or utcnow()
        table = pa.table({
            "image_id": pa.array(list(image_ids), pa.string()),
            "content_hash": pa.array(hashes, pa.string()),
            "made_at": pa.array([when] * len(image_ids), pa.timestamp("us", tz="UTC")),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), self.dim),
        }, schema=self.schema)
        atomic_write_parquet(self.path / "parts" / f"part-{seq}-{writer}.parquet", table)
        if index is not None:
            index.add(vectors)
            self._save_index(index)
        if self._ids is not None and self._hashes is not None:
            self._ids.extend(image_ids)
            self._hashes.extend(hashes)
        if self._id_array is not None:
            self._id_array = pa.concat_arrays([self._id_array, pa.array(list(image_ids), pa.string())])
        return len(image_ids)
