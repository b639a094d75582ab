"""Reading (id, vector) embeddings from Parquet: the feature store's layout, or any file until it exists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from visprep.views.features import features_root

ID_COLUMNS = ("image_id", "id")
VECTOR_COLUMNS = ("vector", "embedding")


def features_path(root: Path, model: str) -> Path:
    """Where the feature store keeps `model`'s embeddings: `<workspace>/features/<model>/`."""
    if not model or "/" in model or model.startswith("."):
        raise ValueError(f"model name {model!r} must be non-empty, without '/' and not start with '.'")
    return features_root(root) / model


def read_embeddings(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Read a Parquet file (or a folder of them) with an id column (`image_id` or `id`) and a vector column
    (`vector` or `embedding`, a list or fixed-size list of floats); return (ids, (n, d) float32).

    Raises:
        FileNotFoundError: nothing at `path`.
        ValueError: columns missing, vectors of different lengths, null or non-finite values, duplicate ids.
    """
    path = Path(path)
    files = sorted(p for p in path.glob("*.parquet") if not p.name.startswith(".")) if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise FileNotFoundError(f"no embeddings Parquet at {path}")
    tables = [pq.read_table(f) for f in files]
    t = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    id_col = next((c for c in ID_COLUMNS if c in t.column_names), None)
    vec_col = next((c for c in VECTOR_COLUMNS if c in t.column_names), None)
    if id_col is None or vec_col is None:
        raise ValueError(f"{path}: embeddings need an id column ({' or '.join(ID_COLUMNS)}) and a vector column "
                         f"({' or '.join(VECTOR_COLUMNS)}); found {t.column_names}")
    ids = [str(v) for v in t.column(id_col).to_pylist()]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate ids in column {id_col!r}")
    vec = t.column(vec_col).combine_chunks()
    if vec.null_count:
        raise ValueError(f"{path}: {vec.null_count} null vectors in column {vec_col!r}")
    if pa.types.is_fixed_size_list(vec.type):
        dim = vec.type.list_size
    else:
        lengths = pc.list_value_length(vec).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != lengths[0]).any():
            bad = int(np.flatnonzero(lengths != lengths[0])[0])
            raise ValueError(f"{path}: vector of id {ids[bad]!r} has {lengths[bad]} values, the first has {lengths[0]}")
        dim = int(lengths[0]) if len(lengths) else 0
    flat = pc.list_flatten(vec).to_numpy(zero_copy_only=False).astype(np.float32)
    matrix = flat.reshape(len(ids), dim)
    if not np.isfinite(matrix).all():
        raise ValueError(f"{path}: non-finite values in column {vec_col!r}")
    return ids, matrix


def write_embeddings(path: str | Path, ids: list[str], vectors: np.ndarray, *, model: str) -> Path:
    """Write (image_id, vector, model_id) Parquet, the layout `read_embeddings` reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    vectors = np.asarray(vectors, dtype=np.float32)
    arr = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
    table = pa.table({"image_id": pa.array(ids, pa.string()), "vector": arr,
                      "model_id": pa.array([model] * len(ids), pa.string())})
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path
