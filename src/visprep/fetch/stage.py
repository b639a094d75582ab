"""The fetch stage: download every catalog image not yet stored, checkpointing so a killed run resumes."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from visprep.config import FetchClientConfig, FetchConfig, section_params
from visprep.engines import (
    Engine,
    before_parallel_parts,
    get_engine,
    map_parts,
    spread,
    workspace_location,
)
from visprep.fetch import Fetcher, FetchResult, FetchSettings
from visprep.images.sniff import extension_for
from visprep.schema import URLS
from visprep.views.catalog import SYNTHETIC_URL_REASON
from visprep.workspace import ImageStore, QuarantineRecord, Workspace, utcnow


@dataclass
class FetchStageResult:
    """Counts of one fetch run."""

    wanted: int = 0
    already: int = 0
    attempted: int = 0
    ok: int = 0
    failed: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    run_id: str = ""


def pending_urls(ws: Workspace, *, retry_failed: bool) -> tuple[list[str], int]:
    """Return the URLs still to fetch, and how many wanted URLs are already done."""
    wanted = pc.unique(ws.read_table("product_images", ["url"]).column("url"))
    latest = ws.latest_urls().select(["url", "status", "image_id", "format"])
    # Arrow masks, not a Python set of every URL done: at catalog scale the pending list is what stays small.
    ok = pc.fill_null(pc.equal(latest.column("status"), "ok"), False)
    stored = latest.filter(ok)
    # "Not yet in the store" is the rule: a deleted file is fetched again.
    present = pa.array([ws.store.exists(i, extension_for(f)) for batch in stored.to_batches(65_536)
                        for i, f in zip(batch.column("image_id").to_pylist(), batch.column("format").to_pylist())],
                       pa.bool_())
    done = [stored.column("url").filter(present)] if len(present) else []
    if not retry_failed:
        done.append(latest.column("url").filter(pc.invert(ok)))
    done_urls = pa.chunked_array([c for d in done for c in d.chunks], pa.string())
    todo = wanted.filter(pc.invert(pc.is_in(wanted, value_set=done_urls.combine_chunks()))).to_pylist()
    return todo, len(wanted) - len(todo)


def local_roots_by_url(ws: Workspace, urls: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Map each local URL (bare path or file://) of `urls` to the folders it may be read from.

    A URL's folders are those of the catalog files (`products.source_file`) whose products name it; a URL with none
    maps to () and is refused under `fetch.local_paths = "catalog_dir"`. Remote URLs are left out (the policy is
    about local files).
    """
    images = ws.read_table("product_images", ["product_id", "url"])
    images = images.filter(pc.is_in(images.column("url"), value_set=pa.array(urls, pa.string())))
    lowered = pc.utf8_lower(images.column("url"))
    remote = pc.or_(pc.or_(pc.starts_with(lowered, "http://"), pc.starts_with(lowered, "https://")),
                    pc.starts_with(lowered, "s3://"))
    local = images.filter(pc.invert(remote))
    if local.num_rows == 0:
        return {}
    products = ws.read_table("products", ["product_id", "source_file"])
    named = local.join(products, "product_id", join_type="left outer")
    roots: dict[str, set[str]] = {}
    for url, source_file in zip(*(named.column(c).to_pylist() for c in ("url", "source_file"))):
        folders = roots.setdefault(url, set())
        if source_file and os.path.isabs(source_file):
            folders.add(os.path.dirname(source_file))
    return {url: tuple(sorted(folders)) for url, folders in roots.items()}


def client_settings(cfg: FetchConfig) -> dict[str, Any]:
    """The `[fetch]` section's client options (`FetchSettings`' fields) as a plain dict, what `fetch_batch` takes."""
    return cfg.model_dump(include=set(FetchClientConfig.model_fields))


def fetch_batch(urls: Sequence[str], settings: Mapping[str, Any], local_roots: Mapping[str, Sequence[str]], *,
                store_root: str | Path) -> list[dict]:
    """Fetch one batch of URLs: one `urls` row (without `run_id`) per URL, in input order; a failure is a row with
    its status and reason, never raised. The bytes of each fetched image go into the image store at `store_root`
    under their content address (idempotent); no table is written.

    Args:
        urls: the URLs, as `Fetcher.fetch` takes them.
        settings: the client options (`client_settings` of the `[fetch]` section).
        local_roots: URL -> the folders its local path may be read from (`local_roots_by_url`).
        store_root: the image store's folder (`Workspace.store.root`).
    """
    with Fetcher(FetchSettings(**settings)) as fetcher:
        rows = {r["url"]: r for r in fetch_rows(fetcher, urls, local_roots, ImageStore(Path(store_root)))}
    return [dict(rows[u]) for u in urls]


def fetch_part(seq: int, urls: Sequence[str], *, root: str, run_id: str, settings: Mapping[str, Any],
               local_roots: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Fetch batch `seq` of run `run_id` with a client of its own (`fetch_batch`: the images into the store of the
    workspace at `root`) and write its rows as the `urls` part `<run_id>-<seq>`, from whichever process or node
    runs it; return only the counts the driver needs.

    The part name is a function of the run and the batch number, so a batch Ray reruns after its worker died
    replaces the part its first attempt may have written (the images are content-addressed: stored once).

    Returns:
        {"rows": rows written, "ok": rows with an image, "status": {status: count}}.
    """
    ws = Workspace(root)
    rows = fetch_batch(urls, settings, {u: local_roots[u] for u in urls if u in local_roots},
                       store_root=ws.store.root)
    status: dict[str, int] = {}
    for row in rows:
        row["run_id"] = run_id
        status[row["status"]] = status.get(row["status"], 0) + 1
    ws.write_part("urls", pa.Table.from_pylist(rows, schema=URLS), f"{run_id}-{seq:06d}")
    return {"rows": len(rows), "ok": sum(r["image_id"] is not None for r in rows), "status": status}


def split_window(settings: Mapping[str, Any], tasks: int) -> dict[str, Any]:
    """`settings` with the concurrency window split over `tasks` tasks running at once (at least 1 each), so that
    together they keep the configured limit on requests in flight, per host included."""
    return {**settings, "concurrency": max(1, int(settings["concurrency"]) // max(1, tasks))}


def fetch_rows(fetcher: Fetcher, urls: Iterable[str], local_roots: Mapping[str, Sequence[str]],
               store: ImageStore) -> Iterator[dict]:
    """Yield one `urls` row (without `run_id`) per URL as its fetch finishes, storing the fetched bytes in `store`:
    the body of `fetch_batch`, which the fetch stage streams over all its URLs with one fetcher (connections and
    the concurrency window are kept across checkpoints)."""
    for res in fetcher.fetch_many(urls, local_roots=local_roots):
        yield url_row(res, store)


def url_row(res: FetchResult, store: ImageStore) -> dict:
    """The `urls` row (without `run_id`) of one fetch result; an image's bytes go into `store`."""
    row = {"url": res.url, "status": res.status, "http_status": res.http_status, "attempts": res.attempts,
           "reason": res.reason, "final_url": res.final_url, "fetched_at": utcnow(), "format": res.format,
           "image_id": None, "bytes": None}
    if res.ok and res.data is not None and res.format is not None:
        row["image_id"] = store.put(res.data, extension_for(res.format))
        row["bytes"] = len(res.data)
    return row


def fetch_stage(ws: Workspace, *, progress: Callable[[int, int], None] | None = None,
                limit: int | None = None) -> FetchStageResult:
    """Fetch pending images into the store and record one `urls` row per URL; failures are quarantined."""
    cfg = ws.config.fetch
    result = FetchStageResult()
    with ws.writer("fetch"):  # held from the cleanup on: another writer's temporaries are not ours to delete
        ws.store.clean_temporaries()
        todo, result.already = pending_urls(ws, retry_failed=cfg.retry_failed)
        if limit is not None:
            todo = todo[:limit]
        result.wanted = result.already + len(todo)
        return _fetch(ws, todo, result, progress)


def _fetch(ws: Workspace, todo: list[str], result: FetchStageResult,
           progress: Callable[[int, int], None] | None) -> FetchStageResult:
    with ws.run("fetch", section_params(ws.config, "fetch")) as run:
        run.inputs = {"product_images": ws.table_fingerprint("product_images"), "pending": len(todo)}
        result.run_id = run.run_id
        if progress:
            progress(0, len(todo))
        local_roots = local_roots_by_url(ws, todo)
        engine = get_engine(ws.config)
        run.metrics["engine"] = engine.name
        if engine.remote and todo:
            _fetch_on_workers(ws, engine, todo, local_roots, run.run_id, result, progress)
        else:
            _fetch_here(ws, todo, local_roots, run.run_id, result, progress)
        # A killed run left its checkpoint parts behind; an older synth stage left its views' rows.
        if result.attempted or _checkpoint_parts_left(ws) or _legacy_synthetic_rows(ws):
            compact_urls(ws)
        quarantined = refresh_fetch_quarantine(ws, run.run_id)
        run.counts = {"urls_in": result.wanted, "already": result.already, "attempted": result.attempted,
                      "ok": result.ok, "failed": result.failed, "quarantined": quarantined}
    return result


def _fetch_on_workers(ws: Workspace, engine: Engine, todo: list[str], local_roots: Mapping[str, Sequence[str]],
                      run_id: str, result: FetchStageResult, progress: Callable[[int, int], None] | None) -> None:
    """Fetch `todo` in batches of `fetch.checkpoint_every` URLs (fewer when there are not enough for every task
    to get a batch), each a task with its own client that stores the images and writes its `urls` part itself
    (`fetch_part`); at most `engine.slots()` tasks run at once, each with that share of `fetch.concurrency`, so
    the window stays the configured one overall."""
    cfg = ws.config.fetch
    before_parallel_parts(ws, "urls", f"{run_id}-{0:06d}")
    tasks = engine.slots(0)
    settings = split_window(client_settings(cfg), tasks)
    write = partial(fetch_part, root=workspace_location(ws), run_id=run_id, settings=settings, local_roots=local_roots)
    # A part per checkpoint_every URLs, fewer where that would leave tasks (and their share of the window) idle.
    size = spread(len(todo), cfg.checkpoint_every, tasks)
    for batch, summary in map_parts(engine, write, todo, batch_size=size, workers=tasks):
        result.attempted += summary["rows"]
        result.ok += summary["ok"]
        result.failed += summary["rows"] - summary["ok"]
        for status, n in summary["status"].items():
            result.by_status[status] = result.by_status.get(status, 0) + n
        if progress:
            progress(len(batch), len(todo))


def _fetch_here(ws: Workspace, todo: list[str], local_roots: Mapping[str, Sequence[str]], run_id: str,
                result: FetchStageResult, progress: Callable[[int, int], None] | None) -> None:
    """Fetch `todo` with one client in this process, its connections and window kept across checkpoints."""
    cfg = ws.config.fetch
    buffer: list[dict] = []
    seq = 0

    def flush() -> None:
        nonlocal seq
        if buffer:
            ws.write_part("urls", pa.Table.from_pylist(buffer, schema=URLS), f"{run_id}-{seq:06d}")
            seq += 1
            buffer.clear()

    with Fetcher(FetchSettings(**client_settings(cfg))) as fetcher:
        for row in fetch_rows(fetcher, todo, local_roots, ws.store):
            row["run_id"] = run_id
            result.attempted += 1
            if row["image_id"] is not None:
                result.ok += 1
            else:
                result.failed += 1
            result.by_status[row["status"]] = result.by_status.get(row["status"], 0) + 1
            buffer.append(row)
            if len(buffer) >= cfg.checkpoint_every:
                flush()
            if progress:
                progress(1, len(todo))
        flush()


def _checkpoint_parts_left(ws: Workspace) -> bool:
    # Only this stage's checkpoint parts (named after a fetch run) call for compaction, so a fetch with nothing to
    # do leaves the table, and what depends on it, unchanged.
    path = ws.table_path("urls")
    return path.is_dir() and any("-fetch-" in p.name for p in path.glob("part-*.parquet"))


def _legacy_synthetic_rows(ws: Workspace) -> bool:
    """Whether `urls` holds rows an older synth stage wrote for its views (now `visprep.views.catalog`'s)."""
    reason = ws.read_table("urls", ["reason"]).column("reason")
    return bool(pc.any(pc.fill_null(pc.equal(reason, SYNTHETIC_URL_REASON), False)).as_py())


def compact_urls(ws: Workspace) -> None:
    """Rewrite `urls` as one part with one row per URL (the newest), without an older synth stage's rows."""
    if ws.has_table("urls"):
        latest = ws.latest_urls()
        ws.write_table("urls", latest.filter(pc.invert(pc.fill_null(
            pc.equal(latest.column("reason"), SYNTHETIC_URL_REASON), False))))


def refresh_fetch_quarantine(ws: Workspace, run_id: str) -> int:
    """Make the fetch quarantine list exactly the URLs whose newest fetch failed."""
    latest = ws.latest_urls()
    failed = latest.filter(pc.not_equal(latest.column("status"), "ok"))
    # The owners of the failed URLs only: a dict over every URL of the catalog was the stage's largest object.
    refs = ws.sql("SELECT url, min(product_id) AS product_id FROM pi SEMI JOIN f USING (url) GROUP BY url",
                  pi=ws.read_table("product_images", ["url", "product_id"]), f=failed.select(["url"]))
    owner = dict(zip(refs.column("url").to_pylist(), refs.column("product_id").to_pylist()))
    records = [
        QuarantineRecord(reason=row["status"], detail=row["reason"] or row["status"], source=row["url"],
                         record_id=owner.get(row["url"]), field="image_urls", value=row["url"])
        for row in failed.to_pylist()
    ]
    return ws.quarantine(records, stage="fetch", run_id=run_id, key="current")
