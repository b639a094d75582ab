"""`Workspace.write_table_if_changed`: the stored table is compared a batch at a time, never read whole."""

from __future__ import annotations

import pyarrow as pa
import pytest

from visprep import workspace
from visprep.workspace import Workspace


def _splits(n: int, *, changed_at: int | None = None) -> pa.Table:
    split = ["test" if i == changed_at else "train" for i in range(n)]
    return pa.table({"product_id": [f"p{i:03d}" for i in range(n)], "group_id": [f"g{i:03d}" for i in range(n)],
                     "split": split})


def _two_parts(ws: Workspace) -> None:
    ws.write_part("splits", _splits(10).slice(0, 4), "0")
    ws.write_part("splits", _splits(10).slice(4), "1")


def _never_whole(*args: object, **kwargs: object) -> pa.Table:
    raise AssertionError("the stored table was read whole")


@pytest.mark.parametrize(("new", "written"), [
    (_splits(10), False), (_splits(10, changed_at=8), True), (_splits(10, changed_at=1), True),
    (_splits(11), True), (_splits(9), True)])
def test_the_stored_table_is_compared_a_batch_at_a_time(tmp_path, monkeypatch, new: pa.Table, written: bool) -> None:
    """Over two parts and several batches each: the same rows keep the stored files (and the fingerprint); a row
    changed in the first or a later part, or one row more or fewer, rewrite it. `read_table` is never called."""
    ws = Workspace(tmp_path)
    _two_parts(ws)
    before = ws.table_fingerprint("splits")
    with monkeypatch.context() as m:
        m.setattr(Workspace, "read_table", _never_whole)
        m.setattr(workspace, "_COMPARE_BATCH", 3)
        assert ws.write_table_if_changed("splits", new) is written
    assert (ws.table_fingerprint("splits") == before) is not written
    assert ws.read_table("splits").to_pylist() == (new if written else _splits(10)).to_pylist()


@pytest.mark.parametrize("group_ids", [None, [f"g{i:03d}" for i in range(5)]])
def test_an_older_part_without_a_column_compares_as_nulls(tmp_path, monkeypatch, group_ids) -> None:
    """A part written before a column existed reads it as nulls, as `read_table` conforms it (without reading the
    table whole): equal to a table whose column is null, different from one that fills it."""
    import pyarrow.parquet as pq

    ws = Workspace(tmp_path)
    ws.table_path("splits").mkdir(parents=True)
    pq.write_table(pa.table({"product_id": [f"p{i:03d}" for i in range(5)], "split": ["train"] * 5}),
                   ws.table_path("splits") / "part-0-old.parquet")
    new = pa.table({"product_id": [f"p{i:03d}" for i in range(5)], "group_id": pa.array(group_ids, pa.string())
                    if group_ids else pa.nulls(5, pa.string()), "split": ["train"] * 5})
    monkeypatch.setattr(Workspace, "read_table", _never_whole)
    assert ws.write_table_if_changed("splits", new) is (group_ids is not None)


def test_a_part_is_conformed_a_row_group_at_a_time_and_laid_out_as_whole(tmp_path, monkeypatch) -> None:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from visprep.schema import schema_for

    monkeypatch.setattr(workspace, "ROW_GROUP_ROWS", 3)
    casts: list[int] = []
    real = workspace.conform

    def counting(table: pa.Table, schema: pa.Schema) -> pa.Table:
        casts.append(table.num_rows)
        return real(table, schema)

    monkeypatch.setattr(workspace, "conform", counting)
    rows = _splits(10)
    # The split column dictionary-encoded, as mine hands its rows over: the writer decodes it slice by slice.
    encoded = rows.set_column(2, "split", pc.dictionary_encode(rows.column("split")))
    path = Workspace(tmp_path).write_part("splits", encoded, "0")
    assert casts == [3, 3, 3, 1]
    whole = real(rows, schema_for("splits"))
    assert pq.read_table(path).equals(whole)
    reference = tmp_path / "reference.parquet"
    pq.write_table(whole, reference, compression="zstd", row_group_size=3)
    assert path.read_bytes() == reference.read_bytes()
