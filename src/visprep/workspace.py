"""The workspace: paths, atomic table I/O, the content-addressed image store, run records and quarantine."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from visprep import __version__
from visprep.config import CONFIG_FILE, StorageConfig, VisprepConfig, load_config, section_params
from visprep.schema import QUARANTINE, schema_for
from visprep.views.features import features_root


def utcnow() -> dt.datetime:
    """Return the current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


def atomic_write_bytes(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# Rows of a stored table compared at a time by `write_table_if_changed`: the old table is read a batch at a time.
_COMPARE_BATCH = 65_536


#: Rows per Parquet row group, pyarrow's default; a table conformed while written is conformed this many rows at
#: a time, so the file is laid out as `pq.write_table` would lay out the whole conformed table.
ROW_GROUP_ROWS = 1 << 20


def atomic_write_parquet(path: Path, table: pa.Table, schema: pa.Schema | None = None) -> None:
    """Write `table` to `path` as zstd Parquet, atomically (temporary name, then rename); with `schema`, conformed
    to it one row group at a time (a whole part decoded at once, e.g. mine's dictionary-encoded rows cast back to
    strings, was the largest step of mine's peak: ~200 MiB at 100k products, ~1.6 GiB at 1M)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    os.close(fd)
    try:
        if schema is None or table.num_rows <= ROW_GROUP_ROWS:
            pq.write_table(table if schema is None else conform(table, schema), tmp, compression="zstd")
        else:
            with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
                for start in range(0, table.num_rows, ROW_GROUP_ROWS):
                    writer.write_table(conform(table.slice(start, ROW_GROUP_ROWS), schema),
                                       row_group_size=ROW_GROUP_ROWS)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _temp_prefix(path: Path) -> str:
    # The writer's pid in the name tells a dead writer's leftover from a live writer's file in progress.
    return f".{path.name}.{os.getpid()}."


def clean_dead_temporaries(folder: Path, *, legacy_age_s: float = 3600.0) -> int:
    """Remove the temporary files (`.<name>.<pid>.<random>.tmp`) that writers killed mid-write left under `folder`;
    a live writer's file is kept. Returns how many were removed."""
    n = 0
    if not folder.is_dir():
        return 0
    for tmp in folder.rglob(".*.tmp"):
        parts = tmp.name[:-len(".tmp")].rsplit(".", 2)
        pid = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None
        if pid is not None:
            dead = pid != os.getpid() and not _alive(pid)
        else:  # written before temporaries carried a pid: only an old one is surely abandoned
            dead = time.time() - tmp.stat().st_mtime > legacy_age_s
        if dead:
            tmp.unlink(missing_ok=True)
            n += 1
    return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Return a content fingerprint of a file (sha256, size): what a run record says it read."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": h.hexdigest()}


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Return `table` with exactly `schema`'s columns, in order, cast; missing nullable columns become nulls."""
    columns = []
    for f in schema:
        if f.name in table.column_names:
            columns.append(table.column(f.name).cast(f.type))
        elif f.nullable:
            columns.append(pa.nulls(table.num_rows, f.type))
        else:
            raise ValueError(f"table is missing required column {f.name!r} ({f.type})")
    return pa.Table.from_arrays(columns, schema=schema)


class ImageStore:
    """Content-addressed image bytes: `images/<aa>/<bb>/<sha256>.<ext>`, so one photo is stored once."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, image_id: str, ext: str) -> Path:
        """Return where image `image_id` with extension `ext` lives."""
        return self.root / image_id[:2] / image_id[2:4] / f"{image_id}.{ext}"

    def put(self, data: bytes, ext: str) -> str:
        """Store `data` (atomically, once) and return its image id, the sha256 hex digest."""
        image_id = hashlib.sha256(data).hexdigest()
        target = self.path(image_id, ext)
        if not target.exists():
            # No fsync: a killed process leaves the old state or the whole file (rename is atomic);
            # fsync per image would cap a fetch at the disk's sync rate.
            atomic_write_bytes(target, data, fsync=False)
        return image_id

    def uri(self, image_id: str, ext: str) -> str:
        """Return the URL of image `image_id` (a file:// URI here; the object's URL in an object store)."""
        return self.path(image_id, ext).as_uri()

    def ref(self, image_id: str, ext: str) -> str:
        """What a worker reads image `image_id` by, in any process or on any node (`image_file`): its path here,
        where every node mounts the workspace's folder."""
        return str(self.path(image_id, ext))

    @property
    def root_uri(self) -> str:
        """The URL every image's `uri` starts with."""
        return self.root.as_uri()

    def get(self, image_id: str, ext: str) -> bytes:
        """Return the stored bytes of `image_id`."""
        return self.path(image_id, ext).read_bytes()

    def exists(self, image_id: str, ext: str) -> bool:
        """Tell whether `image_id` is stored."""
        return self.path(image_id, ext).exists()

    def clean_temporaries(self) -> int:
        """Remove temporary files a killed writer left behind; return how many."""
        n = 0
        if self.root.exists():
            for tmp in self.root.glob("*/*/.*.tmp"):
                tmp.unlink(missing_ok=True)
                n += 1
        return n


def image_file(ref: str) -> Path:
    """The local file of an image handed over as `ImageStore.ref`: the path itself, or, for an image in an object
    store, this process's cached copy (fetched from the store on a miss; missing when the store lacks it)."""
    if "://" not in ref:
        return Path(ref)
    from visprep.storage.remote import cached_image

    return cached_image(ref)


def store_at(location: str) -> ImageStore:
    """The image store of the workspace at `location` (`Workspace.location`), opened once per process: a worker
    storing images itself (an object store lists what it holds once, then remembers what it stored)."""
    return _store_at(location, os.environ.get("VISPREP_CACHE"))


@functools.lru_cache(maxsize=8)
def _store_at(location: str, cache_env: str | None) -> ImageStore:
    return Workspace(location).store


@dataclass
class QuarantineRecord:
    """One refused record: where it came from, which field, what value, and why."""

    reason: str
    detail: str
    source: str | None = None
    line: int | None = None
    record_id: str | None = None
    field: str | None = None
    value: str | None = None


@dataclass
class RunRecord:
    """What a stage run read, with which parameters, and what it produced; saved as `runs/<run_id>.json`."""

    stage: str
    run_id: str
    params: dict[str, Any]
    inputs: dict[str, Any] = field(default_factory=dict)  # what the stage itself notes (files, pending counts)
    # Fingerprints of the stage's declared reads at its start and writes at its end (`visprep.stages`): what its
    # freshness is judged by.
    reads: dict[str, Any] = field(default_factory=dict)
    writes: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    status: str = "running"
    started_at: str = ""
    finished_at: str | None = None
    seconds: float | None = None
    version: str = __version__
    notes: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)  # stage-specific figures (e.g. concentration reports)

    def to_json(self) -> str:
        """Serialise for `runs/<run_id>.json`."""
        return json.dumps(self.__dict__, indent=2, sort_keys=True, default=str)


class Workspace:
    """A visprep workspace folder: tables, image store, shards, runs, config.

    `Workspace("s3://bucket/prefix")` (any URL `visprep.storage.objects.is_url` accepts) opens a workspace on an
    object store instead (`visprep.storage.remote.ObjectWorkspace`): the same methods, with `root` its local cache.
    """

    def __new__(cls, root: str | Path | None = None, *args: Any, **kwargs: Any) -> Self:
        """A `Workspace` for a folder; an `ObjectWorkspace` for a URL (no `root`: unpickling, the class given)."""
        from visprep.storage.objects import is_url

        if cls is Workspace and root is not None and is_url(root):
            from visprep.storage.remote import ObjectWorkspace

            return super().__new__(ObjectWorkspace)
        return super().__new__(cls)

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.tables_dir = self.root / "tables"
        self.runs_dir = self.root / "runs"
        self.shards_dir = self.root / "shards"
        self._store: ImageStore | None = None
        self._config: VisprepConfig | None = None
        self._stages: list[str] = []  # the stage runs open in this process, innermost last
        self.read_log: dict[str, set[str]] = {}  # stage -> tables its runs in this process read
        self._overrides: dict[str, Any] = {}  # command-line options of the stage run being made (`overrides`)

    @property
    def location(self) -> str:
        """What reopens this workspace in another process or on another machine: its folder, or its URL."""
        return str(self.root)

    @property
    def is_folder(self) -> bool:
        """Whether the workspace is its folder (`root`), the one every worker mounts and writes into: False on
        object storage, where `root` is a cache of this process's own and another node's workers have theirs."""
        return True

    @property
    def store(self) -> ImageStore:
        """The image store: the workspace's images/ folder, or objects at `storage.images` with images/ their
        local copy."""
        if self._store is None:
            storage = self._storage_config()
            if storage.images:
                from visprep.storage.objects import ObjectStore
                from visprep.storage.remote import ObjectImageStore

                self._store = ObjectImageStore(self.root / "images", ObjectStore(storage.images, storage.options))
            else:
                self._store = ImageStore(self.root / "images")
        return self._store

    def _storage_config(self) -> StorageConfig:
        """The `[storage]` section alone: the image store must not depend on the other sections being valid (a
        bad one is reported where the configuration is used)."""
        if self._config is not None:
            return self._config.storage
        try:
            return self.config.storage
        except ValueError:
            import tomllib

            try:
                raw = tomllib.loads(self.config_path.read_text(encoding="utf-8")).get("storage") or {}
            except (OSError, tomllib.TOMLDecodeError):
                raw = {}
            return StorageConfig.model_validate(raw)

    # --- config -----------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        """Path of the workspace's `visprep.toml`."""
        return self.root / CONFIG_FILE

    @property
    def config(self) -> VisprepConfig:
        """The validated configuration (defaults when no `visprep.toml` exists)."""
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config

    def set_config(self, config: VisprepConfig) -> None:
        """Use `config` for this process (does not write the file)."""
        self._config = config
        self._store = None

    def write_config_text(self, text: str) -> None:
        """Write the workspace's `visprep.toml` (and, on an object store, publish it)."""
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(text, encoding="utf-8")
        self._config = None
        self._store = None

    # --- object storage: what the runner pulls before a stage and publishes after it ---------------------
    def pull(self, names: Iterable[str]) -> None:
        """Bring the tables and resources `names` up to date with their object store (a local folder has none)."""

    def publish(self, names: Iterable[str]) -> None:
        """Publish what a stage wrote of the tables and resources `names` to the object store: for a local folder,
        the images a stage stored (`storage.images`) and the shards (`storage.shards`) when configured."""
        names = set(names)
        storage = self._storage_config()
        if not (storage.images or storage.shards):
            return
        from visprep.storage.remote import ObjectImageStore, publish_shards

        if isinstance(self.store, ObjectImageStore):
            self.store.push()
        if "shards" in names and storage.shards:
            publish_shards(self)

    # --- tables -----------------------------------------------------------------------------------------
    def table_path(self, name: str) -> Path:
        """Return `tables/<name>.parquet` (a file, or a folder of parts)."""
        schema_for(name)
        return self.tables_dir / f"{name}.parquet"

    def has_table(self, name: str) -> bool:
        """Tell whether table `name` has been written."""
        return self.table_path(name).exists()

    def _part_files(self, name: str) -> list[Path]:
        path = self.table_path(name)
        if path.is_dir():
            return sorted(p for p in path.glob("*.parquet") if not p.name.startswith("."))
        return [path] if path.exists() else []

    def part_paths(self, name: str) -> list[Path]:
        """Return the Parquet files of table `name` (none when it does not exist), for readers that scan lazily."""
        self._log_read(name)
        return self._part_files(name)

    def _log_read(self, name: str) -> None:
        # Which tables each stage run reads, so tests can check them against the stage's declared reads.
        if self._stages:
            self.read_log.setdefault(self._stages[-1], set()).add(name)

    def part_count(self, name: str) -> int:
        """Return how many Parquet files table `name` has (0 when it does not exist)."""
        return len(self._part_files(name))

    def read_table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        """Read table `name` (all parts), conformed to its schema; an empty table when it does not exist."""
        schema = schema_for(name)
        self._log_read(name)
        parts = [conform(pq.read_table(p), schema) for p in self._part_files(name)]
        table = pa.concat_tables(parts) if parts else schema.empty_table()
        return table.select(columns) if columns else table

    def check_writer(self, name: str) -> None:
        """Raise `PermissionError` when the innermost open stage run may not write table `name` (`schema.WRITERS`):
        a table has one writer, so a stage that writes another's table is a bug, caught where it happens."""
        from visprep.schema import WRITERS

        if not self._stages:
            return  # library and test code outside a stage run
        stage, allowed = self._stages[-1], WRITERS.get(name, ())
        if "*" not in allowed and stage not in allowed:
            raise PermissionError(f"stage {stage!r} may not write table {name!r}: its writer is "
                                  f"{' or '.join(allowed) or 'undeclared'} (visprep.schema.WRITERS)")

    def write_table(self, name: str, table: pa.Table) -> None:
        """Replace table `name` atomically with `table` (conformed to the table's schema)."""
        self.check_writer(name)
        table = conform(table, schema_for(name))
        path = self.table_path(name)
        if path.is_dir():
            # Replace a parted table: write the whole as one new part, then drop the old parts.
            old = self._part_files(name)
            new = path / f"part-{time.time_ns():020d}-full.parquet"
            atomic_write_parquet(new, table)
            for p in old:
                p.unlink(missing_ok=True)
            return
        atomic_write_parquet(path, table)

    def write_table_if_changed(self, name: str, table: pa.Table) -> bool:
        """`write_table` unless the stored table holds the same rows in the same order (its `run_id` column aside):
        an unchanged output keeps its fingerprint, so the stages reading it stay up to date. Returns whether it
        wrote."""
        table = conform(table, schema_for(name))
        if self.has_table(name) and self._stored_equals(name, table):
            return False
        self.write_table(name, table)
        return True

    def _stored_equals(self, name: str, table: pa.Table) -> bool:
        """Whether stored table `name` holds `table`'s rows in order (`run_id` aside), read a batch at a time: the
        stored table is never whole in memory, and the first differing batch ends the read."""
        schema = schema_for(name)
        same = [c for c in table.column_names if c != "run_id"]
        files = self._part_files(name)
        if sum(pq.ParquetFile(p).metadata.num_rows for p in files) != table.num_rows:
            return False
        at = 0
        for p in files:
            stored = pq.ParquetFile(p)
            # Older parts may lack a column the schema gained since: conform fills it, as read_table does.
            columns = [c for c in same if c in stored.schema_arrow.names]
            for batch in stored.iter_batches(batch_size=_COMPARE_BATCH, columns=columns):
                old = conform(pa.Table.from_batches([batch]), schema).select(same)
                if not old.equals(table.slice(at, batch.num_rows).select(same)):
                    return False
                at += batch.num_rows
        return True

    def write_part(self, name: str, table: pa.Table, part: str) -> Path:
        """Add (or replace) part `part` of table `name`; the table becomes a folder of parts."""
        self.check_writer(name)
        path = self.table_path(name)
        if path.is_file():
            legacy = path.with_name(f".{path.name}.legacy")
            os.replace(path, legacy)
            path.mkdir(parents=True)
            os.replace(legacy, path / "part-00000000000000000000-full.parquet")
        path.mkdir(parents=True, exist_ok=True)
        target = path / f"part-{part}.parquet"
        atomic_write_parquet(target, table, schema_for(name))
        return target

    def delete_parts(self, name: str, prefix: str) -> int:
        """Remove the parts of table `name` whose part name starts with `prefix`; return how many."""
        self.check_writer(name)
        path = self.table_path(name)
        n = 0
        if path.is_dir():
            for p in path.glob(f"part-{prefix}*.parquet"):
                p.unlink()
                n += 1
        return n

    def table_fingerprint(self, name: str) -> str:
        """A cheap fingerprint of a table's files (names, sizes, mtimes): what downstream runs depend on."""
        return files_fingerprint(self._part_files(name))

    def table_names(self) -> list[str]:
        """Return the names of the tables present."""
        if not self.tables_dir.exists():
            return []
        return sorted(p.name[: -len(".parquet")] for p in self.tables_dir.glob("*.parquet"))

    # --- quarantine -------------------------------------------------------------------------------------
    def quarantine(self, records: Iterable[QuarantineRecord], *, stage: str, run_id: str, key: str) -> int:
        """Record refused records of `stage` under `key`, replacing what that stage recorded under `key` before."""
        rows = list(records)
        part = f"{stage}-{_safe_part(key)}"
        if not rows:
            (self.table_path("quarantine") / f"part-{part}.parquet").unlink(missing_ok=True)
            return 0
        path = self.table_path("quarantine") / f"part-{part}.parquet"
        if path.exists() and _same_quarantine(pq.read_table(path), stage, rows):
            return len(rows)  # what it holds already: a rerun that found the same faults rewrites nothing
        now = utcnow()
        table = pa.Table.from_pylist(
            [
                {
                    "stage": stage,
                    "run_id": run_id,
                    "source": r.source,
                    "line": r.line,
                    "record_id": r.record_id,
                    "field": r.field,
                    "value": None if r.value is None else str(r.value)[:1000],
                    "reason": r.reason,
                    "detail": r.detail,
                    "ts": now,
                }
                for r in rows
            ],
            schema=QUARANTINE,
        )
        self.write_part("quarantine", table, part)
        return len(rows)

    # --- runs -------------------------------------------------------------------------------------------
    @contextmanager
    def run(self, stage: str, params: Mapping[str, Any], *, lock: bool = True) -> Iterator[RunRecord]:
        """Record a stage run in `runs/<run_id>.json`: written at start (running) and at the end (ok/failed).

        The run holds the workspace's writer lock (`writer`) unless `lock` is False: only stages that write nothing
        another stage reads (evaluate's own result parts) run beside a writer.
        """
        if lock:
            with self.writer(stage), self.run(stage, params, lock=False) as record:
                yield record
            return
        self._stages.append(stage)
        try:
            with self._record(stage, params) as record:
                yield record
        finally:
            self._stages.pop()

    @contextmanager
    def acting_as(self, stage: str) -> Iterator[None]:
        """Attribute what happens inside to stage `stage` (the runner wraps a stage's whole body, reads before its
        run record opens included): its writes are checked against `WRITERS` and its reads logged."""
        self._stages.append(stage)
        try:
            yield
        finally:
            self._stages.pop()

    @contextmanager
    def overrides(self, options: Mapping[str, Any]) -> Iterator[None]:
        """Record `options` (a stage's command-line options) as `params["overrides"]` of the runs opened inside:
        such a run's output is not what the configuration alone would give, so the runner never takes it as up to
        date."""
        saved, self._overrides = self._overrides, {k: str(v) for k, v in options.items()}
        try:
            yield
        finally:
            self._overrides = saved

    @contextmanager
    def _record(self, stage: str, params: Mapping[str, Any]) -> Iterator[RunRecord]:
        from visprep import stages

        now = utcnow()
        run_id = f"{now:%Y%m%dT%H%M%S}-{stage}-{secrets.token_hex(3)}"
        record = RunRecord(stage=stage, run_id=run_id, params=dict(params), started_at=now.isoformat())
        if self._overrides:
            record.params["overrides"] = dict(self._overrides)
        declared = stages.BY_NAME.get(stage)
        if declared is not None:
            record.reads = stages.fingerprints(self, declared.all_reads(self.config))
            # Every section the stage declares is recorded, whatever its body passed: its freshness compares them.
            for section, values in section_params(self.config, *declared.sections).items():
                record.params.setdefault(section, values)
        path = self.runs_dir / f"{run_id}.json"
        self._save_run(path, record)
        t0 = time.perf_counter()
        try:
            yield record
            if declared is not None:
                self.publish(declared.writes)  # before the fingerprints: what the record names is published
                record.writes = stages.fingerprints(self, declared.writes)
        except BaseException as exc:
            record.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            record.notes.append(f"{type(exc).__name__}: {exc}")
            raise
        else:
            record.status = "ok"
        finally:
            record.seconds = round(time.perf_counter() - t0, 3)
            record.finished_at = utcnow().isoformat()
            self._save_run(path, record)

    def _save_run(self, path: Path, record: RunRecord) -> None:
        """Write a run record (`runs/<run_id>.json`)."""
        atomic_write_bytes(path, record.to_json().encode())

    def runs(self) -> list[dict[str, Any]]:
        """Return every run record, oldest first."""
        if not self.runs_dir.exists():
            return []
        out = []
        for p in sorted(self.runs_dir.glob("*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except (OSError, json.JSONDecodeError):
                continue
        return sorted(out, key=lambda r: r.get("started_at", ""))

    def last_run(self, stage: str, *, status: str | None = "ok") -> dict[str, Any] | None:
        """Return the newest run record of `stage` (with `status`, when given)."""
        found = [r for r in self.runs() if r["stage"] == stage and (status is None or r["status"] == status)]
        return found[-1] if found else None

    def sql(self, query: str, **tables: pa.Table) -> pa.Table:
        """Run a DuckDB query over Arrow tables passed by name (out-of-core table work lives in SQL)."""
        from visprep.views.db import connect

        con = connect()
        try:
            for name, table in tables.items():
                con.register(name, table)
            rel = con.sql(query)
            # DuckDB 2 renamed `arrow()` (which now returns a reader) to `to_arrow_table()`.
            return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()
        finally:
            con.close()

    def latest_urls(self) -> pa.Table:
        """The `urls` table with one row per URL: its newest fetch result."""
        urls = self.read_table("urls")
        url = urls.column("url")
        # A compacted table (what every fetch leaves) has one row per URL already: returned as it is, where a
        # DuckDB window over it cost ~1.2 KiB per row of working memory (the fetch stage's peak at 100k products).
        if urls.num_rows == 0 or pc.count_distinct(url, mode="all").as_py() == urls.num_rows:
            return urls
        # Newest first within each URL; the sort is stable, so of two results at the same time the one stored first
        # is kept, the same one every time.
        order = pc.sort_indices(urls.select(["url", "fetched_at"]),
                                sort_keys=[("url", "ascending"), ("fetched_at", "descending")])
        ranked = urls.take(order)
        sorted_url = ranked.column("url")
        first = pc.invert(pc.fill_null(pc.equal(sorted_url.slice(1), sorted_url.slice(0, len(sorted_url) - 1)), False))
        keep = pa.concat_arrays([pa.array([True]), *first.chunks]) if first.num_chunks else pa.array([True])
        return ranked.filter(keep)

    def clear(self, *extra: str) -> None:
        """Delete what visprep keeps in the workspace (and the named `extra` entries), nothing else."""
        for name in ("tables", "images", "runs", "shards", CONFIG_FILE, *extra):
            path = self.root / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    # --- the writer lock (issues 3, 15) ---
    @property
    def lock_path(self) -> Path:
        """The workspace's writer lock file, `locks/workspace.lock`."""
        return self.root / "locks" / "workspace.lock"

    @contextmanager
    def writer(self, command: str, *, wait_s: float | None = None) -> Iterator[Path]:
        """Hold the workspace's one writer lock for the block (re-entrant within a process).

        Every stage run takes it (`run`), and so does every writing CLI command at its start, so a second writer is
        refused at once with `WorkspaceLocked` naming the holder (pid, host, command, since). `wait_s` waits that
        long for the holder to finish instead (`math.inf`: as long as it takes). Readers never take it: tables are
        replaced atomically, so a reader sees the old or the new version of each table.
        """
        first = not _held_here(self.lock_path)
        with file_lock(self.lock_path, busy=f"workspace {self.root}", writer="visprep writer", command=command,
                       wait_s=wait_s) as path:
            if first:  # once per acquisition, not at every re-entry (each stage run of a pipeline re-enters)
                # The writer owns the workspace now: what a killed writer left half-written is garbage.
                for folder in (self.runs_dir, self.tables_dir, features_root(self)):
                    clean_dead_temporaries(folder)
            yield path

    def holder(self) -> dict[str, Any] | None:
        """Return who holds the writer lock now (pid, host, command, since), or None when nobody does."""
        return lock_holder(self.lock_path)


class ReentrantHolds:
    """The locks this process holds, by key, each with how many times it was entered: a process re-entering a lock
    it holds (the CLI command, then the pipeline, then each stage run) must not wait on itself. A forked child
    inherits the table but not the lock, so an entry counts only in the process that took it."""

    def __init__(self) -> None:
        self._held: dict[str, list[Any]] = {}  # key -> [what holds it (fd, lock object), depth, pid]
        self._guard = threading.Lock()

    def get(self, key: str) -> Any | None:
        """What holds lock `key` in this process (as `take` was given it), or None when this process does not."""
        with self._guard:
            held = self._held.get(key)
            return held[0] if held is not None and held[2] == os.getpid() else None

    @contextmanager
    def reentered(self, key: str) -> Iterator[bool]:
        """Enter lock `key` again if this process holds it (True for the block, its depth counted), else False:
        the caller then takes the lock and registers it with `take`."""
        with self._guard:
            held = self._held.get(key)
            mine = held is not None and held[2] == os.getpid()
            if mine:
                held[1] += 1  # type: ignore[index]
        try:
            yield mine
        finally:
            if mine:
                with self._guard:
                    self._held[key][1] -= 1

    @contextmanager
    def take(self, key: str, holder: Any) -> Iterator[None]:
        """Record for the block that this process holds lock `key` through `holder`."""
        with self._guard:
            self._held[key] = [holder, 1, os.getpid()]
        try:
            yield
        finally:
            with self._guard:
                self._held.pop(key, None)


# The flocks this process holds, by path (`file_lock`).
_HELD = ReentrantHolds()


@contextmanager
def file_lock(path: Path, *, busy: str, writer: str, command: str | None = None,
              wait_s: float | None = None) -> Iterator[Path]:
    """Hold an exclusive OS file lock on `path` for the block, or raise `WorkspaceLocked` naming the live holder.

    The lock is an OS file lock (flock) on a file that records pid, host, command and start time: the kernel drops
    it when the holder exits or is killed (-9 included), so a lock file left behind is stale and taken over. The
    same process may re-enter it. `busy` and `writer` word the error: "<busy> is busy: another <writer> holds
    <path> (<holder>)". `wait_s` polls that long for the holder to leave before raising.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; single-writer use is the caller's responsibility
        yield path
        return
    import socket
    import sys

    with _HELD.reentered(str(path)) as reentered:
        if reentered:
            yield path
            return

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = None if not wait_s else time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if deadline is None or time.monotonic() >= deadline:
                os.close(fd)
                holder = lock_holder(path) or {}
                shown = json.dumps(holder, sort_keys=True) if holder else "holder unknown"
                raise WorkspaceLocked(f"{busy} is busy: another {writer} holds {path} ({shown}); wait for it to "
                                      "finish, or pass --wait to queue behind it", holder=holder) from None
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    try:
        with _HELD.take(str(path), fd):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                      "command": command or " ".join(sys.argv)[:200],
                                      "since": utcnow().isoformat()}).encode(), 0)
            yield path
    finally:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _held_here(path: Path) -> bool:
    """Whether this process holds the lock on `path`."""
    return _HELD.get(str(path)) is not None


def lock_holder(path: Path) -> dict[str, Any] | None:
    """Return the holder a lock file records, or None when the lock is free (a record left by a dead holder is stale)."""
    try:
        import fcntl
    except ImportError:
        return None
    if not path.exists():
        return None
    mine = _held_here(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        if not mine:
            try:
                # A shared lock is granted only when no writer holds the exclusive one.
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                return None
            except BlockingIOError:
                pass
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
    finally:
        os.close(fd)
    try:
        found = json.loads(text) if text else {}
    except json.JSONDecodeError:
        found = {"record": text[:200]}
    return found if isinstance(found, dict) else {"record": str(found)[:200]}


class WorkspaceLocked(BlockingIOError):
    """Another live process holds a writer lock (of the workspace, or of a split's shard folder)."""

    def __init__(self, message: str, *, holder: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.holder = holder or {}

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


_QUARANTINE_CONTENT = ("stage", "source", "line", "record_id", "field", "value", "reason", "detail")


def _same_quarantine(old: pa.Table, stage: str, rows: list[QuarantineRecord]) -> bool:
    """Whether quarantine part `old` holds exactly `rows` of `stage` (run ids and times aside)."""
    if old.num_rows != len(rows):
        return False
    have = sorted(tuple("" if v is None else str(v) for v in r) for r in zip(*(old.column(c).to_pylist()
                                                                             for c in _QUARANTINE_CONTENT)))
    want = sorted(tuple("" if v is None else str(v) for v in (stage, r.source, r.line, r.record_id, r.field,
                                                              None if r.value is None else str(r.value)[:1000],
                                                              r.reason, r.detail)) for r in rows)
    return have == want


def files_fingerprint(paths: Iterable[Path], *, relative_to: Path | None = None) -> str:
    """A cheap fingerprint of files: sha256 prefix over each one's name (its path under `relative_to` when given),
    size and modification time, in the order given. No content is read."""
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p.relative_to(relative_to) if relative_to is not None else p.name}:{st.st_size}:"
                 f"{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def _safe_part(key: str) -> str:
    """Make `key` usable in a part file name; long or odd keys become a hash."""
    if key.replace("-", "").replace("_", "").isalnum() and len(key) <= 64:
        return key
    return hashlib.sha256(key.encode()).hexdigest()[:24]
