"""The commit protocol for files on an object store: a *tree* (a table, or a folder such as the feature store) is one
small manifest object naming immutable blob objects, and publishing the manifest is the commit.

    <prefix>/_manifest.json   {"format": 1, "generation": n, "exists": true,
                               "files": {rel: {"key", "size", "etag", "mtime_ns"}}, "writer": {...}}
    <prefix>/blobs/<token>    one immutable object per version of a file, under a writer-unique token

`rel` is the file's path under the tree's local folder ("" when the tree is a single file, as a table written
whole is). A write uploads the new blobs first, then replaces the manifest with a conditional PUT (`If-Match` on
the ETag read, `If-None-Match: *` for the first): two writers of one tree cannot both win, and the loser rereads
the manifest, reapplies its change and tries again, so concurrent `write_part`s of one table lose no part. A reader
reads the manifest and then only the blobs it names, so a writer killed before the PUT leaves the previous version
whole; its uploaded blobs are garbage that `collect_garbage` removes later (blobs are never overwritten, so a
reader can cache them by key).

Each machine keeps a local copy of a tree (the workspace's cache folder) and an index of what it last took from the
manifest. A local file that still matches the index (size, mtime) is *clean*; any other is a local write not yet
published. `pull` replaces only clean files; `publish` uploads the dirty ones, drops the files that were deleted
locally, and keeps what other writers added meanwhile. Files are stamped with the writer's mtime, so the cheap
file fingerprints (name, size, mtime) agree on every machine.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from visprep.storage.objects import ObjectStore, PreconditionFailed

MANIFEST = "_manifest.json"
BLOBS = "blobs"
FORMAT = 1
MAX_ATTEMPTS = 200  # commits of one tree contending at once; each loss means another writer committed


class CommitFailed(RuntimeError):
    """A tree's manifest could not be published (lost the conditional PUT `MAX_ATTEMPTS` times)."""


def _local_files(local: Path) -> dict[str, Path]:
    """The files of a tree's local copy by rel ("" for a single file), without the temporaries of writes in
    progress (`.<name>.<pid>.<random>.tmp`, `.<name>.legacy`). Other dot files (a shard folder's lock file) are
    part of it: the fingerprints readers compare list them."""
    if local.is_file():
        return {"": local}
    if not local.is_dir():
        return {}
    out = {}
    for dirpath, _, filenames in os.walk(local):
        for f in filenames:
            if not _temporary(f):
                p = Path(dirpath) / f
                out[p.relative_to(local).as_posix()] = p
    return out


def _temporary(name: str) -> bool:
    return name.startswith(".") and name.endswith((".tmp", ".legacy"))


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


class Tree:
    """One tree: its manifest and blobs under `prefix` in `store`, its local copy at `local`, its sync index in
    `index_dir`. `fence`, when given, is called right before each manifest PUT and raises when this process may
    no longer commit (it lost the writer lock)."""

    def __init__(self, store: ObjectStore, prefix: str, local: Path, index_dir: Path,
                 fence: Callable[[], None] | None = None, *, natural_keys: bool = False) -> None:
        self.store = store
        self.prefix = prefix.strip("/")
        self.local = local
        name = (store.url + "/" + self.prefix) if not self.prefix else self.prefix
        self.index_path = index_dir / (re.sub(r"[^A-Za-z0-9._-]+", "~", name) + ".json")
        self.fence = fence
        # Objects named by their path (`<prefix>/<rel>`, what other tools read) instead of immutable blobs: a
        # publish then first commits a manifest without the files it is about to overwrite, so that no reader
        # takes a half-published file for the one the manifest names.
        self.natural_keys = natural_keys

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    @property
    def manifest_key(self) -> str:
        """The manifest's key."""
        return self._key(MANIFEST)

    def read(self) -> tuple[dict[str, Any] | None, str | None]:
        """The manifest (None when the tree was never written) and its ETag."""
        found = self.store.get_with_etag(self.manifest_key)
        if found is None:
            return None, None
        data, etag = found
        try:
            manifest = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.store.uri(self.manifest_key)}: not a manifest ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ValueError(f"{self.store.uri(self.manifest_key)}: format {manifest.get('format')!r} is not "
                             f"{FORMAT}")
        return manifest, etag

    def exists(self) -> bool:
        """Whether the tree's last commit left it existing."""
        manifest, _ = self.read()
        return bool(manifest and manifest.get("exists"))

    # --- the local index ---
    def _index(self) -> dict[str, Any]:
        try:
            return json.loads(self.index_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {"etag": None, "files": {}, "manifest": None}

    def _save_index(self, etag: str | None, files: dict[str, Any], manifest: dict[str, Any] | None) -> None:
        from visprep.workspace import atomic_write_bytes

        atomic_write_bytes(self.index_path, json.dumps({"etag": etag, "files": files, "manifest": manifest,
                                                        "prefix": self.prefix, "local": str(self.local)},
                                                       sort_keys=True).encode(), fsync=False)

    def _path(self, rel: str) -> Path:
        return self.local if rel == "" else self.local / rel

    # --- reading ---
    def pull(self) -> dict[str, Any] | None:
        """Make the local copy match the manifest (clean files only; local writes are kept); return the manifest."""
        for _ in range(5):
            # One HEAD while nothing changed: the manifest's ETag is what the index took last.
            index = self._index()
            found = self.store.info(self.manifest_key)
            if (found.etag if found else None) == index["etag"] and (found is not None or not index["files"]):
                return index.get("manifest")
            manifest, etag = self.read()
            try:
                self._apply(manifest, index)
            except FileNotFoundError:
                continue  # a blob named by the manifest read was dropped by a newer commit: read it again
            self._save_index(etag, manifest.get("files", {}) if manifest and manifest.get("exists") else {},
                             manifest)
            return manifest
        raise CommitFailed(f"{self.store.uri(self.manifest_key)}: the manifest kept changing while it was pulled")

    def _apply(self, manifest: dict[str, Any] | None, index: dict[str, Any]) -> None:
        files = manifest.get("files", {}) if manifest and manifest.get("exists") else {}
        known = index["files"]

        def clean(rel: str) -> bool:
            st = _stat(self._path(rel))
            old = known.get(rel)
            return st is None or (old is not None and st == (old["size"], old["mtime_ns"]))

        # The layout changed (a single file became a folder of parts or back): the local copy goes if clean.
        if (("" in files) != self.local.is_file() and self.local.exists()
                and all(clean(rel) for rel in _local_files(self.local))):
            shutil.rmtree(self.local) if self.local.is_dir() else self.local.unlink()
        for rel in known:
            if rel not in files and clean(rel):
                self._path(rel).unlink(missing_ok=True)
        for rel, entry in files.items():
            path = self._path(rel)
            st = _stat(path)
            if st == (entry["size"], entry["mtime_ns"]) or not clean(rel):
                continue
            self.store.download(entry["key"], path)
            os.utime(path, ns=(entry["mtime_ns"], entry["mtime_ns"]))
        # Existence is part of what a copy mirrors: a folder of no parts exists (`has_table`), a deleted tree not.
        if manifest is not None and manifest.get("exists") and not files:
            self.local.mkdir(parents=True, exist_ok=True)
        elif manifest is not None and not manifest.get("exists") and self.local.is_dir() \
                and not _local_files(self.local):
            shutil.rmtree(self.local)

    def discard_unpublished(self, *, older_than: float) -> list[str]:
        """Delete the local files that differ from what this copy last took from or gave to the store and were
        written before `older_than` (seconds since the epoch): a killed writer's local writes that never reached
        the store, which the store's last commit supersedes. Returns their rels; the next `pull` restores the
        committed files."""
        known = self._index()["files"]
        gone = []
        for rel, path in _local_files(self.local).items():
            st = _stat(path)
            if st is None or (rel in known and st == (known[rel]["size"], known[rel]["mtime_ns"])):
                continue
            if st[1] / 1e9 < older_than:
                path.unlink(missing_ok=True)
                gone.append(rel)
        if gone:
            self._save_index(None, known, self._index().get("manifest"))  # makes the next pull look again
        return gone

    # --- writing ---
    def publish(self) -> bool:
        """Commit the local copy's changes since the last pull or publish: upload the new and changed files, drop
        the ones deleted locally, keep what other writers committed meanwhile. Returns whether it committed."""
        index = self._index()
        known = index["files"]
        local = _local_files(self.local)
        dirty = {rel: p for rel, p in local.items()
                 if rel not in known or _stat(p) != (known[rel]["size"], known[rel]["mtime_ns"])}
        deleted = {rel for rel in known if rel not in local}
        exists_locally = self.local.exists()
        last = index.get("manifest")
        if not dirty and not deleted and (exists_locally == bool(last and last.get("exists"))
                                          or (last is None and not exists_locally)):
            return False  # (a tree this copy never had stays as it is: an absent copy deletes nothing)
        if self.natural_keys and any(rel in known for rel in dirty):
            self.commit(lambda files: {rel: e for rel, e in files.items() if rel not in dirty and rel not in deleted},
                        exists=exists_locally, drop_blobs=False)
        uploaded = {rel: self._upload(rel, p) for rel, p in dirty.items()}

        def change(files: dict[str, Any]) -> dict[str, Any]:
            out = {rel: e for rel, e in files.items() if rel not in deleted}
            if "" in uploaded:  # a whole-file write replaces a folder of parts
                out = {}
            elif uploaded:
                out.pop("", None)  # parts replace a whole file (the local folder took it over as a part)
            out.update(uploaded)
            return out

        self.commit(change, exists=exists_locally)
        return True

    def _upload(self, rel: str, path: Path) -> dict[str, Any]:
        size, mtime_ns = _stat(path) or (0, 0)
        if self.natural_keys:
            key = self._key(rel or self.local.name)
        else:
            name = (rel or self.local.name).replace("/", "~")[-80:]
            key = self._key(BLOBS, f"{time.time_ns():020d}-{secrets.token_hex(6)}-{name}")
        etag = self.store.upload(path, key)
        return {"key": key, "size": size, "etag": etag, "mtime_ns": mtime_ns}

    def commit(self, change: Callable[[dict[str, Any]], dict[str, Any]], *, exists: bool = True,
               drop_blobs: bool = True) -> dict[str, Any]:
        """Publish a new manifest whose files are `change(current files)`, retrying on a lost conditional PUT;
        drop the blobs the new manifest no longer names (`drop_blobs`). Returns the new manifest."""
        for attempt in range(MAX_ATTEMPTS):
            manifest, etag = self.read()
            files = manifest.get("files", {}) if manifest and manifest.get("exists") else {}
            new_files = change(dict(files)) if exists else {}
            new = {"format": FORMAT, "generation": int((manifest or {}).get("generation", 0)) + 1,
                   "exists": exists, "files": new_files,
                   "writer": {"pid": os.getpid(), "host": socket.gethostname(),
                              "at": dt.datetime.now(dt.UTC).isoformat()}}
            if self.fence is not None:
                self.fence()
            try:
                new_etag = self.store.put_if(self.manifest_key, json.dumps(new, sort_keys=True).encode(), etag=etag)
            except PreconditionFailed:
                time.sleep(min(0.5, 0.005 * (attempt + 1)) * (0.5 + secrets.randbelow(1000) / 1000))
                continue
            if drop_blobs:
                dropped = {e["key"] for e in files.values()} - {e["key"] for e in new_files.values()}
                self.store.delete(sorted(dropped))
            self._after_commit(new, new_etag)
            return new
        raise CommitFailed(f"{self.store.uri(self.manifest_key)}: lost the conditional PUT {MAX_ATTEMPTS} times")

    def _after_commit(self, manifest: dict[str, Any], etag: str) -> None:
        # What this process committed is what its local copy holds (the dirty files it uploaded); the files other
        # writers committed meanwhile are fetched by the next pull, which this index lets see a changed manifest.
        files = manifest["files"] if manifest["exists"] else {}
        local = {rel: e for rel, e in files.items() if _stat(self._path(rel)) == (e["size"], e["mtime_ns"])}
        self._save_index(None if len(local) != len(files) else etag, local, manifest)


def collect_garbage(store: ObjectStore, prefixes: Iterable[str], *, before: float) -> list[str]:
    """Delete the blobs under each of `prefixes` (e.g. "tables/") that no manifest names and that were stored
    before `before` (the store's clock): what writers killed between upload and commit left. Returns the keys."""
    garbage = []
    for prefix in prefixes:
        objects = store.list(prefix)
        referenced: set[str] = set()
        for o in objects:
            if o.key.endswith("/" + MANIFEST):
                data = store.get(o.key)
                if data:
                    manifest = json.loads(data)
                    referenced |= {e["key"] for e in manifest.get("files", {}).values()}
        garbage += [o.key for o in objects
                    if f"/{BLOBS}/" in o.key and o.key not in referenced and o.modified < before]
    if garbage:
        store.delete(garbage)
    return garbage
