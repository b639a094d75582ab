"""Catalog ingestion: bad rows quarantined with file/line/field/value, re-ingest updates instead of duplicating."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from visprep.catalog.stage import ingest_catalog
from visprep.workspace import Workspace

HEADER = "product_id,title,category,image_urls,price,inventory,brand,season\n"


def _csv(path: Path, rows: list[str], *, raw_tail: bytes = b"") -> Path:
    path.write_bytes((HEADER + "".join(r + "\n" for r in rows)).encode() + raw_tail)
    return path


def _q(ws: Workspace) -> list[dict]:
    return sorted(ws.read_table("quarantine").to_pylist(), key=lambda r: (r["source"] or "", r["line"] or 0))


def test_bad_rows_are_quarantined_with_file_line_field_value(tmp_path: Path) -> None:
    f = _csv(tmp_path / "c.csv", [
        'A1,Red Shirt,Apparel > Tops,"[""a.jpg"",""b.jpg""]",12.50,3,Acme,summer',   # line 2 ok
        ',No Id,Apparel,"[""c.jpg""]",1,1,Acme,',                                     # 3 missing id
        'A3,,Apparel,"[""c.jpg""]",1,1,Acme,',                                         # 4 missing title
        'A4,Boot,Footwear > Boots,[],1,1,Acme,',                                        # 5 empty image list
        'A5,Bag,Accessories,"[""d.jpg""]","12,3x",1,Acme,',                             # 6 bad price
        'A6,Hat,Accessories,"[""e.jpg""]",5,-2,Acme,',                                  # 7 bad inventory
        'A7,Hat,Accessories,ftp://host/e.jpg,5,1,Acme,',                                # 8 bad scheme
        'A8,Dup,Apparel,"[""f.jpg""]",5,1,Acme,',                                       # 9 conflicting dup
        'A8,Dup changed,Apparel,"[""f.jpg""]",6,1,Acme,',                               # 10 conflicting dup
        'A9,Same,Apparel,"[""g.jpg""]",5,1,Acme,',                                      # 11 identical dup
        'A9,Same,Apparel,"[""g.jpg""]",5,1,Acme,',                                      # 12 identical dup
    ], raw_tail=b'A10,Caf\xe9 Mug,Home,"[""h.jpg""]",2,1,Acme,\n')                    # 13 invalid UTF-8
    ws = Workspace(tmp_path / "ws")
    r = ingest_catalog(ws, [f])
    assert r.rows_read == 12
    assert sorted(ws.read_table("products").column("product_id").to_pylist()) == ["A1", "A9"]
    assert r.duplicate_identical == 1
    q = _q(ws)
    got = {(row["line"], row["reason"], row["field"]) for row in q}
    assert got == {
        (3, "missing_product_id", "product_id"), (4, "missing_title", "title"),
        (5, "empty_image_list", "image_urls"), (6, "unparsable_price", "price"),
        (7, "unparsable_inventory", "inventory"), (8, "invalid_image_url", "image_urls"),
        (9, "conflicting_duplicate_sku", "title"), (10, "conflicting_duplicate_sku", "title"),
        (13, "invalid_utf8", "title"),
    }
    by_line = {row["line"]: row for row in q}
    assert by_line[6]["value"] == "12,3x" and by_line[6]["source"] == str(f)
    assert by_line[13]["value"] == "Caf\\xe9 Mug"
    assert by_line[10]["value"] == "Dup changed" and "A8" in by_line[10]["detail"]
    p = {row["product_id"]: row for row in ws.read_table("products").to_pylist()}
    assert p["A1"]["top_category"] == "Apparel" and p["A1"]["category_path"] == ["Apparel", "Tops"]
    assert json.loads(p["A1"]["attributes"]) == {"season": "summer"}
    assert p["A1"]["price"] == 12.5 and p["A1"]["inventory"] == 3
    assert p["A1"]["image_urls"] == [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]


def test_reingest_counts_new_changed_removed_and_never_duplicates(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    f = tmp_path / "c.csv"
    _csv(f, ['A1,One,Apparel,a.jpg,1,1,X,', 'A2,Two,Apparel,b.jpg,1,1,X,', 'A3,Three,Apparel,c.jpg,1,1,X,',
             'A4,Bad,Apparel,[],1,1,X,'])
    r1 = ingest_catalog(ws, [f])
    assert (r1.new, r1.changed, r1.removed, r1.quarantined) == (3, 0, 0, 1)
    _csv(f, ['A1,One,Apparel,a.jpg,1,1,X,', 'A2,Two v2,Apparel,b.jpg,1,1,X,', 'A5,Five,Apparel,e.jpg,1,1,X,'])
    r2 = ingest_catalog(ws, [f])
    assert (r2.new, r2.changed, r2.unchanged, r2.removed) == (1, 1, 1, 1)
    products = ws.read_table("products").to_pylist()
    assert sorted(p["product_id"] for p in products) == ["A1", "A2", "A5"]
    assert {p["product_id"]: p["title"] for p in products}["A2"] == "Two v2"
    images = ws.read_table("product_images").to_pylist()
    assert sorted(i["product_id"] for i in images) == ["A1", "A2", "A5"]
    # The bad row was fixed in the new snapshot, so its quarantine entry is gone (not duplicated).
    assert _q(ws) == []
    r3 = ingest_catalog(ws, [f])
    assert (r3.new, r3.changed, r3.unchanged, r3.removed) == (0, 0, 3, 0)


def test_jsonl_and_parquet_sources(tmp_path: Path) -> None:
    jl = tmp_path / "c.jsonl"
    jl.write_bytes(b"\n".join([
        json.dumps({"product_id": "J1", "title": "Tee", "category": "Apparel", "image_urls": ["a.jpg"],
                    "image_sources": ["catalog"], "color": "red"}).encode(),
        b'{"product_id": "J2", "title": "broken json"',
        b'["not", "an", "object"]',
        b'{"product_id": "J3", "title": "T\xff", "category": "A", "image_urls": ["x.jpg"]}',
        json.dumps({"product_id": "J4", "title": "Syn", "category": "Apparel", "image_urls": ["a.jpg", "b.jpg"],
                    "image_sources": ["catalog", "robot"]}).encode(),
    ]) + b"\n")
    pqf = tmp_path / "c.parquet"
    pq.write_table(pa.table({"product_id": ["P1", "P2"], "title": ["Bag", "Shoe"],
                             "category": ["Accessories > Bags", "Footwear"],
                             "image_urls": [["s3://bucket/p1.jpg", "https://example.com/p1b.jpg"], []],
                             "price": [10.0, 3.0]}), pqf)
    ws = Workspace(tmp_path / "ws")
    r = ingest_catalog(ws, [jl, pqf])
    assert sorted(ws.read_table("products").column("product_id").to_pylist()) == ["J1", "P1"]
    reasons = {(Path(row["source"]).name, row["line"], row["reason"]) for row in _q(ws)}
    assert reasons == {("c.jsonl", 2, "invalid_json"), ("c.jsonl", 3, "not_an_object"),
                       ("c.jsonl", 4, "invalid_utf8"), ("c.jsonl", 5, "invalid_image_sources"),
                       ("c.parquet", 2, "empty_image_list")}
    assert r.quarantined == 5
    imgs = {i["url"]: i for i in ws.read_table("product_images").to_pylist()}
    assert imgs["s3://bucket/p1.jpg"]["position"] == 0 and imgs["https://example.com/p1b.jpg"]["position"] == 1


def test_unknown_format_and_missing_file_raise(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    bad = tmp_path / "c.xml"
    bad.write_text("<x/>")
    with pytest.raises(ValueError, match="unsupported catalog format '.xml'"):
        ingest_catalog(ws, [bad])
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        ingest_catalog(ws, [tmp_path / "nope.csv"])


def test_tables_come_out_in_product_order_without_a_copy_when_the_file_is_in_order(tmp_path: Path) -> None:
    """The products and product_images tables are in (product, position) order whatever the file's order; a table
    already in that order is kept as it is (no sorted copy: at 1M products a copy is hundreds of MiB)."""
    from visprep.catalog.stage import _sorted

    ws = Workspace(tmp_path / "ws")
    f = _csv(tmp_path / "c.csv", ['B2,Shirt two,Apparel,"[""b1.jpg"",""b2.jpg""]",1,1,Acme,',
                                  'A1,Shirt one,Apparel,"[""a1.jpg""]",1,1,Acme,',
                                  'A10,Shirt ten,Apparel,"[""c1.jpg"",""c2.jpg""]",1,1,Acme,'])
    ingest_catalog(ws, [f])
    assert ws.read_table("products").column("product_id").to_pylist() == ["A1", "A10", "B2"]
    images = ws.read_table("product_images")
    assert list(zip(images.column("product_id").to_pylist(), images.column("position").to_pylist())) == [
        ("A1", 0), ("A10", 0), ("A10", 1), ("B2", 0), ("B2", 1)]
    in_order = pa.table({"product_id": ["a", "a", "b"], "position": [0, 1, 0]})
    assert _sorted(in_order, ["product_id", "position"]) is in_order
    shuffled = pa.table({"product_id": ["a", "b", "a"], "position": [1, 0, 0]})
    assert _sorted(shuffled, ["product_id", "position"]).to_pylist() == in_order.to_pylist()
    tie_broken_by_position = pa.table({"product_id": ["a", "a"], "position": [1, 0]})
    assert _sorted(tie_broken_by_position, ["product_id", "position"]).column("position").to_pylist() == [0, 1]
