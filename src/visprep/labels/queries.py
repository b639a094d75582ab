"""Query images: resolve each rater-file `query_id` to a stored image id, fetching paths/URLs like any image."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from visprep.fetch import Fetcher, FetchSettings
from visprep.images.sniff import SNIFF_BYTES, extension_for, sniff_format
from visprep.labels.readers import IMAGE_ID
from visprep.schema import TABLES
from visprep.workspace import Workspace


@dataclass
class ResolvedQueries:
    """Query ref → (image id, format) for the refs that resolved; ref → (status, reason) for the others."""

    found: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)
    fetched: int = 0


def known_image_ids(ws: Workspace) -> dict[str, str | None]:
    """Image ids the workspace already knows (catalog fetches and earlier queries) → format."""
    known: dict[str, str | None] = {}
    urls = ws.latest_urls()
    for iid, fmt, status in zip(*(urls.column(c).to_pylist() for c in ("image_id", "format", "status"))):
        if status == "ok" and iid:
            known[iid] = fmt
    q = ws.read_table("eval_queries")
    for iid, fmt in zip(q.column("query_id").to_pylist(), q.column("format").to_pylist()):
        known.setdefault(iid, fmt)
    # Accepted user query photos (`visprep queries`) and synthetic views are stored images too; their tables
    # do not record the format, so it is sniffed from the stored bytes.
    for table in ("queries", "synthetic_views"):
        if table in TABLES and ws.has_table(table):
            t = ws.read_table(table, ["image_id"])
            for iid in t.column("image_id").to_pylist():
                if iid and iid not in known:
                    fmt = stored_format(ws, iid)
                    if fmt:
                        known[iid] = fmt
    return known


def stored_format(ws: Workspace, image_id: str) -> str | None:
    """The image format of a stored image, sniffed from its bytes (None when it is not stored)."""
    for path in ws.store.path(image_id, "x").parent.glob(f"{image_id}.*"):
        with open(path, "rb") as fh:
            return sniff_format(fh.read(SNIFF_BYTES))
    return None


def resolve_queries(ws: Workspace, refs: Iterable[str], *,
                    local_roots: Mapping[str, Sequence[str]] | None = None) -> ResolvedQueries:
    """Resolve query refs: an image id must be known to the workspace; a path/URL is fetched through `Fetcher`
    (with the workspace's fetch settings and guards) and stored in the content-addressed image store, unless an
    earlier labels run already stored it. `local_roots` maps a local ref to the folders it may be read from (the
    rater files' folders, under `fetch.local_paths = "catalog_dir"`); None applies no folder rule."""
    out = ResolvedQueries()
    known = known_image_ids(ws)
    earlier = ws.read_table("eval_queries")
    stored_ref = {r: (i, f) for r, i, f in zip(*(earlier.column(c).to_pylist()
                                                  for c in ("query_ref", "query_id", "format")))}
    to_fetch = []
    for ref in sorted(set(refs)):
        if IMAGE_ID.match(ref):
            if ref in known:
                out.found[ref] = (ref, known[ref])
            else:
                out.failed[ref] = ("unknown_query_image", (f"query image id {ref} is not in this workspace "
                                                           "(not a fetched catalog image nor an earlier query)"))
        elif ref in stored_ref and stored_ref[ref][1] and ws.store.exists(stored_ref[ref][0],
                                                                          extension_for(stored_ref[ref][1])):
            out.found[ref] = stored_ref[ref]
        else:
            to_fetch.append(ref)
    if to_fetch:
        with Fetcher(FetchSettings.from_config(ws.config.fetch)) as fetcher:
            for res in fetcher.fetch_many(to_fetch, local_roots=local_roots):
                if res.ok and res.data is not None and res.format is not None:
                    out.found[res.url] = (ws.store.put(res.data, extension_for(res.format)), res.format)
                    out.fetched += 1
                else:
                    out.failed[res.url] = (f"query_{res.status}", res.reason or res.status)
    return out
