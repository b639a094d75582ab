"""The `visprep` command line: a thin Typer layer over the stages."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from visprep.config import VisprepConfig, render_config
from visprep.workspace import Workspace

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Prepare training and evaluation data for visual-search embedding models.")
console = Console()

WorkspaceOpt = Annotated[Path, typer.Option("--workspace", "-w", help="Workspace folder.", file_okay=False)]


@contextmanager
def _progress() -> Iterator[Callable[[str], Callable[[int, int], None]]]:
    """Yield a factory of progress callbacks `(advance, total)`, one Rich bar per stage."""
    with Progress(TextColumn("[bold]{task.description:<8}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False) as prog:
        tasks: dict[str, Any] = {}

        def factory(name: str) -> Callable[[int, int], None]:
            def update(advance: int, total: int) -> None:
                # total 0 means "not known yet": Rich shows a pulsing bar.
                if name not in tasks:
                    tasks[name] = prog.add_task(name, total=total or None)
                prog.update(tasks[name], advance=advance, total=total or None)
            return update

        yield factory


def _open(workspace: Path) -> Workspace:
    ws = Workspace(workspace)
    try:
        ws.config  # validate once, at the boundary
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    return ws


def _fail(exc: Exception) -> None:
    console.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(1) from exc


@app.command()
def init(workspace: WorkspaceOpt = Path("."), force: Annotated[bool, typer.Option(help="Overwrite.")] = False) -> None:
    """Write `visprep.toml` with every default, commented."""
    ws = Workspace(workspace)
    if ws.config_path.exists() and not force:
        console.print(f"{ws.config_path} exists; use --force to overwrite")
        raise typer.Exit(1)
    ws.root.mkdir(parents=True, exist_ok=True)
    ws.config_path.write_text(render_config(VisprepConfig()), encoding="utf-8")
    console.print(f"wrote {ws.config_path}")


@app.command()
def catalog(files: Annotated[list[Path], typer.Argument(help="Catalog files: CSV, JSONL or Parquet.")],
            workspace: WorkspaceOpt = Path(".")) -> None:
    """Ingest product catalog files; bad rows go to the quarantine table."""
    from visprep.catalog.stage import ingest_catalog

    ws = _open(workspace)
    try:
        with _progress() as bar:
            r = ingest_catalog(ws, files, progress=bar("catalog"))
    except (FileNotFoundError, ValueError) as exc:
        _fail(exc)
    console.print(f"rows {r.rows_read}: new {r.new}, changed {r.changed}, unchanged {r.unchanged}, removed "
                  f"{r.removed}, identical duplicates {r.duplicate_identical}, quarantined {r.quarantined}"
                  + (f" {r.by_reason}" if r.by_reason else ""))


@app.command()
def fetch(workspace: WorkspaceOpt = Path("."),
          limit: Annotated[Optional[int], typer.Option(help="Fetch at most this many URLs.")] = None) -> None:
    """Fetch every image not yet in the store (resumable)."""
    from visprep.fetch.stage import fetch_stage

    ws = _open(workspace)
    with _progress() as bar:
        r = fetch_stage(ws, progress=bar("fetch"), limit=limit)
    console.print(f"urls {r.wanted}: already {r.already}, fetched {r.ok}, failed {r.failed} {r.by_status}")


@app.command()
def inspect(workspace: WorkspaceOpt = Path(".")) -> None:
    """Decode each stored image once: size, format, EXIF orientation, pHash, blur."""
    from visprep.images.stage import inspect_stage

    ws = _open(workspace)
    with _progress() as bar:
        r = inspect_stage(ws, progress=bar("inspect"))
    console.print(f"images {r.stored}: already {r.already}, ok {r.ok}, refused {r.refused} {r.by_reason}")


@app.command()
def split(workspace: WorkspaceOpt = Path(".")) -> None:
    """Assign products to splits by a hash of their group."""
    from visprep.split.stage import split_stage

    console.print(split_stage(_open(workspace)))


@app.command()
def pairs(workspace: WorkspaceOpt = Path(".")) -> None:
    """Build training pairs (same product, image-title) and other-category negatives."""
    from visprep.pairs.stage import pairs_stage
    from visprep.pipeline import is_up_to_date
    from visprep.split.stage import split_stage

    ws = _open(workspace)
    if not is_up_to_date(ws, "split"):
        split_stage(ws)
    console.print(pairs_stage(ws))


@app.command()
def export(workspace: WorkspaceOpt = Path(".")) -> None:
    """Write WebDataset shards and a manifest per split."""
    from visprep.export.stage import export_stage

    ws = _open(workspace)
    with _progress() as bar:
        summary = export_stage(ws, progress=bar("export"))
    console.print(summary)


@app.command()
def run(files: Annotated[Optional[list[Path]], typer.Argument(help="Catalog files to ingest first.")] = None,
        workspace: WorkspaceOpt = Path("."),
        force: Annotated[bool, typer.Option(help="Rerun table stages even when up to date.")] = False) -> None:
    """Run all stages in order, skipping work already done."""
    from visprep.pipeline import run_pipeline

    ws = _open(workspace)
    t0 = time.perf_counter()
    with _progress() as bar:
        report = run_pipeline(ws, files or [], force=force, progress=bar)
    _summary(ws, time.perf_counter() - t0, report)


@app.command()
def demo(workspace: WorkspaceOpt = Path("."),
         products: Annotated[int, typer.Option(help="Fashion-MNIST products in the demo catalog.")] = 2400,
         fresh: Annotated[bool, typer.Option(help="Delete the workspace first.")] = False) -> None:
    """Build the demo workspace from the bundled real data and run every stage."""
    from visprep.demo.sources import write_demo_sources
    from visprep.pipeline import run_pipeline

    ws = Workspace(workspace)
    if fresh:
        ws.clear("demo-source")
    t0 = time.perf_counter()
    ws.root.mkdir(parents=True, exist_ok=True)
    if not ws.config_path.exists():
        ws.config_path.write_text(render_config(VisprepConfig()), encoding="utf-8")
    source_dir = ws.root / "demo-source"
    manifest = source_dir / "demo_manifest.json"
    if manifest.exists() and json.loads(manifest.read_text())["n_products"] == products:
        files = [source_dir / f for f in json.loads(manifest.read_text())["catalog_files"]]
        console.print(f"reusing demo sources in {source_dir}")
    else:
        if source_dir.exists():
            shutil.rmtree(source_dir)
        console.print(f"writing demo sources ({products} products) into {source_dir} ...")
        files = write_demo_sources(source_dir, n_products=products).catalog_files
    with _progress() as bar:
        report = run_pipeline(ws, files, progress=bar)
    _summary(ws, time.perf_counter() - t0, report)


# --- events commands (issue 3) ---

# --- labels / evaluate commands (issue 4) ---

# --- embed / mine / sample commands (issue 5) ---

# --- queries / augment commands (issue 7) ---

# --- dedup / quality commands (issue 6) ---


def _summary(ws: Workspace, seconds: float, report: dict[str, Any]) -> None:
    import pyarrow.compute as pc

    t = Table(title=f"visprep workspace {ws.root}")
    t.add_column("what")
    t.add_column("count", justify="right")
    products = ws.read_table("products", ["product_id"]).num_rows
    imgs = ws.read_table("images", ["status"])
    pairs_t = ws.read_table("pairs", ["kind"])
    q = ws.read_table("quarantine", ["stage", "reason"])
    t.add_row("products", str(products))
    t.add_row("images stored / decoded ok", f"{imgs.num_rows} / {pc.sum(pc.equal(imgs['status'], 'ok')).as_py() or 0}")
    for kind, n in _value_counts(pairs_t.column("kind").to_pylist()):
        t.add_row(f"pairs: {kind}", str(n))
    t.add_row("negatives", str(ws.read_table("negatives", ["kind"]).num_rows))
    shards = sorted(ws.shards_dir.glob("*/*.tar")) if ws.shards_dir.exists() else []
    t.add_row("shards", f"{len(shards)} ({', '.join(sorted({p.parent.name for p in shards}))})")
    t.add_row("quarantined", str(q.num_rows))
    for (stage, reason), n in _value_counts(list(zip(q.column("stage").to_pylist(), q.column("reason").to_pylist()))):
        t.add_row(f"  {stage}: {reason}", str(n))
    t.add_row("time", f"{seconds:.1f} s")
    console.print(t)


def _value_counts(values: list) -> list[tuple[Any, int]]:
    counts: dict[Any, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))


@app.command()
def status(workspace: WorkspaceOpt = Path("."),
           as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Tables and row counts, last run of each stage, quarantine counts by reason."""
    ws = _open(workspace)
    tables = {name: ws.read_table(name).num_rows for name in ws.table_names()}
    last: dict[str, dict] = {}
    for r in ws.runs():
        last[r["stage"]] = r
    q = ws.read_table("quarantine", ["stage", "reason"])
    qc = _value_counts(list(zip(q.column("stage").to_pylist(), q.column("reason").to_pylist())))
    if as_json:
        console.print_json(json.dumps({"tables": tables, "last_runs": last,
                                        "quarantine": [{"stage": s, "reason": r, "count": n} for (s, r), n in qc]}))
        return
    t = Table(title="tables")
    t.add_column("table")
    t.add_column("rows", justify="right")
    for name, n in tables.items():
        t.add_row(name, str(n))
    console.print(t)
    t = Table(title="last run of each stage")
    for col in ("stage", "run_id", "status", "seconds", "counts"):
        t.add_column(col)
    for stage, r in last.items():
        t.add_row(stage, r["run_id"], r["status"], str(r.get("seconds")), json.dumps(r.get("counts", {})))
    console.print(t)
    t = Table(title="quarantine")
    for col in ("stage", "reason", "count"):
        t.add_column(col)
    for (stage, reason), n in qc:
        t.add_row(stage, reason, str(n))
    console.print(t)


if __name__ == "__main__":
    app()
