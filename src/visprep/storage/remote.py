"""A workspace on an object store (`Workspace("s3://bucket/prefix")`): the same methods as a local workspace, its
tables, feature store, shards and run records kept as objects, its `root` a local cache folder.

Layout under the workspace URL:

    visprep.toml                       the configuration
    tables/<name>/_manifest.json       each table a tree (`visprep.storage.trees`): manifest + immutable blobs
    tables/<name>/blobs/<token>
    features/_manifest.json, blobs/    the feature store folder, a tree too
    shards/_manifest.json              the export's shards, a tree whose objects keep their names
    shards/<split>/shard-*.tar, ...      (trainers read them where they are)
    images/<aa>/<bb>/<sha256>.<ext>    content-addressed images: one PUT each, no protocol needed
    runs/<run_id>.json                 one object per run record
    locks/workspace.lock               the writer lock (`visprep.storage.lock`)

The local cache (`VISPREP_CACHE`, default ~/.cache/visprep/<url>-<hash>) is a working copy: every reader keeps
reading local files (`part_paths` returns local paths), each table is pulled when read and published when
written, and the runner pulls a stage's declared reads and writes before it runs and publishes its writes after.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from visprep.config import CONFIG_FILE
from visprep.storage.lock import ObjectLock
from visprep.storage.objects import ObjectStore
from visprep.storage.trees import Tree, collect_garbage
from visprep.views.features import FEATURES_DIR
from visprep.workspace import (
    ImageStore,
    ReentrantHolds,
    RunRecord,
    Workspace,
    atomic_write_bytes,
    clean_dead_temporaries,
)

if TYPE_CHECKING:
    from visprep.workspace import QuarantineRecord

CACHE_ENV = "VISPREP_CACHE"
SYNC_DIR = ".visprep-sync"  # the trees' sync indexes, inside the cache folder
# Resources (visprep.stages.RESOURCES) -> the workspace folder holding them, published as one tree each.
RESOURCE_FOLDERS = {"features": FEATURES_DIR, "view_features": FEATURES_DIR, "user_features": FEATURES_DIR,
                    "model_features": FEATURES_DIR, "shards": "shards"}
NATURAL_KEYS = {"shards"}  # folders whose objects keep their names (what trainers read)

# The object locks this process holds, by workspace URL (a stage run re-enters the lock its command took).
_HELD = ReentrantHolds()


def cache_root(url: str) -> Path:
    """The local cache folder of the workspace at `url`: `$VISPREP_CACHE/<url, readable>-<hash>`."""
    base = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "visprep").expanduser()
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", url.split("://", 1)[-1]).strip("-")[-60:]
    return base / f"{readable}-{hashlib.sha256(url.rstrip('/').encode()).hexdigest()[:12]}"


def cached_image(uri: str) -> Path:
    """This process's local copy of the image at object URL `uri` (`ObjectImageStore.ref`), fetched on a miss into
    the cache of the workspace whose store it is (`$VISPREP_CACHE`, so a worker on another node uses its own)."""
    parts = uri.rsplit("/", 3)
    image_id, _, ext = parts[-1].partition(".")
    if len(parts) != 4 or not ext or len(image_id) != 64 or parts[1:3] != [image_id[:2], image_id[2:4]]:
        raise ValueError(f"image reference {uri!r}: not an image's object URL (<store>/<aa>/<bb>/<sha256>.<ext>)")
    store_url = parts[0]
    return _image_store(store_url, os.environ.get(CACHE_ENV)).path(image_id, ext)


@functools.lru_cache(maxsize=16)
def _image_store(store_url: str, cache_env: str | None) -> ObjectImageStore:
    # A workspace's images are `<url>/images`, kept in that workspace's cache (where its fetch workers put them);
    # an image store configured on its own (`storage.images`) gets a cache of its own.
    ws_url = store_url[: -len("/images")] if store_url.endswith("/images") else None
    local = cache_root(ws_url) / "images" if ws_url else cache_root(store_url)
    return ObjectImageStore(local, ObjectStore(store_url))


class ObjectImageStore(ImageStore):
    """The content-addressed image store as objects (`<aa>/<bb>/<sha256>.<ext>` under `objects`), with `root` a
    local copy. A PUT is atomic and an image's key is its content hash, so images need no commit protocol: an image
    is stored whole or not at all, and storing it twice stores the same bytes."""

    def __init__(self, root: Path, objects: ObjectStore) -> None:
        super().__init__(root)
        self.objects = objects
        self._remote: set[str] | None = None  # keys known stored (listed once, then what this process stored)
        self._scanned: dict[str, int] = {}  # local folder -> mtime_ns when last pushed
        self._guard = threading.Lock()

    def _key(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _known(self) -> set[str]:
        with self._guard:
            if self._remote is None:
                self._remote = {o.key for o in self.objects.list("")}
            return self._remote

    def path(self, image_id: str, ext: str) -> Path:
        """Where image `image_id` lives locally (fetched from the store when only it holds the image)."""
        local = super().path(image_id, ext)
        if not local.exists():
            try:
                self.objects.download(self._key(local), local)
            except FileNotFoundError:
                pass
        return local

    def uri(self, image_id: str, ext: str) -> str:
        """Return the object URL of image `image_id`."""
        return self.objects.uri(self._key(super().path(image_id, ext)))

    def ref(self, image_id: str, ext: str) -> str:
        """The image's object URL, never a path in this process's cache: a worker on another node reads it from a
        cache of its own (`visprep.workspace.image_file`), so this process fetches nothing for it."""
        return self.uri(image_id, ext)

    @property
    def root_uri(self) -> str:
        """The store's URL."""
        return self.objects.url

    def put(self, data: bytes, ext: str) -> str:
        """Store `data` locally and as an object (once); return its image id."""
        image_id = super().put(data, ext)
        key = self._key(super().path(image_id, ext))
        if key not in self._known():
            self.objects.put(key, data)
            self._remote.add(key)  # type: ignore[union-attr]
        return image_id

    def exists(self, image_id: str, ext: str) -> bool:
        """Tell whether `image_id` is stored (locally or as an object)."""
        local = super().path(image_id, ext)
        return local.exists() or self._key(local) in self._known()

    def push(self) -> int:
        """Upload the images that processes wrote into the local copy (fetch and synth workers write files) and
        that the store lacks; return how many. Only folders changed since the last push are listed."""
        if not self.root.is_dir():
            return 0
        known, n = self._known(), 0
        for top in os.scandir(self.root):
            if not top.is_dir() or top.name.startswith("."):
                continue
            for sub in os.scandir(top.path):
                if not sub.is_dir():
                    continue
                mtime = sub.stat().st_mtime_ns
                if self._scanned.get(sub.path) == mtime:
                    continue
                for f in os.scandir(sub.path):
                    if f.name.startswith(".") or not f.is_file():
                        continue
                    key = f"{top.name}/{sub.name}/{f.name}"
                    if key not in known:
                        self.objects.upload(Path(f.path), key)
                        known.add(key)
                        n += 1
                self._scanned[sub.path] = mtime
        return n


def publish_shards(ws: Workspace) -> bool:
    """Publish a local workspace's shards folder to `storage.shards` (objects keep their names); return whether
    anything changed."""
    store = ObjectStore(ws.config.storage.shards or "", ws.config.storage.options)
    tree = Tree(store, "", ws.shards_dir, ws.root / SYNC_DIR, natural_keys=True)
    return tree.publish()


class ObjectWorkspace(Workspace):
    """A workspace whose tables, images, feature store, shards, run records and writer lock live under an fsspec
    URL (S3 or S3-compatible). Credentials and endpoint come from the AWS_* environment variables (what botocore
    reads) or `VISPREP_STORAGE_OPTIONS` (fsspec options as JSON)."""

    def __init__(self, root: str | Path) -> None:
        self.url = str(root).rstrip("/")
        self.objects = ObjectStore(self.url)
        super().__init__(cache_root(self.url))
        self.root.mkdir(parents=True, exist_ok=True)  # the workspace exists (in the store); so does its cache
        self.sync_dir = self.root / SYNC_DIR
        self._config_synced = False
        self._runs_index: dict[str, str] = {}

    @property
    def location(self) -> str:
        """The workspace's URL."""
        return self.url

    @property
    def is_folder(self) -> bool:
        """False: the workspace is its URL, `root` only this process's cache (`Workspace.is_folder`)."""
        return False

    @property
    def store(self) -> ImageStore:
        """The image store: objects under `<url>/images`, with the cache's images/ folder their local copy."""
        if self._store is None:
            self._store = ObjectImageStore(self.root / "images", ObjectStore(self.objects.uri("images")))
        return self._store

    # --- config ---
    @property
    def config_path(self) -> Path:
        """The local copy of the workspace's `visprep.toml` (taken from the store on first use)."""
        path = self.root / CONFIG_FILE
        if not self._config_synced:
            data = self.objects.get(CONFIG_FILE)
            if data is not None:
                atomic_write_bytes(path, data, fsync=False)
            else:
                path.unlink(missing_ok=True)
            self._config_synced = True
        return path

    def write_config_text(self, text: str) -> None:
        """Write `visprep.toml` locally and to the store."""
        super().write_config_text(text)
        self.objects.put(CONFIG_FILE, text.encode("utf-8"))

    # --- trees ---
    def _fence(self) -> None:
        lock = _HELD.get(self.url)
        if lock is not None:
            lock.check()

    def _table_tree(self, name: str) -> Tree:
        return Tree(self.objects, f"tables/{name}", self.tables_dir / f"{name}.parquet", self.sync_dir,
                    fence=self._fence)

    def _folder_tree(self, folder: str) -> Tree:
        return Tree(self.objects, folder, self.root / folder, self.sync_dir, fence=self._fence,
                    natural_keys=folder in NATURAL_KEYS)

    def _commit_table(self, name: str) -> None:
        # Images first: a committed row never names an image the store lacks.
        self.store.push()  # type: ignore[attr-defined]
        self._table_tree(name).publish()

    # --- tables: pulled when their path is asked for (every read and write asks), published when written ---
    def table_path(self, name: str) -> Path:
        """The local copy of table `name` (a file, or a folder of parts), first brought up to date with the store:
        one HEAD while it is unchanged. Files this process wrote and has not published are kept."""
        path = super().table_path(name)
        self._table_tree(name).pull()
        return path

    def write_table(self, name: str, table: pa.Table) -> None:
        """Replace table `name` with `table`: new blobs, then one conditional manifest PUT."""
        super().write_table(name, table)
        self._commit_table(name)

    def write_part(self, name: str, table: pa.Table, part: str) -> Path:
        """Add (or replace) part `part` of table `name`; safe from several processes at once."""
        path = super().write_part(name, table, part)
        self._commit_table(name)
        return path

    def delete_parts(self, name: str, prefix: str) -> int:
        """Remove the parts of table `name` whose part name starts with `prefix`; return how many."""
        n = super().delete_parts(name, prefix)
        if n:
            self._commit_table(name)
        return n

    def quarantine(self, records: Iterable[QuarantineRecord], *, stage: str, run_id: str, key: str) -> int:
        """As `Workspace.quarantine`, published."""
        n = super().quarantine(records, stage=stage, run_id=run_id, key=key)
        self._table_tree("quarantine").publish()
        return n

    def table_names(self) -> list[str]:
        """Return the names of the tables present in the store."""
        names = []
        for o in self.objects.list("tables/"):
            parts = o.key.split("/")
            if len(parts) == 3 and parts[2] == "_manifest.json" and self._table_tree(parts[1]).exists():
                names.append(parts[1])
        return sorted(names)

    # --- resources, for the runner ---
    def _trees(self, names: Iterable[str]) -> list[Tree]:
        from visprep.schema import TABLES

        trees, folders = [], []
        for name in names:
            if name in TABLES:
                trees.append(self._table_tree(name))
            elif name in RESOURCE_FOLDERS and RESOURCE_FOLDERS[name] not in folders:
                folders.append(RESOURCE_FOLDERS[name])
        return trees + [self._folder_tree(f) for f in folders]

    def pull(self, names: Iterable[str]) -> None:
        """Bring the local copies of the tables and resources `names` up to date with the store."""
        for tree in self._trees(names):
            tree.pull()

    def publish(self, names: Iterable[str]) -> None:
        """Publish the images stored and what was written of the tables and resources `names`."""
        self.store.push()  # type: ignore[attr-defined]
        for tree in self._trees(names):
            tree.publish()

    # --- run records: one object each ---
    def _save_run(self, path: Path, record: RunRecord) -> None:
        data = record.to_json().encode()
        atomic_write_bytes(path, data)
        self.objects.put(f"runs/{path.name}", data)

    def runs(self) -> list[dict[str, Any]]:
        """Every run record in the store, oldest first (each fetched once per version into the cache)."""
        index_path = self.sync_dir / "runs.json"
        if not self._runs_index and index_path.exists():
            self._runs_index = json.loads(index_path.read_text())
        changed = False
        for o in self.objects.list("runs/"):
            name = o.key[len("runs/"):]
            if "/" in name or not name.endswith(".json") or self._runs_index.get(name) == o.etag:
                continue
            self.objects.download(o.key, self.runs_dir / name)
            self._runs_index[name] = o.etag
            changed = True
        if changed:
            atomic_write_bytes(index_path, json.dumps(self._runs_index).encode(), fsync=False)
        return super().runs()

    # --- the writer lock ---
    @property
    def lock_path(self) -> Path:
        """The local lock file of the cache (the workspace's lock is the object `locks/workspace.lock`)."""
        return self.root / "locks" / "workspace.lock"

    @contextmanager
    def writer(self, command: str, *, wait_s: float | None = None) -> Iterator[Path]:
        """Hold the workspace's writer lock object for the block (re-entrant within a process); a second writer
        anywhere is refused with `WorkspaceLocked` naming the holder. Taking it collects what killed writers
        uploaded and never committed."""
        with _HELD.reentered(self.url) as reentered:
            if reentered:
                yield self.lock_path
                return
        lock = ObjectLock(self.objects)
        lock.acquire(command, busy=f"workspace {self.url}", wait_s=wait_s)
        try:
            with _HELD.take(self.url, lock):
                # Blobs stored before this writer took the lock and named by no manifest were uploaded by writers
                # killed before their commit (a live writer cannot be uploading: it would hold the lock).
                # The lease's margin spares a lock-free writer's upload in flight (evaluate's parts beside a writer).
                collect_garbage(self.objects, ["tables/", f"{FEATURES_DIR}/"], before=lock.acquired_at - lock.lease_s)
                for folder in (self.runs_dir, self.tables_dir, self.root / FEATURES_DIR):
                    clean_dead_temporaries(folder)
                # What a killed writer wrote into this cache and never published is superseded by the store's last
                # commit (recent files are spared: a lock-free process sharing the cache may be about to publish).
                self._discard_unpublished(older_than=time.time() - lock.lease_s)
                yield self.lock_path
        finally:
            lock.release()

    def _discard_unpublished(self, *, older_than: float) -> list[str]:
        gone = []
        for index in sorted(self.sync_dir.glob("*.json")) if self.sync_dir.is_dir() else []:
            try:
                found = json.loads(index.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if not isinstance(found, dict) or "prefix" not in found or "local" not in found:
                continue
            local = Path(found["local"])
            if self.root not in local.parents:
                continue
            tree = Tree(self.objects, found["prefix"], local, self.sync_dir,
                        natural_keys=found["prefix"] in NATURAL_KEYS)
            gone += [f"{found['prefix']}/{rel}" for rel in tree.discard_unpublished(older_than=older_than)]
        return gone

    def holder(self) -> dict[str, Any] | None:
        """Return who holds the writer lock now (pid, host, command, since), or None when nobody does."""
        return ObjectLock(self.objects).holder()

    def clear(self, *extra: str) -> None:
        """Delete what visprep keeps in the workspace (objects and the local cache), nothing else."""
        keys = [o.key for o in self.objects.list("") if o.key.split("/", 1)[0] in
                ("tables", "images", "runs", "shards", FEATURES_DIR) or o.key == CONFIG_FILE]
        self.objects.delete(keys)
        super().clear(*extra)
        if self.sync_dir.exists():
            shutil.rmtree(self.sync_dir)
        self._config_synced = False
        self._config = None
        self._store = None
        self._runs_index = {}
