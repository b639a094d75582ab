"""The stage registry and the runner: one writer per table, a topological order, declared reads that are the real
reads, a second run that does no work, and one option change that reruns exactly the stages downstream of it."""

from __future__ import annotations

import importlib

import pytest

from visprep import stages
from visprep.config import VisprepConfig
from visprep.demo.sources import write_demo_sources
from visprep.pipeline import NOTHING_TO_DO, UP_TO_DATE, is_up_to_date, run_pipeline, stale_reason
from visprep.schema import TABLES, WRITERS
from visprep.workspace import Workspace

CONFIG = ("[export]\nmax_count = 40\n[inspect]\nworkers = 2\nbatch_size = 32\n"
          '[embed]\noptions = { profile = "imagenet-64" }\n'
          '[synthetic]\nbackgrounds = ["texture"]\nreframe_scales = [0.8]\nhue_shifts_deg = [180.0]\n')


def _refs(spec: stages.Stage) -> list[str]:
    return [r for r in (spec.body, spec.reads_if, spec.applies, spec.per_batch) if r]


def test_every_name_in_the_registry_resolves() -> None:
    for spec in stages.STAGES:
        for ref in _refs(spec):
            module, _, name = ref.partition(":")
            assert callable(getattr(importlib.import_module(module), name)), (spec.name, ref)
        for name in (*spec.reads, *spec.writes):
            assert name in TABLES or name in stages.RESOURCES, (spec.name, name)
    for ref in stages.RESOURCES.values():
        module, _, name = ref.partition(":")
        assert callable(getattr(importlib.import_module(module), name)), ref


def test_each_table_has_one_writer_and_schema_names_it() -> None:
    owners = stages.writers()
    tables = {t: w for t, w in owners.items() if t in TABLES}
    assert {t: (w,) for t, w in tables.items()} == {t: w for t, w in WRITERS.items() if w != ("*",)}
    assert set(TABLES) - set(tables) == {"quarantine"}  # every stage writes its own quarantine part


def test_plan_runs_each_stage_once_after_the_writers_of_what_it_reads() -> None:
    config = VisprepConfig()
    plan = stages.plan(config)
    names = [s.name for s in plan]
    assert len(names) == len(set(names)) == len(config.pipeline.stages)
    position = {n: k for k, n in enumerate(names)}
    owner = stages.writers()
    for spec in plan:
        for r in spec.all_reads(config):
            if owner.get(r) in position:
                assert position[owner[r]] < position[spec.name], (spec.name, r, owner[r])


def test_a_cycle_is_refused_naming_its_stages() -> None:
    a = stages.Stage("a", "", (), ("t2",), ("t1",), "x:y")
    b = stages.Stage("b", "", (), ("t1",), ("t2",), "x:y")
    c = stages.Stage("c", "", (), ("t1",), ("t3",), "x:y")
    with pytest.raises(ValueError, match=r"\['a', 'b'\].*a reads what b writes"):
        stages.order([a, b, c], VisprepConfig())


def test_upstream_and_downstream_follow_the_declarations() -> None:
    config = VisprepConfig()
    assert [s.name for s in stages.upstream("split", config)] == ["fetch", "inspect", "dedup"]
    assert "embed" not in [s.name for s in stages.upstream("split", config)]  # the default rule uses no vectors
    assert stages.downstream(["sample"], config) == []
    assert set(stages.downstream(["pairs"], config)) == {"mix", "mine", "sample", "export"}
    assert "quality" not in stages.downstream(["embed_views"], config)  # label noise reads catalog vectors only
    graph = stages.mermaid(config)
    assert graph.startswith("flowchart LR") and "split -->|splits| synth" in graph


def test_dedup_reads_the_vectors_only_when_its_rule_uses_them() -> None:
    """Before the registry, dedup's run did not record the feature store even with `embedding_similar` in its rule,
    so re-embedded images left its groups stale; the rule now adds the vectors to its reads and orders embed first."""
    plain = VisprepConfig()
    embedded = VisprepConfig.model_validate({"dedup": {"rule": "identical_image or (image_near and "
                                                                "embedding_similar)"}})
    assert "features" not in stages.get("dedup").all_reads(plain)
    assert "features" in stages.get("dedup").all_reads(embedded)
    names = [s.name for s in stages.plan(embedded)]
    assert names.index("embed") < names.index("dedup")
    assert "dedup" in stages.downstream(["embed"], embedded) and "dedup" not in stages.downstream(["embed"], plain)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, dict]:
    root = tmp_path_factory.mktemp("stages")
    ws = Workspace(root / "ws")
    ws.root.mkdir()
    ws.config_path.write_text(CONFIG)
    src = write_demo_sources(root / "src", n_products=120, seed=5)
    report = run_pipeline(ws, src.catalog_files)
    return ws, report


def test_each_stage_reads_only_what_it_declares(demo: tuple) -> None:
    ws, report = demo
    assert report["order"] == [s.name for s in stages.plan(ws.config)]
    undeclared = {}
    for stage, read in ws.read_log.items():
        if stage in stages.BY_NAME:
            spec = stages.get(stage)
            extra = read - set(spec.all_reads(ws.config)) - set(spec.writes) - {"quarantine"}
            if extra:
                undeclared[stage] = sorted(extra)
    assert not undeclared, f"stages read tables they do not declare: {undeclared}"
    assert {"pairs", "export", "mine", "synth"} <= set(ws.read_log)  # the log saw the stages


def _tables(ws: Workspace) -> dict[str, str]:
    return {t: ws.table_fingerprint(t) for t in ws.table_names()}


def _ran(report: dict) -> set[str]:
    return {name for name in report["order"] if not stages.get(name).incremental
            and report[name] not in (UP_TO_DATE, NOTHING_TO_DO)}


def test_second_run_does_no_work(demo: tuple) -> None:
    ws, _ = demo
    before = _tables(ws)
    shards = {p: p.stat().st_mtime_ns for p in ws.shards_dir.rglob("*") if p.is_file()}
    again = run_pipeline(Workspace(ws.root))
    assert _ran(again) == set()
    assert again["fetch"].attempted == 0 and again["inspect"].inspected == 0 and again["embed"].embedded == 0
    assert not again["synth"].changed and again["embed_views"].embedded == 0
    after = _tables(ws)
    assert {t for t in after if after[t] != before.get(t)} == set()
    assert {p: p.stat().st_mtime_ns for p in ws.shards_dir.rglob("*") if p.is_file()} == shards


@pytest.mark.parametrize(("option", "expected"), [
    ("[sampling]\nseed = 7\n", {"sample"}),
    ("[mining]\nother_category_per_anchor = 2\n", {"mine"}),
    ("[preprocess]\njpeg_quality = 85\n", {"export"}),
    ("[pairs]\nmin_side = 30\n", {"pairs", "mine", "sample", "export"}),
])
def test_one_option_reruns_exactly_the_stages_downstream_of_it(demo: tuple, option: str, expected: set) -> None:
    ws, _ = demo
    ws.config_path.write_text(CONFIG + option)
    try:
        changed = Workspace(ws.root)
        stale = {s.name for s in stages.plan(changed.config) if not s.incremental and s.has_work(changed)
                 and not is_up_to_date(changed, s.name)}
        first = next(iter(sorted(stale & expected)))
        assert "config section" in (stale_reason(changed, first) or "")
        assert _ran(run_pipeline(changed)) == expected
        assert _ran(run_pipeline(Workspace(ws.root))) == set()
    finally:
        ws.config_path.write_text(CONFIG)
        run_pipeline(Workspace(ws.root))


def test_a_deleted_output_reruns_its_stage_only(demo: tuple) -> None:
    ws, _ = demo
    (ws.shards_dir / "train" / "manifest.json").unlink()
    assert stale_reason(ws, "export") == "its output shards is missing or was changed"
    assert _ran(run_pipeline(Workspace(ws.root))) == {"export"}


def test_a_stage_command_refuses_a_stale_upstream_or_runs_it_with_deps(demo: tuple) -> None:
    from typer.testing import CliRunner

    from visprep.cli import app

    ws, _ = demo
    ws.config_path.write_text(CONFIG + "[dedup]\ntitle_threshold = 0.97\n")
    try:
        out = CliRunner().invoke(app, ["pairs", "-w", str(ws.root)])
        text = " ".join(out.output.split())
        assert out.exit_code == 1 and "pairs depends on dedup, which is stale (dedup: config section [dedup] " \
            "changed)" in text, out.output
        assert "visprep dedup" in text and "--with-deps" in text
        out = CliRunner().invoke(app, ["pairs", "-w", str(ws.root), "--with-deps"])
        assert out.exit_code == 0, out.output
        assert ws.last_run("dedup")["params"]["dedup"]["title_threshold"] == 0.97
        assert is_up_to_date(Workspace(ws.root), "dedup") and is_up_to_date(Workspace(ws.root), "pairs")
    finally:
        ws.config_path.write_text(CONFIG)
        run_pipeline(Workspace(ws.root))


def test_the_evaluation_gallery_is_the_real_catalog(demo: tuple) -> None:
    """Synth's views and colour variants lived in the catalog's tables, so evaluation ranked them too (unjudged
    distractors and extra images of real products); the gallery is now the real catalog only."""
    from visprep.evaluate.stage import catalog_images

    ws, _ = demo
    gallery = catalog_images(ws)
    views = set(ws.read_table("synthetic_views", ["image_id"]).column("image_id").to_pylist())
    variants = set(ws.read_table("synthetic_products", ["product_id"]).column("product_id").to_pylist())
    assert views and variants and gallery.num_rows
    assert not set(gallery.column("image_id").to_pylist()) & views
    assert not set(gallery.column("product_id").to_pylist()) & variants


def test_a_flagged_product_s_colour_variants_take_its_label_policy(demo: tuple) -> None:
    """Label noise checks the real catalog (a variant in another cross-validation fold than its near-identical
    source leaked its label); a variant carries its source's label, so the policy reaches it through its source."""
    import pyarrow as pa

    from visprep.pairs.stage import apply_label_issues
    from visprep.schema import LABEL_ISSUES
    from visprep.views.catalog import flagged_products, variant_sources

    ws, _ = demo
    variants = variant_sources(ws)
    variant, source = sorted(variants.items())[0]
    ws.write_table("label_issues", pa.Table.from_pylist(
        [{"product_id": source, "given_label": "a", "predicted_label": "b", "label_quality": 0.01, "rank": 1,
          "action": "exclude", "run_id": "test"}], schema=LABEL_ISSUES))
    try:
        assert flagged_products(ws) == [source, *sorted(v for v, s in variants.items() if s == source)]
        ws.config_path.write_text(CONFIG + '[quality]\npolicy = "exclude"\n')
        strict = Workspace(ws.root)
        pairs = strict.read_table("pairs")
        assert {source, variant} <= set(pairs.column("anchor_product_id").to_pylist())
        kept, touched = apply_label_issues(strict, pairs)
        assert touched and not {source, variant} & set(kept.column("anchor_product_id").to_pylist())
    finally:
        ws.config_path.write_text(CONFIG)
        ws.table_path("label_issues").unlink()
        run_pipeline(Workspace(ws.root))


def test_dedup_judges_the_real_catalog_only(demo: tuple) -> None:
    """Synth's views lived in `product_images`, so dedup compared them: views of two different products on the same
    background or framing matched by pHash and, with similar titles, made the products a duplicate group (on the
    2,400-product demo 159 of 186 accepted image edges came through a view, moving 4 products between splits).
    Dedup now reads the real catalog; a colour variant takes its source's group through `all_splits`."""
    from visprep.views.catalog import all_splits

    ws, _ = demo
    edges = ws.read_table("duplicate_edges")
    views = set(ws.read_table("synthetic_views", ["image_id"]).column("image_id").to_pylist())
    variants = set(ws.read_table("synthetic_products", ["product_id"]).column("product_id").to_pylist())
    assert views and variants
    assert not (set(edges.column("image_a").to_pylist()) | set(edges.column("image_b").to_pylist())) & views
    assert not set(ws.read_table("product_groups", ["product_id"]).column("product_id").to_pylist()) & variants
    groups = {r["product_id"]: r["group_id"] for r in all_splits(ws, ["product_id", "group_id"]).to_pylist()}
    from visprep.views.catalog import variant_sources

    assert all(groups[v] == groups[s] for v, s in variant_sources(ws).items())
