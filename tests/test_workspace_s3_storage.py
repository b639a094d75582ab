"""The object-store layer under a workspace on S3 (moto's S3 server on loopback): conditional PUTs, the manifest commit
protocol of a tree (killed writer, garbage, concurrent writers) and the writer lock (refusal, lease take-over,
fencing)."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from s3_fixtures import S3Server

from visprep.storage.lock import LockLost, ObjectLock
from visprep.storage.objects import ObjectStore, PreconditionFailed
from visprep.storage.trees import Tree, collect_garbage
from visprep.workspace import WorkspaceLocked


@pytest.fixture(scope="module")
def s3() -> S3Server:
    with S3Server() as server:
        yield server


def _store(s3: S3Server) -> ObjectStore:
    return ObjectStore(s3.url(f"ws-{uuid.uuid4().hex[:8]}"), s3.storage_options)


def _tree(store: ObjectStore, tmp: Path, name: str = "t", machine: str = "a") -> Tree:
    return Tree(store, f"tables/{name}", tmp / machine / "tables" / f"{name}.parquet", tmp / machine / ".sync")


def _write(path: Path, rows: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"x": pa.array(rows, pa.int64())}), path)


def test_conditional_put_create_and_replace(s3: S3Server) -> None:
    store = _store(s3)
    first = store.put_if("m.json", b"1", etag=None)
    with pytest.raises(PreconditionFailed):
        store.put_if("m.json", b"other", etag=None)  # create loses when it exists
    second = store.put_if("m.json", b"2", etag=first)
    with pytest.raises(PreconditionFailed):
        store.put_if("m.json", b"3", etag=first)  # replace loses on a stale ETag
    assert store.get_with_etag("m.json") == (b"2", second)


def test_tree_publish_and_pull_on_another_machine(s3: S3Server, tmp_path: Path) -> None:
    store = _store(s3)
    a = _tree(store, tmp_path, machine="a")
    _write(a.local / "part-1.parquet", [1, 2])
    _write(a.local / "part-2.parquet", [3])
    assert a.publish()
    assert not a.publish()  # nothing changed since
    b = _tree(store, tmp_path, machine="b")
    manifest = b.pull()
    assert sorted(manifest["files"]) == ["part-1.parquet", "part-2.parquet"]
    assert pq.read_table(b.local / "part-1.parquet").column("x").to_pylist() == [1, 2]
    # The writer's mtimes travel, so cheap fingerprints (name, size, mtime) agree on both machines.
    for rel in manifest["files"]:
        assert (a.local / rel).stat().st_mtime_ns == (b.local / rel).stat().st_mtime_ns
    # A part deleted and one replaced on machine b reach machine a; the replaced blob is dropped.
    old_key = manifest["files"]["part-1.parquet"]["key"]
    (b.local / "part-2.parquet").unlink()
    _write(b.local / "part-1.parquet", [9])
    assert b.publish()
    a.pull()
    assert sorted(p.name for p in a.local.iterdir()) == ["part-1.parquet"]
    assert pq.read_table(a.local / "part-1.parquet").column("x").to_pylist() == [9]
    assert store.info(old_key) is None


def test_pull_keeps_local_writes_not_yet_published(s3: S3Server, tmp_path: Path) -> None:
    store = _store(s3)
    a, b = _tree(store, tmp_path, machine="a"), _tree(store, tmp_path, machine="b")
    _write(a.local / "part-1.parquet", [1])
    a.publish()
    b.pull()
    _write(b.local / "part-mine.parquet", [5])  # b's own write, not published
    _write(a.local / "part-2.parquet", [2])
    a.publish()
    b.pull()
    assert sorted(p.name for p in b.local.iterdir()) == ["part-1.parquet", "part-2.parquet", "part-mine.parquet"]
    b.publish()  # b's part joins; a's part-2, unknown to b's last pull, is kept
    assert sorted(b.read()[0]["files"]) == ["part-1.parquet", "part-2.parquet", "part-mine.parquet"]


def test_writer_killed_before_the_manifest_leaves_the_old_table_and_garbage_is_collected(
        s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(s3)
    a = _tree(store, tmp_path)
    _write(a.local, [1, 2, 3])  # a single-file table
    a.publish()
    old = a.read()[0]
    _write(a.local, [4])

    def killed(*args: object, **kwargs: object) -> str:
        raise KeyboardInterrupt("killed between the uploads and the manifest PUT")

    monkeypatch.setattr(store, "put_if", killed)
    with pytest.raises(KeyboardInterrupt):
        a.publish()
    monkeypatch.undo()
    reader = _tree(store, tmp_path, machine="reader")
    assert reader.read()[0] == old
    reader.pull()
    assert pq.read_table(reader.local).column("x").to_pylist() == [1, 2, 3]
    blobs = [o.key for o in store.list("tables/") if "/blobs/" in o.key]
    assert len(blobs) == 2  # the committed one and the killed writer's upload
    # A blob stored after the cut-off (a live writer's upload in flight) is kept; older unreferenced ones go.
    assert collect_garbage(store, ["tables/"], before=0.0) == []
    time.sleep(1.1)  # S3 times are whole seconds
    gone = collect_garbage(store, ["tables/"], before=time.time() + 1)
    assert gone == [k for k in blobs if k != old["files"][""]["key"]]
    reader2 = _tree(store, tmp_path, machine="reader2")
    reader2.pull()
    assert pq.read_table(reader2.local).column("x").to_pylist() == [1, 2, 3]


def _publish_part(args: tuple[str, dict, str, int]) -> None:
    url, options, cache, k = args
    store = ObjectStore(url, options)
    tree = Tree(store, "tables/t", Path(cache) / "tables" / "t.parquet", Path(cache) / ".sync")
    tree.pull()
    _write(tree.local / f"part-w{k}.parquet", [k])
    tree.publish()


def test_concurrent_writers_of_one_tree_lose_no_part(s3: S3Server, tmp_path: Path) -> None:
    store = _store(s3)
    n = 8
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(n) as pool:
        pool.map(_publish_part, [(store.url, s3.storage_options, str(tmp_path / f"m{k}"), k) for k in range(n)])
    reader = _tree(store, tmp_path, machine="reader")
    manifest = reader.pull()
    assert sorted(manifest["files"]) == sorted(f"part-w{k}.parquet" for k in range(n))
    assert manifest["generation"] == n
    assert sorted(pq.read_table(reader.local).column("x").to_pylist()) == list(range(n))


def test_lock_refuses_a_second_writer_naming_the_holder(s3: S3Server) -> None:
    store = _store(s3)
    first = ObjectLock(store, lease_s=30)
    first.acquire("run", busy="workspace w")
    try:
        second = ObjectLock(store, lease_s=30)
        with pytest.raises(WorkspaceLocked) as err:
            second.acquire("dedup", busy="workspace w")
        assert err.value.holder["pid"] == os.getpid() and err.value.holder["command"] == "run"
        assert "busy" in str(err.value) and '"command": "run"' in str(err.value)
        assert first.holder()["command"] == "run"
    finally:
        first.release()
    assert first.holder() is None
    again = ObjectLock(store, lease_s=30)
    again.acquire("dedup", busy="workspace w")  # released: free to take
    assert again.taken_over is None
    again.release()


def test_expired_lease_is_taken_over_and_the_old_holder_cannot_commit(s3: S3Server, tmp_path: Path) -> None:
    store = _store(s3)
    old = ObjectLock(store, lease_s=1.5)
    old.acquire("run", busy="w")
    old._stop.set()  # a paused writer: its heartbeat stops renewing
    time.sleep(0.1)
    with pytest.raises(WorkspaceLocked):
        ObjectLock(store, lease_s=30).acquire("x", busy="w")  # still within the lease
    time.sleep(1.6)
    new = ObjectLock(store, lease_s=30)
    new.acquire("run2", busy="w")
    assert new.taken_over["command"] == "run" and new.holder()["command"] == "run2"
    # The old writer wakes up: its commit is fenced off, and the new holder's is not.
    tree = _tree(store, tmp_path)
    tree.fence = old.check
    _write(tree.local, [1])
    with pytest.raises(LockLost):
        tree.publish()
    assert tree.read() == (None, None)
    assert not old.renew()  # its lease is not renewed either
    tree.fence = new.check
    assert tree.publish()
    old.release()  # does not release the new holder's lock
    assert new.holder()["command"] == "run2"
    new.release()


def test_heartbeat_keeps_a_working_writer_past_its_lease(s3: S3Server) -> None:
    store = _store(s3)
    lock = ObjectLock(store, lease_s=1.2)
    lock.acquire("run", busy="w")
    try:
        time.sleep(2.0)  # longer than the lease: the heartbeat renewed it
        lock.check()
        with pytest.raises(WorkspaceLocked):
            ObjectLock(store, lease_s=30).acquire("x", busy="w")
    finally:
        lock.release()
    record = json.loads(store.get("locks/workspace.lock"))
    assert record["released"] is True


def test_a_copy_mirrors_an_empty_folder_and_a_deleted_tree(s3: S3Server, tmp_path: Path) -> None:
    store = _store(s3)
    a, b = _tree(store, tmp_path, machine="a"), _tree(store, tmp_path, machine="b")
    _write(a.local / "part-1.parquet", [1])
    a.publish()
    b.pull()
    (a.local / "part-1.parquet").unlink()  # every part deleted: the table exists, with no parts
    a.publish()
    b.pull()
    assert b.local.is_dir() and not list(b.local.iterdir())
    a.local.rmdir()  # the table deleted
    a.publish()
    assert a.read()[0]["exists"] is False
    b.pull()
    assert not b.local.exists()


def test_a_lock_put_whose_answer_was_lost_is_recognised_as_ours(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(s3)
    real = store.put_if
    calls = []

    def lost_answer(key: str, data: bytes, *, etag: str | None) -> str:
        real(key, data, etag=etag)
        calls.append(key)
        if len(calls) == 1:  # stored, but the client saw its retry fail on its own condition
            raise PreconditionFailed("retried request met its own write")
        return store.info(key).etag

    monkeypatch.setattr(store, "put_if", lost_answer)
    lock = ObjectLock(store, lease_s=30)
    lock.acquire("run", busy="w")  # not "busy: held by ... (itself)"
    assert lock.holder()["command"] == "run" and lock.token is not None
    lock.check()
    lock.release()
    assert lock.holder() is None


def test_a_store_made_after_the_endpoint_changed_uses_the_new_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    # fsspec caches filesystems by their arguments; with the endpoint read from the environment only by botocore, a
    # store made for a second server reused the first one's filesystem and could not connect once it had gone.
    from s3_fixtures import ACCESS_KEY, REGION, SECRET_KEY

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    for n in range(2):
        with S3Server() as server:
            monkeypatch.setenv("AWS_ENDPOINT_URL_S3", server.endpoint_url)
            store = ObjectStore(server.url(f"ws-{n}"))
            store.put("k", f"server {n}".encode())
            assert store.get("k") == f"server {n}".encode()


def test_an_image_reference_is_read_from_the_readers_own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a stage hands a worker for an image (`ImageStore.ref`): on object storage the object's URL, which the
    worker resolves to a copy in its own cache fetched from the store; on a folder, the path as before."""
    from visprep.workspace import Workspace, image_file

    monkeypatch.setenv("VISPREP_CACHE", str(tmp_path / "driver"))
    ws = Workspace(f"memory://refs-{uuid.uuid4().hex[:8]}/ws")
    image_id = ws.store.put(b"not really a jpeg", "jpg")
    ref = ws.store.ref(image_id, "jpg")
    assert ref == ws.store.uri(image_id, "jpg")
    monkeypatch.setenv("VISPREP_CACHE", str(tmp_path / "worker"))  # another node: its own cache
    got = image_file(ref)
    assert got.read_bytes() == b"not really a jpeg" and tmp_path / "worker" in got.parents
    missing = ref.rsplit("/", 3)[0] + "/ab/ab/" + "ab" * 32 + ".jpg"
    assert not image_file(missing).exists()  # not stored: unreadable, as a missing path is
    with pytest.raises(ValueError, match="images/cat.jpg"):
        image_file("memory://refs/ws/images/cat.jpg")
    folder = Workspace(tmp_path / "folder")
    assert folder.store.ref(image_id, "jpg") == str(folder.store.path(image_id, "jpg"))
    assert image_file(folder.store.ref(image_id, "jpg")) == folder.store.path(image_id, "jpg")
