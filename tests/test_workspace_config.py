"""Workspace table I/O, run records and the typed config; the CLI's init/status round trip."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from visprep.cli import app
from visprep.config import VisprepConfig, load_config, render_config
from visprep.split.stage import assign_split
from visprep.workspace import Workspace


def test_rendered_config_lists_every_option_and_round_trips(tmp_path: Path) -> None:
    text = render_config(VisprepConfig())
    data = tomllib.loads(text)
    for section, field in VisprepConfig.model_fields.items():
        model = field.annotation
        for name, opt in model.model_fields.items():
            assert opt.description and opt.description in text
            if getattr(VisprepConfig(), section).model_dump()[name] is not None:
                assert name in data[section], (section, name)
    assert VisprepConfig.model_validate(data) == VisprepConfig()


@pytest.mark.parametrize(("toml", "needle"), [
    ("[fetch]\nconcurency = 3\n", "fetch.concurency"),
    ("[fetch]\nconcurrency = 0\n", "fetch.concurrency = 0"),
    ('[fetch]\nallow_private = "yes"\n', "fetch.allow_private = 'yes'"),  # strict: not read as true
    ("[fetch]\ntimeout_s = inf\n", "fetch.timeout_s = inf"),
    ("[split]\nfractions = { train = 0.5, eval = 0.2 }\n", "sum to 1"),
    ("[nosuch]\nx = 1\n", "nosuch"),
    ("[fetch\n", "not valid TOML"),
])
def test_bad_config_names_the_key_and_value(tmp_path: Path, toml: str, needle: str) -> None:
    path = tmp_path / "visprep.toml"
    path.write_text(toml)
    with pytest.raises(ValueError, match="visprep.toml") as exc:
        load_config(path)
    assert needle in str(exc.value)


def test_tables_parts_and_atomic_replace(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    assert ws.read_table("pairs").num_rows == 0
    t = pa.table({"anchor_id": ["a", "b"], "kind": ["same_product"] * 2})
    ws.write_table("pairs", t)
    assert pq.read_table(ws.table_path("pairs")).num_rows == 2  # readable by plain pyarrow
    ws.write_part("pairs", t, "x1")  # a file table becomes a folder of parts, keeping its rows
    assert ws.read_table("pairs").num_rows == 4 and ws.part_count("pairs") == 2
    assert pq.read_table(ws.table_path("pairs")).num_rows == 4
    ws.write_table("pairs", t)
    assert ws.read_table("pairs").num_rows == 2 and ws.part_count("pairs") == 1
    assert not [p for p in ws.tables_dir.rglob("*") if p.name.endswith(".tmp")]
    with pytest.raises(ValueError, match="missing required column 'anchor_id'"):
        ws.write_table("pairs", pa.table({"kind": ["x"]}))
    with pytest.raises(ValueError, match="unknown table 'nope'"):
        ws.read_table("nope")


def test_run_record_written_even_when_a_stage_fails(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    with pytest.raises(RuntimeError):
        with ws.run("pairs", {"pairs": {"x": 1}}) as run:
            run.counts = {"in": 3}
            raise RuntimeError("boom")
    (record,) = ws.runs()
    assert record["status"] == "failed" and "boom" in record["notes"][0]
    assert record["counts"] == {"in": 3} and record["seconds"] is not None and record["version"]


def test_split_is_deterministic_and_close_to_fractions() -> None:
    fr = {"train": 0.8, "eval": 0.2}
    names = [assign_split(f"g{i}", fr, seed=1) for i in range(20_000)]
    assert names == [assign_split(f"g{i}", fr, seed=1) for i in range(20_000)]
    assert abs(names.count("eval") / len(names) - 0.2) < 0.015
    assert names != [assign_split(f"g{i}", fr, seed=2) for i in range(20_000)]


def test_cli_init_catalog_status(tmp_path: Path) -> None:
    runner = CliRunner()
    ws_dir = tmp_path / "ws"
    res = runner.invoke(app, ["init", "-w", str(ws_dir)])
    assert res.exit_code == 0, res.output
    assert load_config(ws_dir / "visprep.toml") == VisprepConfig()
    cat = tmp_path / "c.csv"
    cat.write_text('product_id,title,category,image_urls\nA,Tee,Apparel,a.jpg\nB,,Apparel,b.jpg\n')
    res = runner.invoke(app, ["catalog", "-w", str(ws_dir), str(cat)])
    assert res.exit_code == 0 and "quarantined 1" in res.output, res.output
    res = runner.invoke(app, ["status", "-w", str(ws_dir), "--json"])
    assert res.exit_code == 0, res.output
    status = json.loads(res.output)
    assert status["tables"]["products"] == 1
    assert status["quarantine"] == [{"stage": "catalog", "reason": "missing_title", "count": 1}]
    assert status["last_runs"]["catalog"]["counts"]["new"] == 1
    (ws_dir / "visprep.toml").write_text("[fetch]\nbogus = 1\n")
    res = runner.invoke(app, ["status", "-w", str(ws_dir)])
    assert res.exit_code == 2 and "fetch.bogus" in res.output


def test_cli_demo_runs_and_reruns_incrementally(tmp_path: Path) -> None:
    runner = CliRunner()
    ws_dir = tmp_path / "demo"
    first = runner.invoke(app, ["demo", "-w", str(ws_dir), "--products", "30", "--no-evaluate"])
    assert first.exit_code == 0, first.output
    assert "quarantined" in first.output and "shards" in first.output
    (tmp_path / "keep.txt").write_text("not ours")
    again = runner.invoke(app, ["demo", "-w", str(ws_dir), "--products", "30", "--no-evaluate"])
    assert again.exit_code == 0 and "reusing demo sources" in again.output, again.output
    runs = Workspace(ws_dir).runs()
    exports = [r for r in runs if r["stage"] == "export"]
    assert len(exports) == 1  # the second demo run found the shards up to date
    fresh = runner.invoke(app, ["demo", "-w", str(ws_dir), "--products", "30", "--fresh", "--no-evaluate"])
    assert fresh.exit_code == 0, fresh.output
    assert (tmp_path / "keep.txt").exists()


def test_a_stage_may_write_only_the_tables_it_owns(tmp_path) -> None:
    """One writer per table: `schema.WRITERS` is enforced where a stage run writes."""
    import pyarrow as pa

    from visprep.schema import TABLES, WRITERS
    from visprep.workspace import Workspace

    assert set(WRITERS) == set(TABLES)  # every table names its writer
    assert all(len(w) == 1 for w in WRITERS.values())  # and only one
    ws = Workspace(tmp_path / "ws")
    rows = pa.table({"product_id": ["p1"], "given_label": ["a"], "predicted_label": ["b"],
                     "label_quality": pa.array([0.1], pa.float32()), "rank": pa.array([1], pa.int32()),
                     "action": ["keep"], "run_id": ["r"]})
    with ws.run("quality", {}):
        ws.write_table("label_issues", rows)
    with pytest.raises(PermissionError, match="stage 'pairs' may not write table 'label_issues': its writer is "
                                              "quality"):
        with ws.run("pairs", {}):
            ws.write_table("label_issues", rows)
    with ws.run("pairs", {}):
        ws.quarantine([], stage="pairs", run_id="r", key="k")  # every stage writes its own quarantine part
    ws.write_table("label_issues", rows)  # outside a stage run (a notebook, a test): not a stage's write


def test_moved_pairs_options_say_where_they_went(tmp_path) -> None:
    """Other-category negatives became a miner: the old [pairs] keys fail with the new place, not as unknown keys."""
    from visprep.config import load_config

    path = tmp_path / "visprep.toml"
    path.write_text("[pairs]\nnegatives_per_anchor = 2\n")
    with pytest.raises(ValueError, match=r"pairs.negatives_per_anchor = 2: .*set mining.other_category_per_anchor"):
        load_config(path)
    path.write_text("[pairs]\nseed = 3\n")
    with pytest.raises(ValueError, match=r"pairs.seed = 3: .*set mining.seed"):
        load_config(path)


@pytest.mark.parametrize(("old", "value", "new"), [
    ("popularity_temperature", "4.0", "popularity.temperature"),
    ("head_fraction", "0.05", "popularity.head_fraction"),
    ("shift_auc", "0.9", "shift.auc"),
    ("shift_psi", "0.5", "shift.psi"),
    ("shift_p", "0.05", "shift.p"),
    ("shift_folds", "4", "shift.folds"),
    ("shift_max_images", "100", "shift.max_images"),
    ("user_mix_fraction", "0.1", "mix.fraction"),
    ("user_mix_kinds", '["purchase"]', "mix.kinds"),
    ("user_pair_weight", "0.5", "mix.pair_weight"),
    ("user_mix_splits", '["train"]', "mix.splits"),
])
def test_moved_quality_options_say_where_they_went(tmp_path: Path, old: str, value: str, new: str) -> None:
    """Popularity, shift and the mix have their own sections: an old [quality] key fails naming its new place."""
    path = tmp_path / "visprep.toml"
    path.write_text(f"[quality]\n{old} = {value}\n")
    with pytest.raises(ValueError, match=rf"quality\.{old} = .*set {new} instead"):
        load_config(path)
    section, key = new.split(".")
    path.write_text(f"[{section}]\n{key} = {value}\n")
    assert getattr(getattr(load_config(path), section), key) is not None  # the new place takes the same value


def test_stage_sections_round_trip(tmp_path: Path) -> None:
    """[popularity], [shift] and [mix] load, render and load again unchanged; [quality] keeps label noise only."""
    path = tmp_path / "visprep.toml"
    path.write_text('[quality]\npolicy = "down_weight"\nfolds = 3\n'
                    "[popularity]\ntemperature = 2.5\nhead_fraction = 0.05\n"
                    "[shift]\nauc = 0.8\npsi = 0.3\np = 0.05\nfolds = 4\nmax_images = 200\nseed = 7\n"
                    '[mix]\nfraction = 0.3\nkinds = ["purchase", "click"]\npair_weight = 0.5\nsplits = ["train"]\n')
    cfg = load_config(path)
    assert (cfg.popularity.temperature, cfg.shift.auc, cfg.shift.seed, cfg.mix.kinds) == (2.5, 0.8, 7,
                                                                                      ["purchase", "click"])
    path.write_text(render_config(cfg))
    assert load_config(path) == cfg
    assert set(type(cfg.quality).model_fields) == {"embeddings", "label_column", "folds", "filter_by",
                                                   "min_class_size", "policy", "down_weight", "seed"}
    path.write_text('[mix]\nsplits = ["../x"]\n')
    with pytest.raises(ValueError, match=r"mix\.splits"):
        load_config(path)
