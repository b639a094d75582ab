"""The docs name only config keys, tables and stages that exist: a renamed option or table fails here
instead of leaving a page that sends readers to something that is not there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from visprep.config import VisprepConfig
from visprep.schema import TABLES, schema_for

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
SECTIONS = {name: set(field.annotation.model_fields) for name, field in VisprepConfig.model_fields.items()
            if hasattr(field.annotation, "model_fields")}
# Stages that write run records: the pipeline's and the commands' own.
STAGES = {"catalog", "fetch", "inspect", "embed", "dedup", "split", "synth", "pairs", "mix", "shift", "mine",
          "popularity", "sample", "export", "events", "labels", "queries", "quality", "evaluate", "experiment"}
CODE = re.compile(r"`([^`\n]+)`")
DOTTED = re.compile(r"^\[?([a-z_]+)\]?\.([a-z_][a-z0-9_]*)(?:\s*=.*)?$")
BRACKETED = re.compile(r"^\[([a-z_]+)\]\s+([a-z_][a-z0-9_]*)(?:\s*=.*)?$")
TABLE_REF = re.compile(r"(?:tables/([a-z_]+)(?:\.parquet)?\b|\btable `([a-z_]+)`|`([a-z_]+)` table\b)")
STAGE_REF = re.compile(r"(?:\bstage `([a-z_]+)`|`([a-z_]+)` stage\b)")


def _is_column(m: re.Match) -> bool:
    """`events.query_image_id` names a column of the `events` table, not a config key."""
    return m.group(1) in TABLES and m.group(2) in schema_for(m.group(1)).names


def _references(page: Path) -> list[tuple[int, str, str]]:
    """(line, kind, what) for each config key, table and stage a page names."""
    out = []
    for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        for code in CODE.findall(line):
            m = DOTTED.match(code.strip()) or BRACKETED.match(code.strip())
            if m and m.group(1) in SECTIONS and not code.strip().endswith(".py") and not _is_column(m):
                out.append((n, "key", f"{m.group(1)}.{m.group(2)}"))
        for groups in TABLE_REF.findall(line):
            out.extend((n, "table", g) for g in groups if g)
        for groups in STAGE_REF.findall(line):
            out.extend((n, "stage", g) for g in groups if g)
    return out


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_docs_name_only_existing_keys_tables_and_stages(page: Path) -> None:
    missing = []
    for line, kind, what in _references(page):
        if kind == "key":
            section, key = what.split(".")
            ok = key in SECTIONS[section]
        elif kind == "table":
            ok = what in TABLES
        else:
            ok = what in STAGES
        if not ok:
            missing.append(f"{page.name}:{line}: {kind} {what!r} does not exist")
    assert not missing, "\n".join(missing)


def test_the_checker_finds_what_it_must() -> None:
    """The patterns catch the forms the docs use (a checker that matches nothing would pass every page)."""
    refs = {(k, w) for p in PAGES for _, k, w in _references(p)}
    assert ("key", "fetch.local_paths") in refs and ("key", "embed.backend") in refs
    assert any(k == "table" for k, _ in refs) and any(k == "stage" for k, _ in refs)
    assert len([r for r in refs if r[0] == "key"]) > 50


def test_architecture_doc_lists_every_tables_writers() -> None:
    """docs/architecture.md's ownership table is `schema.WRITERS`, row for row."""
    from visprep.schema import WRITERS

    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| ([^|]+) \|$", text, flags=re.M))
    want = {t: ", ".join("every stage (its own part)" if x == "*" else x for x in w) for t, w in WRITERS.items()}
    assert {t: r.strip() for t, r in rows.items()} == want


def test_architecture_doc_graph_is_the_registry_s() -> None:
    """docs/architecture.md's Mermaid stage graph is what `visprep stages --mermaid` prints for the default config."""
    from visprep import stages
    from visprep.config import VisprepConfig

    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = re.search(r"```mermaid\n(.*?)```", text, flags=re.S)
    assert block is not None and block.group(1) == stages.mermaid(VisprepConfig())


def test_architecture_doc_examples_compile() -> None:
    """The how-to examples in docs/architecture.md are valid Python."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 4
    for code in blocks:
        compile(code, "docs/architecture.md", "exec")
