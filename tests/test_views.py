"""The read layer's small pieces: the one DuckDB connection factory and the one features path."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from visprep.views.db import connect
from visprep.views.features import features_root, store_dir, store_fingerprint
from visprep.workspace import Workspace


def _setting(con, name: str) -> str:
    return con.execute(f"SELECT current_setting('{name}')").fetchall()[0][0]


def test_connect_is_utc_and_applies_what_it_is_given(tmp_path) -> None:
    con = connect()
    assert _setting(con, "TimeZone") == "UTC" and _setting(con, "preserve_insertion_order") is True
    spill = tmp_path / "it's spill"  # a quote in the path must not break the statement
    con = connect(memory_limit="123MB", temp_dir=spill, threads=1, preserve_insertion_order=False)
    assert spill.is_dir() and _setting(con, "temp_directory") == str(spill)
    assert _setting(con, "threads") == 1 and _setting(con, "preserve_insertion_order") is False
    assert _setting(con, "memory_limit").startswith("117.")  # DuckDB reports 123 MB in MiB


def test_workspace_sql_renders_timestamps_in_utc(tmp_path, monkeypatch) -> None:
    """Workspace.sql's connection is `connect()`'s: a tz-aware timestamp cast to text reads in UTC whatever the
    machine's zone (it used DuckDB's default session zone, the machine's: TZ below)."""
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        import duckdb

        assert duckdb.connect().execute("SELECT current_setting('TimeZone')").fetchall() == [("America/New_York",)]
        ws = Workspace(tmp_path)
        t = pa.table({"ts": pa.array([dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC)], pa.timestamp("us", tz="UTC"))})
        got = ws.sql("SELECT CAST(ts AS VARCHAR) AS s FROM t", t=t).column("s").to_pylist()
        assert got == ["2024-01-01 12:00:00+00"]
    finally:
        monkeypatch.undo()
        time.tzset()


def test_one_features_path(tmp_path) -> None:
    ws = Workspace(tmp_path)
    assert features_root(ws) == features_root(tmp_path) == tmp_path / "features"
    assert store_dir(ws, "org/model@v1") == tmp_path / "features" / "org_model@v1"
    assert store_fingerprint(store_dir(ws, "absent")) == store_fingerprint(store_dir(ws, "absent too"))


def test_lazy_reads_take_only_the_named_columns_and_fill_a_missing_one(tmp_path) -> None:
    """`read_columns` and `scan_view` read a table's parts column by column: a part written before a column
    existed reads it as nulls (as `Workspace.read_table` conforms it), and a table never written is empty."""
    import pyarrow.parquet as pq

    from visprep.views.scan import query_arrow, read_columns, scan_view

    ws = Workspace(tmp_path)
    ws.write_part("splits", pa.table({"product_id": ["b"], "group_id": ["g"], "split": ["train"]}), "1")
    pq.write_table(pa.table({"product_id": pa.array(["a"], pa.large_string()), "split": ["test"]}),
                   ws.table_path("splits") / "part-0-old.parquet")  # an older part: no group_id, wider ids
    got = read_columns(ws, "splits", ["product_id", "group_id"])
    assert got.column_names == ["product_id", "group_id"]
    assert sorted(zip(*(got.column(c).to_pylist() for c in got.column_names))) == [("a", None), ("b", "g")]
    assert got.equals(ws.read_table("splits", ["product_id", "group_id"]))
    assert read_columns(ws, "pairs", ["anchor_id"]).num_rows == 0
    con = connect()
    scan_view(con, ws, "splits", ["product_id", "group_id"], name="s")
    scan_view(con, ws, "pairs", ["anchor_id"])
    got = query_arrow(con, "SELECT * FROM s ORDER BY product_id")
    assert got.to_pylist() == [{"product_id": "a", "group_id": None}, {"product_id": "b", "group_id": "g"}]
    assert got.schema.field("product_id").type == pa.string()
    assert query_arrow(con, "SELECT count(*) AS n FROM pairs").to_pylist() == [{"n": 0}]


def test_lazy_scan_casts_an_older_parts_column_to_the_tables_type(tmp_path) -> None:
    """A part that stored a column wider than the schema (position as int64) reads back as the table's type
    (int32), as `Workspace.read_table` conforms it, not as the union of the parts' types."""
    import pyarrow.parquet as pq

    from visprep.views.scan import query_arrow, read_columns, scan_view

    ws = Workspace(tmp_path)
    ws.write_part("product_images", pa.table({"product_id": ["b"], "position": pa.array([0], pa.int32()),
                                              "url": ["u1"]}), "1")
    pq.write_table(pa.table({"product_id": ["a"], "position": pa.array([1], pa.int64()), "url": ["u2"]}),
                   ws.table_path("product_images") / "part-0-old.parquet")
    con = connect()
    scan_view(con, ws, "product_images", ["product_id", "position"], name="pi")
    got = query_arrow(con, "SELECT * FROM pi ORDER BY product_id")
    assert got.schema.field("position").type == pa.int32()
    assert got.to_pylist() == [{"product_id": "a", "position": 1}, {"product_id": "b", "position": 0}]
    assert read_columns(ws, "product_images", ["position"]).schema.field("position").type == pa.int32()


def test_judged_images_queries_with_the_workspace_memory_limit_and_spill_folder(tmp_path, monkeypatch) -> None:
    """The view's DuckDB connection runs under `events.duckdb_memory_limit` and spills under the workspace (it ran
    with DuckDB's default, 80 % of the machine's memory, and nowhere to spill), and still answers."""
    from visprep.config import EventsConfig, load_config, render_config
    from visprep.schema import IMAGES, PRODUCT_IMAGES, PRODUCTS, SPLITS, URLS
    from visprep.views import db
    from visprep.views.images import judged_images

    ws = Workspace(tmp_path)
    cfg = load_config(ws.config_path)
    cfg = cfg.model_copy(update={"events": EventsConfig(**{**cfg.events.model_dump(), "duckdb_memory_limit": "77MB"})})
    ws.config_path.write_text(render_config(cfg), encoding="utf-8")
    ws.set_config(load_config(ws.config_path))
    now = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    for name, row, schema in (
            ("products", {"product_id": "A", "title": "Boots", "category": "Shoes", "top_category": "Shoes"}, PRODUCTS),
            ("product_images", {"product_id": "A", "position": 0, "url": "u", "source": "catalog"}, PRODUCT_IMAGES),
            ("urls", {"url": "u", "status": "ok", "image_id": "i", "fetched_at": now}, URLS),
            ("images", {"image_id": "i", "status": "ok", "width": 300, "height": 300, "blur": 100.0}, IMAGES),
            ("splits", {"product_id": "A", "group_id": "A", "split": "train"}, SPLITS)):
        ws.write_table(name, pa.Table.from_pylist([row], schema=schema))
    seen = {}
    plain = db.connect

    def spy(**kwargs):
        con = plain(**kwargs)
        seen.update(memory_limit=_setting(con, "memory_limit"), temp_directory=_setting(con, "temp_directory"))
        return con

    monkeypatch.setattr(db, "connect", spy)
    got = judged_images(ws)
    assert got.column("image_id").to_pylist() == ["i"] and got.column("floor_reason").to_pylist() == [None]
    assert seen["memory_limit"].startswith("73.")  # DuckDB reports 77 MB in MiB
    assert seen["temp_directory"] == str(ws.root / "tmp" / "duckdb")
