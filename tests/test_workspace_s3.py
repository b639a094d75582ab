"""A workspace on S3 (moto's S3 server on loopback), end to end: `visprep run` on `-w s3://bucket/ws` gives the tables
a local folder gets, a second machine (a new cache, the same URL) redoes nothing, a writer killed before its
manifest PUT leaves the old table and its garbage is collected, a second writer is refused, concurrent
`write_part`s lose no part, and a local workspace keeps its images and shards on S3."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from s3_fixtures import ACCESS_KEY, REGION, SECRET_KEY, S3Server

from visprep.demo.sources import write_demo_sources
from visprep.pipeline import UP_TO_DATE, run_pipeline, stale_reason
from visprep.schema import QUARANTINE
from visprep.storage.lock import LockLost, ObjectLock
from visprep.storage.remote import ObjectWorkspace
from visprep.workspace import Workspace, WorkspaceLocked

SRC = Path(__file__).resolve().parents[1] / "src"
STAGES = '["fetch", "inspect", "embed", "dedup", "split", "synth", "pairs", "mine", "sample", "export"]'
CONFIG = (f"[pipeline]\nstages = {STAGES}\n[export]\nmax_count = 40\n[inspect]\nworkers = 2\nbatch_size = 32\n"
          '[embed]\noptions = { profile = "imagenet-64" }\n'
          '[synthetic]\nbackgrounds = ["texture"]\nreframe_scales = [0.8]\nhue_shifts_deg = [180.0]\n')
VOLATILE = {"run_id", "updated_run", "ts", "fetched_at"}  # differ between any two runs


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """The server, and the standard AWS variables pointing at it (what s3fs/botocore read: nothing is passed)."""
    with S3Server() as server, pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        mp.setenv("AWS_ENDPOINT_URL_S3", server.endpoint_url)
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        mp.setenv("VISPREP_CACHE", str(tmp_path_factory.mktemp("cache-a")))
        yield server


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> object:
    return write_demo_sources(tmp_path_factory.mktemp("src") / "demo", n_products=60, seed=3)


def _canon(table: pa.Table, local_store: str, s3_store: str) -> pa.Table:
    """`table` without the columns that differ between any two runs, image URLs spelled with `s3_store`, sorted."""
    table = table.drop_columns([c for c in table.column_names if c in VOLATILE or c == "row_hash"])
    cols = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_string(col.type):
            col = pa.chunked_array([pa.array([None if v is None else v.replace(local_store, s3_store)
                                              for v in col.to_pylist()], pa.string())])
        elif pa.types.is_list(col.type) and pa.types.is_string(col.type.value_type):
            col = pa.chunked_array([pa.array([None if v is None else [s.replace(local_store, s3_store) for s in v]
                                              for v in col.to_pylist()], col.type)])
        cols[name] = col
    table = pa.table(cols)
    keys = [c for c in table.column_names if not pa.types.is_nested(table.schema.field(c).type)
            and not pa.types.is_binary(table.schema.field(c).type)]
    return table.sort_by([(c, "ascending") for c in keys])


def _manifests(ws: ObjectWorkspace) -> dict[str, str]:
    return {o.key: o.etag for o in ws.objects.list("") if o.key.endswith("_manifest.json")}


def test_run_on_s3_matches_a_local_folder_and_a_second_machine_redoes_nothing(
        s3: S3Server, sources: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = Workspace(tmp_path / "local")
    local.root.mkdir()
    local.write_config_text(CONFIG)
    run_pipeline(local, sources.catalog_files)

    ws = Workspace(s3.url("ws-run"))
    assert isinstance(ws, ObjectWorkspace) and ws.location == s3.url("ws-run")
    ws.write_config_text(CONFIG)
    run_pipeline(ws, sources.catalog_files)
    assert ws.table_names() == local.table_names() and "urls" in ws.table_names()
    for name in local.table_names():
        assert _canon(ws.read_table(name), local.store.root_uri, ws.store.root_uri).equals(
            _canon(local.read_table(name), local.store.root_uri, ws.store.root_uri)), name
    # Every table, image, shard and run record is in the bucket, not only in this machine's cache.
    keys = {o.key for o in ws.objects.list("")}
    assert {f"tables/{n}/_manifest.json" for n in ws.table_names()} <= keys
    image_ids = [i for i in ws.read_table("images", ["image_id"]).column("image_id").to_pylist()]
    assert image_ids and all(any(k.startswith(f"images/{i[:2]}/{i[2:4]}/{i}.") for k in keys) for i in image_ids)
    assert any(k.startswith("shards/train/") and k.endswith(".tar") for k in keys)
    assert "shards/train/manifest.json" in keys and "visprep.toml" in keys
    assert "features/_manifest.json" in keys and any(k.startswith("features/blobs/") for k in keys)
    assert {f"runs/{r['run_id']}.json" for r in ws.runs()} <= keys

    # A second machine: a new, empty cache, the same URL.
    before = _manifests(ws)
    monkeypatch.setenv("VISPREP_CACHE", str(tmp_path / "cache-b"))
    other = Workspace(s3.url("ws-run"))
    assert other.root != ws.root and not any(other.root.iterdir())
    report = run_pipeline(other)
    assert report["fetch"].attempted == 0 and report["inspect"].inspected == 0
    assert report["embed"].embedded == 0 and report["embed"].skipped > 0
    assert report["synth"].rendered_images == 0
    assert all(report[s] == UP_TO_DATE for s in ("dedup", "split", "pairs", "mine", "sample", "export")), report
    assert _manifests(other) == before  # no table, feature store or shard set was committed again
    # `visprep stages` on a third machine says why each table stage would run: it would not.
    monkeypatch.setenv("VISPREP_CACHE", str(tmp_path / "cache-c"))
    third = Workspace(s3.url("ws-run"))
    assert {s: stale_reason(third, s) for s in ("dedup", "split", "pairs", "mine", "sample", "export")} == dict.fromkeys(
        ("dedup", "split", "pairs", "mine", "sample", "export"))
    for name in local.table_names():
        assert other.read_table(name).equals(ws.read_table(name)), name


_KILLED_WRITER = textwrap.dedent("""
    import os, sys
    import pyarrow as pa
    from visprep.storage.objects import ObjectStore
    from visprep.workspace import Workspace

    real = ObjectStore.put_if
    def put_if(self, key, data, *, etag):
        if key == "tables/splits/_manifest.json":
            os._exit(9)  # killed after uploading the new version's blob, before publishing its manifest
        return real(self, key, data, etag=etag)
    ObjectStore.put_if = put_if
    ws = Workspace(sys.argv[1])
    with ws.writer("killed"):
        ws.write_table("splits", pa.table({"product_id": ["p9"], "group_id": ["g9"], "split": ["train"],
                                           "reason": ["hash"]}))
""")


def test_writer_killed_before_its_manifest_leaves_the_old_table_and_the_next_writer_collects_the_garbage(
        s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISPREP_LOCK_LEASE_S", "1")
    url = s3.url("ws-killed")
    ws = Workspace(url)
    old = pa.table({"product_id": ["p1", "p2"], "group_id": ["g1", "g2"], "split": ["train", "test"],
                    "reason": ["hash", "hash"]})
    with ws.writer("first"):
        ws.write_table("splits", old)
    blobs = lambda: sorted(o.key for o in ws.objects.list("tables/splits/blobs/"))
    committed = blobs()
    env = {**os.environ, "PYTHONPATH": str(SRC), "VISPREP_CACHE": str(tmp_path / "killed-cache")}
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, url], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 9, proc.stderr
    orphans = sorted(set(blobs()) - set(committed))
    assert len(orphans) == 1  # uploaded, never committed
    monkeypatch.setenv("VISPREP_CACHE", str(tmp_path / "reader-cache"))
    reader = Workspace(url)
    assert reader.read_table("splits").equals(ws.read_table("splits"))
    assert reader.read_table("splits").column("product_id").to_pylist() == ["p1", "p2"]
    # The killed writer's lock lapses with its lease; the next writer takes it over and collects the orphan.
    time.sleep(2.5)
    assert reader.holder() is None
    with reader.writer("next"):
        assert blobs() == committed
    assert reader.read_table("splits").column("product_id").to_pylist() == ["p1", "p2"]


def test_second_writer_is_refused_naming_the_holder_and_a_taken_over_writer_cannot_commit(
        s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = s3.url("ws-lock")
    ws = Workspace(url)
    env = {**os.environ, "PYTHONPATH": str(SRC), "VISPREP_CACHE": str(tmp_path / "cli-cache")}
    with ws.writer("run"):
        proc = subprocess.run([sys.executable, "-c", "from visprep.cli import app; app()", "split", "-w", url],
                              env=env, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 75, proc.stdout + proc.stderr
        assert "busy" in proc.stdout and f'"pid": {os.getpid()}' in proc.stdout.replace("\n", "")
        assert ws.holder()["command"] == "run"
    assert ws.holder() is None

    monkeypatch.setenv("VISPREP_LOCK_LEASE_S", "1.5")
    table = pa.Table.from_pylist([{"stage": "t", "reason": "r", "detail": "d"}], schema=QUARANTINE)
    with pytest.raises(LockLost), ws.writer("paused"):
        from visprep.storage import remote

        remote._HELD.get(url)._stop.set()  # the writer pauses: no heartbeat renews its lease
        time.sleep(1.7)
        taker = ObjectLock(ws.objects, lease_s=30)
        taker.acquire("taker", busy="w")
        assert taker.taken_over["command"] == "paused"
        ws.write_part("quarantine", table, "late")  # fenced off: the lock is another writer's now
    assert ObjectLock(ws.objects).holder()["command"] == "taker"
    monkeypatch.setenv("VISPREP_CACHE", str(tmp_path / "fresh"))
    assert not Workspace(url).has_table("quarantine")
    with pytest.raises(WorkspaceLocked, match="taker"):
        Workspace(url).writer("third").__enter__()
    taker.release()


def _write_part(args: tuple[str, str, int]) -> None:
    url, cache, k = args
    os.environ["VISPREP_CACHE"] = cache
    ws = Workspace(url)
    rows = [{"stage": "w", "reason": "r", "detail": f"{k}-{i}"} for i in range(3)]
    ws.write_part("quarantine", pa.Table.from_pylist(rows, schema=QUARANTINE), f"worker-{k}")


def test_concurrent_write_part_from_several_processes_loses_no_part(s3: S3Server, tmp_path: Path) -> None:
    url = s3.url("ws-parts")
    n = 6
    with multiprocessing.get_context("spawn").Pool(n) as pool:
        pool.map(_write_part, [(url, str(tmp_path / f"m{k}"), k) for k in range(n)])
    ws = Workspace(url)
    assert ws.part_count("quarantine") == n
    assert sorted(ws.read_table("quarantine").column("detail").to_pylist()) == sorted(
        f"{k}-{i}" for k in range(n) for i in range(3))


def test_local_workspace_with_images_and_shards_on_s3(s3: S3Server, sources: object, tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    ws.write_config_text(CONFIG.replace(STAGES, '["fetch", "inspect", "split", "pairs", "export"]')
                         + f'[storage]\nimages = "{s3.url("media/images")}"\nshards = "{s3.url("media/shards")}"\n')
    assert type(ws) is Workspace
    run_pipeline(ws, sources.catalog_files)
    images = ws.read_table("images", ["image_id", "format"])
    store = ws.store
    keys = {o.key for o in store.objects.list("")}
    assert len(keys) == images.num_rows > 0
    for image_id in images.column("image_id").to_pylist():
        assert any(k.startswith(f"{image_id[:2]}/{image_id[2:4]}/{image_id}.") for k in keys)
    # The shards are where trainers read them, under their own names, with the export's manifest.
    from visprep.storage.objects import ObjectStore

    shards = ObjectStore(s3.url("media/shards"))
    names = {o.key for o in shards.list("")}
    local = {p.relative_to(ws.shards_dir).as_posix() for p in ws.shards_dir.rglob("*") if p.is_file()}
    assert {n for n in local if n.endswith((".tar", "manifest.json", ".parquet"))} <= names
    manifest = json.loads(shards.get("train/manifest.json"))
    assert manifest["split"] == "train" and (ws.shards_dir / "train" / "manifest.json").read_bytes() == \
        shards.get("train/manifest.json")
    # The local copy of an image is a cache: without it the store still serves the image.
    image_id, fmt = images.column("image_id")[0].as_py(), images.column("format")[0].as_py()
    from visprep.images.sniff import extension_for

    ext = extension_for(fmt)
    data = store.get(image_id, ext)
    store.path(image_id, ext).unlink()
    again = Workspace(ws.root)
    assert again.store.get(image_id, ext) == data


def _events_file(path: Path, ids: range) -> Path:
    rows = [{"event_id": f"e{i}", "ts": "2024-03-01T10:00:00Z", "user_id": f"u{i % 3}", "session_id": f"s{i % 3}",
             "type": "view", "product_id": f"p{i % 5}"} for i in ids]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_events_written_into_their_folder_are_published_and_ingested_once_across_machines(
        s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from visprep.events.stage import ingest_event_files

    url = s3.url("ws-events")
    first = _events_file(tmp_path / "a.jsonl", range(10))
    monkeypatch.setenv("VISPREP_CACHE", str(tmp_path / "cache-1"))
    one = Workspace(url)
    assert ingest_event_files(one, [first]).events_new == 10
    # Another machine: the events log (written into the table's folder, not through write_table) is there, so the
    # same file is not ingested twice, and a new one adds only its own events.
    monkeypatch.setenv("VISPREP_CACHE", str(tmp_path / "cache-2"))
    two = Workspace(url)
    again = ingest_event_files(two, [first])
    assert again.files_already == 1 and again.events_new == 0
    assert ingest_event_files(two, [_events_file(tmp_path / "b.jsonl", range(5, 15))]).events_new == 5
    monkeypatch.setenv("VISPREP_CACHE", str(tmp_path / "cache-1"))
    assert sorted(Workspace(url).read_table("events").column("event_id").to_pylist()) == sorted(
        f"e{i}" for i in range(15))
    assert Workspace(url).read_table("interaction_pairs").equals(two.read_table("interaction_pairs"))


def test_a_killed_writers_unpublished_local_writes_are_discarded_by_the_next_writer(
        s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow.parquet as pq

    monkeypatch.setenv("VISPREP_LOCK_LEASE_S", "2")
    url = s3.url("ws-discard")
    ws = Workspace(url)
    rows = lambda d: pa.Table.from_pylist([{"stage": "t", "reason": "r", "detail": d}], schema=QUARANTINE)
    with ws.writer("first"):
        ws.write_part("quarantine", rows("committed"), "one")
    # A writer killed after writing a part into this cache, before publishing it; and one in flight right now.
    folder = ws.tables_dir / "quarantine.parquet"
    stale, fresh = folder / "part-killed.parquet", folder / "part-inflight.parquet"
    pq.write_table(rows("killed"), stale)
    os.utime(stale, (time.time() - 60, time.time() - 60))
    pq.write_table(rows("inflight"), fresh)
    with ws.writer("next"):
        assert not stale.exists() and fresh.exists()
        fresh.unlink()
        assert ws.read_table("quarantine").column("detail").to_pylist() == ["committed"]
