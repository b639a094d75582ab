"""The engines: `[engine] kind` picks one; the Ray engine (Ray Data map_batches on a real two-node Ray cluster on
loopback) gives the same batches in the same order as the local one, the same tables over a whole demo run, and
the same tables when a worker is killed (kill -9) mid-stage."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
from ray.cluster_utils import Cluster
from test_golden_pipeline import snapshot  # the golden test's canonical form of every table
from typer.testing import CliRunner

from visprep.cli import app
from visprep.config import EngineConfig, VisprepConfig, load_config
from visprep.demo.sources import write_demo_sources
from visprep.embed.store import FeatureStore
from visprep.engines import LocalEngine, get_engine
from visprep.images import stage as images_stage
from visprep.images.stage import inspect_batch, inspect_stage
from visprep.pipeline import run_pipeline
from visprep.views.features import features_root
from visprep.workspace import Workspace

pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("ray_alone")]

# The per-record stages the Ray engine runs today: fetch, inspect, synth, embed, embed_views and export; all but
# synth with the workers writing their own parts and shards.
CONFIG = ('[pipeline]\nstages = ["fetch", "inspect", "synth", "embed", "embed_views", "split", "pairs", "export"]\n'
          "[export]\nmax_count = 40\n[inspect]\nworkers = 2\nbatch_size = 8\n"
          '[embed]\nbatch_size = 16\noptions = { profile = "imagenet-64" }\n'
          '[synthetic]\nbackgrounds = ["texture"]\nreframe_scales = [0.8]\nhue_shifts_deg = [180.0]\n')


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Two Ray nodes of one CPU each on loopback, this process connected as the driver."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        c.add_node(num_cpus=1)
        c.wait_for_nodes(timeout=60)
        ray.init(address=c.address, log_to_driver=False)
        # The test-only batch functions below live in this module, which the workers cannot import by name.
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        yield c
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        ray.shutdown()
        c.shutdown()


def _square_each(batch: Sequence[int]) -> list[int]:
    return [x * x for x in batch]


def _pid_of(batch: Sequence[int]) -> tuple[int, list[int]]:
    return os.getpid(), list(batch)


def _inspect_or_die_once(items: Sequence[tuple], *, marker: str) -> list[dict]:
    """inspect_batch, except that the first call anywhere kills its own worker process (kill -9) instead."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return inspect_batch(items)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable: the process was killed")


def _preprocess_or_die_once(items: Sequence[tuple], *, marker: str, **limits: int) -> list:
    """preprocess_batch, except that the first call anywhere kills its own worker process (kill -9) instead."""
    from visprep.export.stage import preprocess_batch

    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return preprocess_batch(items, **limits)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable: the process was killed")


def _die_always(batch: Sequence[int], *, log: str) -> list[int]:
    with open(log, "a") as fh:
        fh.write(f"{os.getpid()}\n")
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable: the process was killed")


def test_engine_kind_picks_the_engine_and_a_bad_kind_is_refused(tmp_path: Path) -> None:
    assert isinstance(get_engine(VisprepConfig()), LocalEngine)
    assert get_engine(VisprepConfig(engine=EngineConfig(kind="ray"))).name == "ray"
    (tmp_path / "visprep.toml").write_text('[engine]\nkind = "spark"\n')
    with pytest.raises(ValueError, match=r"engine\.kind = 'spark'"):
        load_config(tmp_path / "visprep.toml")


def test_ray_batches_equal_the_local_ones_in_order(cluster: Cluster) -> None:
    items = list(range(23))
    ray_engine = get_engine(EngineConfig(kind="ray"))
    want = list(LocalEngine().map_batches(_square_each, items, batch_size=5, workers=1))
    assert [b for b, _ in want] == [items[i:i + 5] for i in range(0, 23, 5)]
    assert list(ray_engine.map_batches(_square_each, items, batch_size=5)) == want
    assert list(ray_engine.map_batches(_square_each, [], batch_size=5)) == []


def test_a_stateful_function_runs_in_a_pool_of_workers_actors(cluster: Cluster) -> None:
    out = list(get_engine(EngineConfig(kind="ray")).map_batches(_pid_of, range(12), batch_size=2, workers=2,
                                                                stateful=True))
    assert [b for b, _ in out] == [r[1] for _, r in out] == [[i, i + 1] for i in range(0, 12, 2)]
    assert 1 <= len({pid for _, (pid, _) in out}) <= 2  # one process per actor, never more than the pool


def test_a_batch_that_kills_every_worker_fails_after_max_retries(cluster: Cluster, tmp_path: Path) -> None:
    log = tmp_path / "attempts"
    engine = get_engine(EngineConfig(kind="ray", max_retries=1))
    with pytest.raises(ray.exceptions.WorkerCrashedError):
        list(engine.map_batches(partial(_die_always, log=str(log)), [1, 2], batch_size=2))
    assert len(log.read_text().split()) == 2  # the first run and one retry, each in a process of its own


def _demo_workspace(root: Path, kind: str, catalog_files: list[Path]) -> Workspace:
    ws = Workspace(root / f"ws-{kind}")
    ws.root.mkdir(parents=True)
    ws.config_path.write_text(CONFIG + f'[engine]\nkind = "{kind}"\n')
    run_pipeline(ws, catalog_files)
    return ws


def _differences(want: dict, got: dict) -> list[str]:
    problems = [f"table {n}: only in the {side} run" for side, a, b in (("local", want, got), ("ray", got, want))
                for n in sorted(set(a) - set(b))]
    for name in sorted(set(want) & set(got)):
        if want[name]["sha256"] != got[name]["sha256"]:
            w, g = want[name]["rows"], got[name]["rows"]
            problems.append(f"table {name}: {len(w)} vs {len(g)} rows; first differing: "
                            f"{next(((a, b) for a, b in zip(w, g) if a != b), None)}")
    return problems


@pytest.fixture(scope="module")
def runs(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, Workspace]:
    root = tmp_path_factory.mktemp("engines")
    # One source folder: the tables record the catalog's local image paths.
    files = write_demo_sources(root / "src", n_products=60, seed=5).catalog_files
    return _demo_workspace(root, "local", files), _demo_workspace(root, "ray", files)


def test_both_engines_write_identical_tables(runs: tuple[Workspace, Workspace]) -> None:
    local_ws, ray_ws = runs
    want, got = snapshot(local_ws, local_ws.root), snapshot(ray_ws, ray_ws.root)
    assert {"images", "urls", "pairs"} <= set(want) and any(n.startswith("shards") or "samples" in n for n in want)
    assert not _differences(want, got)
    assert want["synthetic_views"]["count"] > 0
    for stage in ("fetch", "inspect", "synth", "embed", "embed_views", "export"):
        assert local_ws.last_run(stage)["metrics"]["engine"] == "local"
        assert ray_ws.last_run(stage)["metrics"]["engine"] == "ray"


def test_both_engines_store_the_same_vectors(runs: tuple[Workspace, Workspace]) -> None:
    stores = [sorted(p.name for p in features_root(ws).iterdir()) for ws in runs]
    assert stores[0] == stores[1] and len(stores[0]) == 1  # the same model id: the actors' threads are not in it
    local, on_ray = (FeatureStore.open_existing(features_root(ws), stores[0][0]) for ws in runs)
    ids = local.ids()
    assert sorted(ids) == sorted(on_ray.ids()) and len(ids) > 100
    np.testing.assert_allclose(on_ray.get(ids)[0], local.get(ids)[0], atol=1e-5)


def test_a_worker_killed_mid_stage_is_retried_and_the_tables_are_identical(
        runs: tuple[Workspace, Workspace], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local_ws, _ = runs
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(local_ws.root, ws.root)
    (ws.root / "visprep.toml").write_text(CONFIG + '[engine]\nkind = "ray"\nmax_retries = 2\n')
    ws = Workspace(ws.root)
    shutil.rmtree(ws.table_path("images")) if ws.table_path("images").is_dir() else ws.table_path("images").unlink()
    marker = tmp_path / "killed"
    monkeypatch.setattr(images_stage, "inspect_batch", partial(_inspect_or_die_once, marker=str(marker)))
    result = inspect_stage(ws)
    assert marker.exists() and int(marker.read_text()) != os.getpid()  # a Ray worker died, not this process
    assert result.inspected == result.stored > 0
    want = snapshot(local_ws, local_ws.root)["images"]
    got = snapshot(ws, ws.root)["images"]
    assert got["sha256"] == want["sha256"], _differences({"images": want}, {"images": got})


def test_a_worker_killed_while_staging_shards_is_retried_and_the_shards_are_identical(
        runs: tuple[Workspace, Workspace], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from visprep.export import stage as export_mod

    local_ws, ray_ws = runs
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(ray_ws.root, ws.root)
    (ws.root / "visprep.toml").write_text(CONFIG + '[engine]\nkind = "ray"\nmax_retries = 2\n')
    ws = Workspace(ws.root)
    shutil.rmtree(ws.shards_dir)
    marker = tmp_path / "killed"
    monkeypatch.setattr(export_mod, "preprocess_batch", partial(_preprocess_or_die_once, marker=str(marker)))
    export_mod.export_stage(ws)
    assert marker.exists() and int(marker.read_text()) != os.getpid()  # a Ray worker died, not this process
    want = {n: t for n, t in snapshot(local_ws, local_ws.root).items() if n.startswith("shards/")}
    got = {n: t for n, t in snapshot(ws, ws.root).items() if n.startswith("shards/")}
    assert want and not _differences(want, got)
    assert not any(ws.shards_dir.rglob(".staging"))  # the staged samples are gone once the shards are written


def _copy_as(src: Workspace, dest: Path, kind: str) -> Workspace:
    shutil.copytree(src.root, dest)
    (dest / "visprep.toml").write_text(CONFIG + f'[engine]\nkind = "{kind}"\n')
    return Workspace(dest)


def test_dedups_image_checks_run_as_ray_tasks_and_give_the_same_groups(
        runs: tuple[Workspace, Workspace], tmp_path: Path) -> None:
    import pyarrow as pa

    from visprep.dedup.stage import dedup_stage
    from visprep.images.stage import SIGNATURE_COLUMNS

    local_ws, _ = runs
    results, tables = {}, {}
    for kind in ("local", "ray"):
        ws = _copy_as(local_ws, tmp_path / kind, kind)
        # Images inspected before the signature columns existed: dedup decodes those its pairs need.
        imgs = ws.read_table("images")
        for c in SIGNATURE_COLUMNS:
            f = imgs.schema.field(c)
            imgs = imgs.set_column(imgs.schema.get_field_index(c), f, pa.nulls(imgs.num_rows, f.type))
        ws.write_table("images", imgs)
        results[kind] = dedup_stage(ws)
        assert ws.last_run("dedup")["metrics"]["engine"] == kind
        tables[kind] = {n: t for n, t in snapshot(ws, ws.root).items() if n in ("product_groups", "duplicate_edges")}
    assert results["ray"].counts["images_decoded"] == results["local"].counts["images_decoded"] > 0
    assert results["ray"].counts == results["local"].counts
    assert len(tables["local"]) == 2 and not _differences(tables["local"], tables["ray"])


def test_the_queries_models_run_in_ray_actors_and_write_the_same_rows(
        runs: tuple[Workspace, Workspace], tmp_path: Path) -> None:
    from visprep.queries.stage import queries_stage

    local_ws, ray_ws = runs
    photos = [str(p) for p in sorted((local_ws.root.parent / "src").rglob("*.jpg"))[:5]]
    photos.append(str(tmp_path / "missing.jpg"))  # a failed fetch: a rejected row, quarantined
    got = {}
    for kind, src in (("local", local_ws), ("ray", ray_ws)):
        ws = _copy_as(src, tmp_path / kind, kind)
        res = queries_stage(ws, photos)
        assert res.inputs == 6 and res.rejected >= 1
        assert ws.last_run("queries")["metrics"]["engine"] == kind
        got[kind] = {n: t for n, t in snapshot(ws, ws.root).items() if n in ("queries", "quarantine")}
        got[kind]["accepted"] = res.accepted
    assert got["ray"]["accepted"] == got["local"]["accepted"] > 0
    assert not _differences({k: v for k, v in got["local"].items() if k != "accepted"},
                            {k: v for k, v in got["ray"].items() if k != "accepted"})


def test_the_engine_option_of_run_overrides_the_config(runs: tuple[Workspace, Workspace], tmp_path: Path) -> None:
    _, ray_ws = runs
    ws_root = tmp_path / "ws"
    shutil.copytree(ray_ws.root, ws_root)
    bad = CliRunner().invoke(app, ["run", "-w", str(ws_root), "--engine", "spark"])
    assert bad.exit_code == 1 and "--engine must be 'local' or 'ray', got 'spark'" in bad.output
    ok = CliRunner().invoke(app, ["run", "-w", str(ws_root), "--engine", "local", "--force"])
    assert ok.exit_code == 0, ok.output
    assert Workspace(ws_root).last_run("export")["metrics"]["engine"] == "local"


def test_without_an_address_visprep_starts_its_own_ray_rather_than_joining_one(monkeypatch) -> None:
    """With `engine.address` left out, a cluster that `ray start` left on the machine (or RAY_ADDRESS) must not be
    joined: ray.init would then refuse num_cpus. The local start names address="local"."""
    import ray

    from visprep.config import EngineConfig
    from visprep.engines import ray_engine

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setattr(ray_engine.atexit, "register", lambda fn: None)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # a cluster to stay away from
    ray_engine.connect(EngineConfig(kind="ray", num_cpus=1))
    ray_engine.connect(EngineConfig(kind="ray", address="auto"))
    assert calls[0]["address"] == "local" and calls[0]["num_cpus"] == 1
    assert calls[1]["address"] == "auto" and "num_cpus" not in calls[1]


class _LocalAsRemote(LocalEngine):
    """The local pool, taken for an engine whose workers write their own outputs (as Ray's do); keeps what each
    batch handed back to the driver."""

    remote = True

    def __init__(self) -> None:
        self.returned: list[object] = []

    def map_batches(self, fn: Callable, items: Iterable, **kwargs: Any) -> Iterator[tuple[list, Any]]:
        for batch, result in super().map_batches(fn, items, **kwargs):
            self.returned.append(result)
            yield batch, result


def _jpegs_in(value: object) -> int:
    """How many JPEG byte strings `value` holds, however deeply nested."""
    if isinstance(value, bytes | bytearray):
        return int(bytes(value[:3]) == b"\xff\xd8\xff")
    if isinstance(value, dict):
        return sum(_jpegs_in(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_jpegs_in(v) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        return sum(_jpegs_in(getattr(value, f)) for f in value.__dataclass_fields__)
    return 0


def _split_files(ws: Workspace) -> dict[str, bytes]:
    """Every file under `shards/`, by path: tars, manifests, sample indexes (staging and locks must be gone)."""
    return {str(p.relative_to(ws.shards_dir)): p.read_bytes() for p in sorted(ws.shards_dir.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")}


def test_shards_staged_and_written_by_workers_equal_the_drivers_byte_for_byte(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from visprep.export import stage as export_mod

    files = write_demo_sources(tmp_path / "src", n_products=30, seed=5).catalog_files
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    ws.config_path.write_text('[pipeline]\nstages = ["fetch", "inspect", "split", "pairs", "export"]\n'
                              "[export]\nmax_count = 7\n[inspect]\nworkers = 1\n[preprocess]\nsize = 32\n")
    run_pipeline(ws, files)
    want = _split_files(ws)
    assert sum(n.endswith(".tar") for n in want) > 3
    shutil.rmtree(ws.shards_dir)
    engine = _LocalAsRemote()
    monkeypatch.setattr(export_mod, "get_engine", lambda cfg: engine)
    export_mod.export_stage(ws)
    assert _split_files(ws) == want
    # The driver got sizes, offsets and records back, never a JPEG: the workers wrote every byte of the shards.
    assert engine.returned and not any(_jpegs_in(r) for r in engine.returned)
    returned = len(pickle.dumps(engine.returned))
    jpeg_bytes = sum(len(v) for k, v in want.items() if k.endswith(".tar"))
    assert returned < jpeg_bytes / 3, (returned, jpeg_bytes)
    # A rerun keeps every finished shard file (compared, not rewritten), as write_shards does on resume.
    inodes = {p: p.stat().st_ino for p in ws.shards_dir.rglob("*.tar")}
    export_mod.export_stage(ws)
    assert {p: p.stat().st_ino for p in ws.shards_dir.rglob("*.tar")} == inodes
    assert _split_files(ws) == want


def test_parallel_store_parts_sort_in_batch_order_and_a_rerun_batch_replaces_its_part(tmp_path: Path) -> None:
    from visprep.embed.store import parallel_part_name

    def vec(i: int) -> np.ndarray:
        v = np.zeros((1, 4), np.float32)
        v[0, i % 4] = 1.0
        return v

    store = FeatureStore(tmp_path, "m", 4)
    store.append(["a"], vec(0), update_index=False)  # a part from before the run
    base = store.part_count()
    for batch, image_id in ((2, "d"), (0, "b"), (1, "c"), (0, "b")):  # workers finish out of order; batch 0 twice
        FeatureStore(tmp_path, "m", 4).append([image_id], vec(batch), update_index=False, writer="embed",
                                              part=parallel_part_name(base, batch))
    reopened = FeatureStore.open_existing(tmp_path, "m")
    assert reopened.ids() == ["a", "b", "c", "d"]
    reopened.append(["e"], vec(3), update_index=False)  # a later local part still sorts last
    assert FeatureStore.open_existing(tmp_path, "m").ids() == ["a", "b", "c", "d", "e"]
    with pytest.raises(ValueError, match="parallel_part_name"):
        store.append(["x"], vec(0), part="../x", update_index=False)


def test_a_batch_written_twice_under_two_runs_names_keeps_one_row_per_image() -> None:
    import pyarrow as pa

    from visprep.images.stage import first_of_each

    t = pa.table({"image_id": ["b", "a", "c", "a", "b"], "run_id": ["r1", "r1", "r2", "r2", "r2"]})
    assert first_of_each(t).to_pylist() == [{"image_id": "b", "run_id": "r1"}, {"image_id": "a", "run_id": "r1"},
                                            {"image_id": "c", "run_id": "r2"}]
    assert first_of_each(t.slice(0, 3)).equals(t.slice(0, 3))


def test_the_fetch_window_is_split_over_the_tasks_that_run_at_once() -> None:
    from visprep.fetch.stage import split_window

    assert split_window({"concurrency": 32, "retries": 3}, 4) == {"concurrency": 8, "retries": 3}
    assert split_window({"concurrency": 3}, 8)["concurrency"] == 1  # never none: a task must make progress
    assert split_window({"concurrency": 32}, 0)["concurrency"] == 32


def test_a_one_file_table_becomes_a_folder_before_workers_add_parts_to_it(tmp_path: Path) -> None:
    import pyarrow as pa

    from visprep.engines import before_parallel_parts
    from visprep.schema import URLS

    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    rows = pa.Table.from_pylist([{"url": "http://x/a.jpg", "status": "ok", "image_id": "a" * 64}], schema=URLS)
    ws.write_table("urls", rows)
    assert ws.table_path("urls").is_file()
    before_parallel_parts(ws, "urls", "run-000000")
    assert ws.table_path("urls").is_dir() and ws.part_count("urls") == 2  # the old file, and the empty part
    assert ws.read_table("urls", ["url"]).column("url").to_pylist() == ["http://x/a.jpg"]
    ws.write_part("urls", rows, "run-000000")  # batch 0's own part replaces the empty one
    assert ws.part_count("urls") == 2 and ws.read_table("urls").num_rows == 2
    before_parallel_parts(ws, "urls", "run-000000")  # a folder already: nothing written
    assert ws.part_count("urls") == 2 and ws.read_table("urls").num_rows == 2


def test_batches_shrink_so_that_every_worker_gets_one() -> None:
    from visprep.engines import spread

    assert spread(10_000, 1024, 4) == 1024  # enough items: the configured size
    assert spread(900, 1024, 4) == 225  # fewer: one batch per worker
    assert spread(900, 1024, 4, multiple_of=32) == 256  # whole forward passes of 32
    assert spread(3, 256, 8) == 1 and spread(0, 256, 8) == 1
