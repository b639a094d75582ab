"""Golden test of the demo pipeline: every table a small demo workspace ends with, compared with a stored snapshot.

The workspace (`build_workspace`): 40 demo products from the bundled Fashion-MNIST subset and OpenCV photos (no
download; two rows given a wrong category for the label-noise check to flag), `visprep run` over them (catalog,
fetch, inspect, embed, dedup, split, synth, quality, pairs, mine, sample, export), then 16 user photos through the
queries stage (garments of the subset the catalog does not use, degraded as phone uploads) and simulated searches on
the catalog's products through the events stage, then `visprep run` again, so mix, shift, popularity and the
skip-above miner apply and everything downstream of them reruns. 10-20 s on 2 cores.

Every table under `tables/` and each export split's manifest and samples (`shards/<split>/manifest`, one row per
shard; `shards/<split>/samples`, key, metadata and positives of each sample; JPEG bytes are not compared) are
canonicalised: columns in `VOLATILE` dropped (run ids, wall-clock times; `row_hash` hashes the catalog row with its
absolute image paths), the temporary root spelled `<ROOT>`, durations (`ms`) dropped from JSON text, floats rounded
to `DECIMALS`, rows sorted by their JSON text. The golden (tests/golden/pipeline.json.gz) holds per table the
columns, the row count, the sha256 of the canonical rows, and the rows themselves, so a failure names the rows.

Regenerate ONLY for a deliberate behaviour change, and name that change in the commit message:

    PYTHONPATH=src python tests/golden/make_golden.py

History: captured at 5948948 (before the one-writer redesign) and regenerated once, after it, for the changes the
redesign made on purpose, each checked against the captured golden table by table (every other table equal):
`duplicate_edges` and `product_groups` no longer hold synth's colour variants (dedup reads the real catalog; a
variant takes its source's group through `all_splits`, as the split gave it before); `label_issues` checks the real
catalog only (a variant in another cross-validation fold than its near-identical source leaked the label), and
`quality.policy` reaches a flagged product's variants through their source; so `pairs` and the shards' positives
differ only in the weights of pairs of products whose flag changed (same pairs, same keys).

Determinism evidence (2026-12-07, 2 cores): two runs, and a run with one thread everywhere (OMP_NUM_THREADS=1,
`[embed] threads = 1`, `[mining] threads = 1`, `[events] threads = 1`), gave identical canonical rows in every table
at 12 decimals once `row_hash` (path-dependent) was dropped. Other machines (CI: same OS and Python, maybe another
CPU) may run other SIMD kernels in ONNX Runtime and FAISS, so embedding-derived floats may move by ~1e-6: the
sha256 is the fast path, and a table whose sha256 differs is compared row by row, floats within `TOLERANCE`
(2 units of the last kept decimal, so a value that rounds the other way at a boundary passes; `domain_shift`'s
cross-validated AUC gets 0.01, one rank swap of 37 x 14 images). Negatives are compared by miner (`_negatives`):
exact rows for the seeded miners, and for `ann` exact counts per split plus a bounded Jaccard difference of the
(anchor, negative) pairs, because an ANN band over near-tied cosines (views and colour variants of one garment)
may swap members on another CPU while a changed miner, guard or band moves far more than `ANN_MIN_JACCARD` allows.

Layout changes of the one-writer redesign are accepted through `LAYOUT`: a golden table is compared with
the union of the tables (and views) that hold its rows now; a source that does not exist yet is skipped (a view
until the table it derives from exists) and a golden table none of whose sources exists is read under its own
name, so the same mapping works before and after. The workspace builder reads products and images through the
same mapping, so its events do not depend on the layout either. Tables new since the golden are reported (a warning), not failed; a golden table
missing now fails. Config keys live in `CONFIG` only: when keys move ([quality] shift_* to [shift], popularity and
mix keys to [popularity] and [mix]), update `CONFIG` and nothing else.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import importlib
import json
import math
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from visprep.demo import load_fashion_mnist_subset
from visprep.demo.sources import write_demo_sources
from visprep.events.simulate import SimConfig, simulate
from visprep.events.stage import ingest_event_files
from visprep.pipeline import run_pipeline
from visprep.quality.shift import simulate_upload
from visprep.queries.stage import queries_stage
from visprep.schema import TABLES
from visprep.workspace import Workspace

GOLDEN = Path(__file__).parent / "golden" / "pipeline.json.gz"
N_PRODUCTS = 40
N_USER_PHOTOS = 16
SEED = 3

# The workspace's whole configuration, in the keys the code reads today: the one place to edit when config keys
# move. Values keep the run small (64 px embeddings, one synthetic view per recipe kind, 40-sample shards) and let
# every stage do real work on 40 products (label noise checks classes of 4+ products with 3 folds, and pairs and
# the mix down-weight what it flags; the shift classifier uses 4 folds; the queries stage keeps the degraded uploads
# and skips the NSFW model).
CONFIG = """\
[inspect]
workers = 2
batch_size = 32

[embed]
options = { profile = "imagenet-64" }

[synthetic]
backgrounds = ["texture"]
reframe_scales = [0.8]
hue_shifts_deg = [180.0]

[quality]
min_class_size = 4
folds = 3
policy = "down_weight"

[shift]
folds = 4

[mix]
fraction = 0.3

[queries]
nsfw = "none"
blur_threshold = 5.0

[export]
max_count = 40
"""

# Golden (old layout) table -> where its rows are now: the union of these tables, and of "module:function" views
# taking the workspace. A view applies only where the table VIEW_NEEDS names exists (its module may land before its
# tables); where no source applies, the golden table's own name is read. The one-writer redesign moved synth's rows out of the
# catalog's tables into its own (same schemas) and derives its URL rows from a view; agent C's work in progress
# (visprep.views.catalog) also derives the colour variants' split rows (`all_splits`, which includes `splits`).
# Before those changes the synthetic_* tables are absent and each golden table is itself.
LAYOUT: dict[str, tuple[str, ...]] = {
    "products": ("products", "synthetic_products"),
    "product_images": ("product_images", "synthetic_product_images"),
    "images": ("images", "synthetic_images"),
    "urls": ("urls", "visprep.views.catalog:synthetic_urls"),
    "splits": ("visprep.views.catalog:all_splits",),
}
VIEW_NEEDS = {"visprep.views.catalog:synthetic_urls": "synthetic_images",
              "visprep.views.catalog:all_splits": "synthetic_products"}

# Columns that say when or in which run a row was made, or that hash absolute paths, not what the row holds.
VOLATILE = {"run_id", "ts", "fetched_at", "updated_run", "row_hash"}
# Keys dropped from JSON text cells: per-step durations of the queries stage.
VOLATILE_JSON_KEYS = {"ms"}
DECIMALS = 4
TOLERANCE = 2 * 10 ** -DECIMALS
TOLERANCE_BY_TABLE = {"domain_shift": 0.01}
ANN_MIN_JACCARD = 0.95
ANN_SCORE_TOLERANCE = 1e-3
SHOW = 5  # differences shown per table


# --- the workspace -------------------------------------------------------------------------------------------


def _user_photos(dest: Path, n: int) -> list[Path]:
    """Phone-upload-like JPEGs of Fashion-MNIST garments the catalog does not use (the subset's last images)."""
    subset = load_fashion_mnist_subset()
    rng = np.random.default_rng(SEED)
    dest.mkdir(parents=True)
    out = []
    for k in range(n):
        big = cv2.resize(255 - subset.images[len(subset) - 1 - k], (336, 336), interpolation=cv2.INTER_CUBIC)
        rgb = np.stack([big, (big * 0.8).astype(np.uint8), (big * 0.6).astype(np.uint8)], axis=-1)
        path = dest / f"photo_{k:02d}.jpg"
        path.write_bytes(simulate_upload(rgb, rng))
        out.append(path)
    return out


def _events(ws: Workspace, dest: Path) -> Path:
    """Simulated searches on the catalog's products; two queries in three search with an accepted upload (the
    user-photo mix and shift read those), the third with a catalog photo (skip-above negatives anchor on those)."""
    ev, world = simulate(SimConfig(seed=SEED, products=30, queries=12, users=40, searches=300, days=2))
    # Products and images through LAYOUT, so the events are the same whichever tables hold synth's rows.
    catalog = sorted(p for t in parts_now(ws, "products") for p in t.column("product_id").to_pylist())
    photos = sorted(r["image_id"] for r in ws.read_table("queries").to_pylist() if r["status"] == "accepted")
    images = sorted(r["image_id"] for t in parts_now(ws, "images") for r in t.to_pylist() if r["status"] == "ok")
    pid = {str(p): catalog[i % len(catalog)] for i, p in enumerate(world.product_ids)}
    qids = sorted({q for q in ev.column("query_id").to_pylist() if q is not None})
    photo = {f"img-{q}": images[(7 * i) % len(images)] if i % 3 == 2 else photos[i % len(photos)]
             for i, q in enumerate(qids)}
    ev = ev.set_column(ev.schema.get_field_index("product_id"), "product_id",
                       pa.array([None if p is None else pid[p] for p in ev.column("product_id").to_pylist()],
                                pa.string()))
    ev = ev.set_column(ev.schema.get_field_index("query_image_id"), "query_image_id",
                       pa.array([None if q is None else photo[q] for q in ev.column("query_image_id").to_pylist()],
                                pa.string()))
    path = dest / "events.parquet"
    pq.write_table(ev, path)
    return path


# Catalog rows given another top-level category (label noise for the quality stage to find): id -> (old, new).
MISLABELLED = {b"KST-SNK-00010-OLV": (b"Footwear > Sneakers", b"Apparel > Tops > T-shirts"),
               b"OAK-TSH-00013-CHA": (b"Apparel > Tops > T-shirts", b"Footwear > Sneakers")}


def _mislabel(csv_path: Path) -> None:
    """Swap the categories of the `MISLABELLED` rows of the demo's CSV (bytes: one row is not valid UTF-8)."""
    lines = csv_path.read_bytes().split(b"\n")
    for k, line in enumerate(lines):
        for product_id, (old, new) in MISLABELLED.items():
            if line.startswith(product_id + b","):
                assert old in line, (product_id, line)
                lines[k] = line.replace(old, new, 1)
    csv_path.write_bytes(b"\n".join(lines))


def build_workspace(root: Path, config: str = CONFIG) -> Workspace:
    """Build the golden workspace under `root` (empty or absent): demo catalog (two rows mislabelled) and `visprep
    run`, then user photos (queries stage) and events (events stage), then `visprep run` again so mix, shift and
    popularity apply."""
    root.mkdir(parents=True, exist_ok=True)
    ws = Workspace(root / "ws")
    ws.root.mkdir()
    ws.config_path.write_text(config, encoding="utf-8")
    src = write_demo_sources(root / "src", n_products=N_PRODUCTS, seed=SEED)
    _mislabel(src.catalog_files[0])
    run_pipeline(ws, src.catalog_files)
    queries_stage(ws, _user_photos(root / "photos", N_USER_PHOTOS))
    ingest_event_files(ws, [_events(ws, root)])
    run_pipeline(ws)
    return ws


# --- canonical form ------------------------------------------------------------------------------------------


def _canon(value: object, root: str) -> object:
    """A JSON-able, run-independent form of one cell: floats rounded, the temporary root spelled <ROOT>, JSON text
    re-serialised with sorted keys and without durations."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        r = round(value, DECIMALS)
        return 0.0 if r == 0 else r
    if isinstance(value, str):
        value = value.replace(root, "<ROOT>")
        if value[:1] in ("[", "{"):
            try:
                parsed = json.loads(value)
            except ValueError:
                return value
            return json.dumps(_canon_json(parsed, root), sort_keys=True)
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (list, tuple)):
        return [_canon(v, root) for v in value]
    if isinstance(value, dict):
        return {k: _canon(v, root) for k, v in sorted(value.items())}
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    return value


def _canon_json(value: object, root: str) -> object:
    if isinstance(value, dict):
        return {k: _canon_json(v, root) for k, v in sorted(value.items()) if k not in VOLATILE_JSON_KEYS}
    if isinstance(value, list):
        return [_canon_json(v, root) for v in value]
    return _canon(value, root)


def _row_text(row: list) -> str:
    return json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _digest(rows: list[list]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(_row_text(r).encode("utf-8") + b"\n")
    return h.hexdigest()


def _shard_tables(ws: Workspace) -> dict[str, pa.Table]:
    """Each export split as two tables: its manifest's shards (sizes and hashes left out: JPEG bytes are not the
    contract) and its samples (key, metadata and positives read from the tars)."""
    from visprep.export.loader import iter_tar_samples
    from visprep.export.manifest import read_manifest

    out: dict[str, pa.Table] = {}
    if not ws.shards_dir.exists():
        return out
    for split_dir in sorted(d for d in ws.shards_dir.iterdir() if (d / "manifest.json").exists()):
        m = read_manifest(split_dir)
        out[f"shards/{m.split}/manifest"] = pa.Table.from_pylist(
            [{"split": m.split, "complete": m.complete, "total_samples": m.total_samples, "max_count": m.max_count,
              "name": s.name, "index": s.index, "count": s.count, "first_key": s.first_key,
              "last_key": s.last_key, "first_sample": s.first_sample} for s in m.shards])
        out[f"shards/{m.split}/samples"] = pa.Table.from_pylist(
            [{"key": key, "shard": s.index, "json": members["json"].decode("utf-8"),
              "positives": members["positives.json"].decode("utf-8")}
             for s in m.shards for key, members in iter_tar_samples(split_dir / s.name)])
    return out


def _present(ws: Workspace) -> set[str]:
    return {p.name[: -len(".parquet")] for p in ws.tables_dir.glob("*.parquet")} if ws.tables_dir.exists() else set()


def _read(ws: Workspace, name: str) -> pa.Table:
    # A table this code version has no schema for (a new one) is read as it is on disk.
    return ws.read_table(name) if name in TABLES else pq.read_table(ws.tables_dir / f"{name}.parquet")


def _view(spec: str) -> Callable[[Workspace], pa.Table] | None:
    module, _, function = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError):
        return None


def parts_now(ws: Workspace, name: str, present: set[str] | None = None) -> list[pa.Table]:
    """The parts whose union holds golden table `name`'s rows in this workspace (`LAYOUT`); [] when none exists."""
    present = _present(ws) if present is None else present
    parts = []
    for source in LAYOUT.get(name, (name,)):
        if ":" in source:
            fn = _view(source)
            if fn is not None and VIEW_NEEDS[source] in present:
                parts.append(fn(ws))
        elif source in present:
            parts.append(_read(ws, source))
    return parts or ([_read(ws, name)] if name in present else [])


def gather(ws: Workspace) -> dict[str, list[pa.Table]]:
    """The workspace's tables under their golden (old layout) names, each as the parts `LAYOUT` unions, plus the
    export's shard tables; a table no golden name covers is under its own name."""
    present = _present(ws)
    used = {s for sources in LAYOUT.values() for s in sources}
    groups = {name: parts_now(ws, name, present) for name in sorted(set(LAYOUT) | (present - used))}
    groups = {name: parts for name, parts in groups.items() if parts}
    groups.update({name: [t] for name, t in _shard_tables(ws).items()})
    return groups


def canonical(parts: list[pa.Table], root: str, columns: list[str] | None = None) -> tuple[list[str], list[list]]:
    """(columns, sorted canonical rows) of the union of `parts`; `columns` default: the first part's non-volatile
    columns. A part lacking one of `columns` raises KeyError naming it."""
    if columns is None:
        columns = [c for c in parts[0].column_names if c not in VOLATILE]
    rows: list[list] = []
    for part in parts:
        missing = [c for c in columns if c not in part.column_names]
        if missing:
            raise KeyError(f"columns {missing} missing from a part with columns {part.column_names}")
        rows.extend([_canon(r[c], root) for c in columns] for r in part.select(columns).to_pylist())
    rows.sort(key=_row_text)
    return columns, rows


def snapshot(ws: Workspace, root: Path) -> dict[str, dict]:
    """The golden form of every table of `ws`: columns, row count, sha256 of the canonical rows, and the rows."""
    groups = gather(ws)
    out = {}
    for name, parts in sorted(groups.items()):
        columns, rows = canonical(parts, str(root))
        out[name] = {"columns": columns, "count": len(rows), "sha256": _digest(rows), "rows": rows}
    return out


# --- comparison ----------------------------------------------------------------------------------------------


def _float_columns(*row_sets: list[list]) -> set[int]:
    return {i for rows in row_sets for r in rows for i, v in enumerate(r) if isinstance(v, float)}


def compare_rows(want: list[list], got: list[list], columns: list[str], tol: float) -> list[str]:
    """Differences between two canonical row lists: rows only one side has (matched on every non-float cell) and
    floats further apart than `tol`; empty when they agree."""
    floats = sorted(_float_columns(want, got))

    def split(rows: list[list]) -> dict[str, list[list]]:
        by_key: dict[str, list[list]] = defaultdict(list)
        for r in rows:
            by_key[_row_text([None if i in floats else v for i, v in enumerate(r)])].append(r)
        return by_key

    w, g = split(want), split(got)
    problems, gone, new = [], [], []
    for key in sorted(set(w) | set(g)):
        a = sorted(w.get(key, []), key=_row_text)
        b = sorted(g.get(key, []), key=_row_text)
        for ra, rb in zip(a, b):
            off = [columns[i] for i in floats
                   if not (isinstance(ra[i], float) and isinstance(rb[i], float) and abs(ra[i] - rb[i]) <= tol)
                   and ra[i] != rb[i]]
            if off:
                problems.append(f"  {off} differ: golden {ra} / now {rb}")
        gone += a[len(b):]
        new += b[len(a):]
    # A row on both sides with the same first cell (usually its id) but other content is shown as one change.
    by_first = defaultdict(list)
    for r in new:
        by_first[_row_text(r[:1])].append(r)
    for r in gone:
        twins = by_first.get(_row_text(r[:1]))
        if twins:
            t = twins.pop(0)
            changed = {c: (x, y) for c, x, y in zip(columns, r, t) if x != y}
            problems.append(f"  row {columns[0]}={r[0]!r} changed (golden, now): {changed}")
        else:
            problems.append(f"  only in golden: {r}")
    problems += [f"  only now: {r}" for rows in by_first.values() for r in rows]
    return problems


def _negatives(want: list[list], got: list[list], columns: list[str]) -> list[str]:
    """Negatives by miner: row counts per (kind, split) exactly; seeded miners' rows exactly; the ann miner's
    (anchor, negative) pairs with a Jaccard index of at least ANN_MIN_JACCARD and their scores close."""
    kind, split = columns.index("kind"), columns.index("split")
    anchor, negative, score = columns.index("anchor_id"), columns.index("negative_id"), columns.index("score")
    problems = []
    cw, cg = Counter((r[kind], r[split]) for r in want), Counter((r[kind], r[split]) for r in got)
    if cw != cg:
        problems.append(f"  rows per (kind, split): golden {dict(cw)} / now {dict(cg)}")
    problems += compare_rows([r for r in want if r[kind] != "ann"], [r for r in got if r[kind] != "ann"],
                             columns, TOLERANCE)
    aw = {(r[anchor], r[negative]): r[score] for r in want if r[kind] == "ann"}
    ag = {(r[anchor], r[negative]): r[score] for r in got if r[kind] == "ann"}
    union = set(aw) | set(ag)
    jaccard = len(set(aw) & set(ag)) / len(union) if union else 1.0
    if jaccard < ANN_MIN_JACCARD:
        problems.append(f"  ann (anchor, negative) pairs: Jaccard {jaccard:.3f} < {ANN_MIN_JACCARD}; only in "
                        f"golden e.g. {sorted(set(aw) - set(ag))[:SHOW]}, only now e.g. {sorted(set(ag) - set(aw))[:SHOW]}")
    far = [(k, aw[k], ag[k]) for k in sorted(set(aw) & set(ag))
           if not (isinstance(aw[k], float) and isinstance(ag[k], float) and abs(aw[k] - ag[k]) <= ANN_SCORE_TOLERANCE)
           and aw[k] != ag[k]]
    problems += [f"  ann score of {k}: golden {a} / now {b}" for k, a, b in far]
    return problems


def compare_table(name: str, want: dict, parts: list[pa.Table], root: str) -> tuple[list[str], list[str]]:
    """(problems, notes) of table `name` now against its golden entry."""
    now_columns = [c for c in parts[0].column_names if c not in VOLATILE]
    missing = [c for c in want["columns"] if c not in now_columns]
    if missing:
        return [f"  columns {missing} missing (now {now_columns})"], []
    notes = [f"{name}: new columns {extra} (not compared)"
             for extra in [[c for c in now_columns if c not in want["columns"]]] if extra]
    columns, rows = canonical(parts, root, want["columns"])
    if _digest(rows) == want["sha256"]:
        return [], notes
    if name == "negatives":
        return _negatives(want["rows"], rows, columns), notes
    problems = compare_rows(want["rows"], rows, columns, TOLERANCE_BY_TABLE.get(name, TOLERANCE))
    if len(rows) != want["count"]:
        problems.insert(0, f"  {want['count']} rows in the golden, {len(rows)} now")
    return problems, notes


def load_golden(path: Path = GOLDEN) -> dict:
    """The stored golden: {"decimals": ..., "tables": {name: {columns, count, sha256, rows}}}."""
    return json.loads(gzip.decompress(path.read_bytes()))


def write_golden(tables: dict[str, dict], path: Path = GOLDEN) -> None:
    """Store `tables` (from `snapshot`) as the golden; gzip without a timestamp so equal content is equal bytes."""
    text = json.dumps({"decimals": DECIMALS, "tables": tables}, sort_keys=True, ensure_ascii=False)
    path.write_bytes(gzip.compress(text.encode("utf-8"), mtime=0))


# --- the test ------------------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_pipeline_tables_match_the_golden(tmp_path: Path) -> None:
    golden = load_golden()
    assert golden["decimals"] == DECIMALS, "the golden was written with other rounding: regenerate it"
    root = tmp_path / "golden"
    ws = build_workspace(root)
    groups = gather(ws)
    failures, notes = [], []
    for name, want in sorted(golden["tables"].items()):
        if name not in groups:
            failures.append(f"{name}: in the golden, absent now")
            continue
        problems, table_notes = compare_table(name, want, groups[name], str(root))
        notes += table_notes
        if problems:
            failures.append(f"{name}: {len(problems)} difference(s), first {min(SHOW, len(problems))}:\n"
                            + "\n".join(problems[:SHOW]))
    new = sorted(set(groups) - set(golden["tables"]))
    if new:
        notes.append(f"tables new since the golden (not compared): {new}")
    for note in notes:
        warnings.warn(note, stacklevel=1)
    assert not failures, "pipeline output differs from tests/golden/pipeline.json.gz (regenerate only for a " \
                         "deliberate behaviour change, see this module's docstring):\n" + "\n".join(failures)


def test_comparison_fails_on_changed_rows_and_tolerates_rounding() -> None:
    cols = ["id", "x"]
    want = [["a", 0.1234], ["b", 0.5]]
    assert compare_rows(want, [["a", 0.1235], ["b", 0.5]], cols, TOLERANCE) == []
    assert compare_rows(want, [["a", 0.125], ["b", 0.5]], cols, TOLERANCE)
    assert compare_rows(want, [["a", 0.1234]], cols, TOLERANCE) == ["  only in golden: ['b', 0.5]"]
    assert compare_rows([["a", "x"]], [["a", "y"]], ["id", "v"], TOLERANCE) == [
        "  row id='a' changed (golden, now): {'v': ('x', 'y')}"]
    neg_cols = ["anchor_id", "negative_id", "kind", "score", "rank", "anchor_product_id", "negative_product_id",
                "split"]
    ann = [[f"i{k}", f"n{k}", "ann", 0.5, 1, "p", "q", "train"] for k in range(40)]
    seeded = [["i0", "r0", "random", None, None, "p", "q", "train"]]
    assert _negatives(ann + seeded, ann + seeded, neg_cols) == []
    swapped = ann[:-1] + [["i39", "m39", "ann", 0.5, 1, "p", "q", "train"]]
    assert _negatives(ann + seeded, swapped + seeded, neg_cols) == []  # one tie swapped: Jaccard 39/41 = 0.95
    moved = ann[:-4] + [[f"i{k}", f"m{k}", "ann", 0.5, 1, "p", "q", "train"] for k in range(36, 40)]
    assert any("Jaccard" in p for p in _negatives(ann + seeded, moved + seeded, neg_cols))
    assert _negatives(ann + seeded, ann, neg_cols)  # a seeded miner's row gone
