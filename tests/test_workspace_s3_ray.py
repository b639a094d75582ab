"""The Ray engine on a workspace on S3 (moto's server on loopback, a local Ray of 2 CPUs): the workers open the
workspace by its URL and commit their own parts, so the tables equal a local folder's run; with the workers given a
cache folder of their own (as on another node), the parts they wrote still reach the driver through the store, and
they read the images from that cache (fetched from the bucket), never from the driver's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from s3_fixtures import ACCESS_KEY, REGION, SECRET_KEY, S3Server
from test_workspace_s3 import _canon

from visprep.demo.sources import write_demo_sources
from visprep.pipeline import run_pipeline
from visprep.storage.remote import cache_root
from visprep.workspace import Workspace

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.timeout(600), pytest.mark.usefixtures("ray_alone")]

STAGES = '["fetch", "inspect", "synth", "embed", "dedup", "split", "pairs", "export"]'
CONFIG = (f"[pipeline]\nstages = {STAGES}\n[export]\nmax_count = 40\n[inspect]\nworkers = 2\nbatch_size = 16\n"
          '[embed]\nbatch_size = 16\ncheckpoint_every = 32\noptions = { profile = "imagenet-64" }\n'
          "[fetch]\ncheckpoint_every = 64\n"
          '[synthetic]\nbackgrounds = ["texture"]\nreframe_scales = [0.8]\nhue_shifts_deg = [180.0]\n')


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """The server, the AWS variables pointing at it, and a local Ray whose workers see them (and a cache of their
    own: `VISPREP_CACHE` differs from the driver's, as on another node)."""
    with S3Server() as server, pytest.MonkeyPatch.context() as mp:
        env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
               "AWS_ENDPOINT_URL_S3": server.endpoint_url, "AWS_DEFAULT_REGION": REGION}
        for k, v in env.items():
            mp.setenv(k, v)
        mp.setenv("VISPREP_CACHE", str(tmp_path_factory.mktemp("cache-driver")))
        workers_cache = str(tmp_path_factory.mktemp("cache-workers"))
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {**env, "VISPREP_CACHE": workers_cache}})
        try:
            yield server
        finally:
            ray.shutdown()


def test_ray_workers_commit_their_own_parts_to_a_workspace_on_s3(s3: S3Server, tmp_path: Path) -> None:
    sources = write_demo_sources(tmp_path / "src", n_products=40, seed=5)
    local = Workspace(tmp_path / "local")
    local.root.mkdir()
    local.write_config_text(CONFIG)
    run_pipeline(local, sources.catalog_files)

    ws = Workspace(s3.url("ws-ray"))
    ws.write_config_text(CONFIG + '[engine]\nkind = "ray"\n')
    report = run_pipeline(ws, sources.catalog_files)
    assert {ws.last_run(s)["metrics"]["engine"] for s in ("fetch", "inspect", "synth", "embed")} == {"ray"}
    assert report["inspect"].inspected > 0
    for name in local.table_names():
        assert _canon(ws.read_table(name), local.store.root_uri, ws.store.root_uri).equals(
            _canon(local.read_table(name), local.store.root_uri, ws.store.root_uri)), name
    # The workers' cache is not the driver's: what they wrote reached the driver through the store's manifests.
    workers_cache = Path(ray.get_runtime_context().runtime_env["env_vars"]["VISPREP_CACHE"])
    assert any(workers_cache.rglob("*.parquet")), "the workers wrote nothing in their own cache"
    assert ws.read_table("urls").num_rows == local.read_table("urls").num_rows
    # The workers read every image from their own cache, fetched from the bucket: the driver handed them object
    # URLs (`ImageStore.ref`), never a path in its cache, which holds no image at all (as on another node, where
    # the driver's files do not exist).
    driver_images = [p for p in ws.store.root.rglob("*") if p.is_file()]
    assert not driver_images, driver_images[:3]
    worker_images = workers_cache / cache_root(ws.url).name / "images"
    assert len([p for p in worker_images.rglob("*") if p.is_file()]) >= report["inspect"].inspected
    # The shards the workers wrote are in the store, the same files as the local run's.
    tars = sorted(p.relative_to(local.shards_dir).as_posix() for p in local.shards_dir.rglob("*.tar"))
    keys = {o.key for o in ws.objects.list("shards/")}
    assert tars and {f"shards/{t}" for t in tars} <= keys, (tars, sorted(keys))
