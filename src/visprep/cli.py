"""The `visprep` command line: a thin Typer layer over the stages."""

from __future__ import annotations

import functools
import inspect as pyinspect  # `inspect` is also a command below
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from visprep.config import VisprepConfig, render_config
from visprep.workspace import Workspace, WorkspaceLocked

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Prepare training and evaluation data for visual-search embedding models.")
console = Console()

# A folder, or the URL of a workspace on an object store (`s3://bucket/prefix`): a string, since a Path would fold
# the URL's "//".
WorkspaceOpt = Annotated[str, typer.Option("--workspace", "-w", help="Workspace folder, or the URL of a workspace on "
                                                                     "an object store (s3://bucket/prefix).")]


WaitOpt = Annotated[bool, typer.Option("--wait", help="If another visprep command is writing this workspace, wait "
                                                      "for it to finish instead of stopping.")]
EXIT_BUSY = 75  # EX_TEMPFAIL: the workspace is busy; try again later (or pass --wait)


def writes(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Make a command take the workspace's writer lock at its start and add `--wait`; a busy workspace exits 75."""
    sig = pyinspect.signature(fn, eval_str=True)
    wait_param = pyinspect.Parameter("wait", pyinspect.Parameter.KEYWORD_ONLY, default=False, annotation=WaitOpt)
    name = fn.__name__.replace("_", "-")

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        wait = kwargs.pop("wait", False)
        ws = Workspace(kwargs.get("workspace", Path(".")))
        with ExitStack() as stack:
            holder = ws.holder() if wait else None
            if holder:
                console.print(f"waiting for the visprep writer of {ws.location} to finish: {json.dumps(holder)}")
            try:
                stack.enter_context(ws.writer(name, wait_s=math.inf if wait else None))
            except WorkspaceLocked as exc:
                console.print(f"[red]error:[/red] {exc}")
                raise typer.Exit(EXIT_BUSY) from exc
            return fn(*args, **kwargs)

    command.__signature__ = sig.replace(parameters=[*sig.parameters.values(), wait_param])  # type: ignore[attr-defined]
    command.__annotations__ = {**fn.__annotations__, "wait": WaitOpt}
    return command


@contextmanager
def _progress() -> Iterator[Callable[[str], Callable[[int, int], None]]]:
    """Yield a factory of progress callbacks `(advance, total)`, one Rich bar per stage."""
    with Progress(TextColumn("[bold]{task.description:<8}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False) as prog:
        # Stages run one after another: each call of the factory is a new stage run with a bar of its own (a stage
        # that runs twice in a pass gets "name 2", not counts added to its first bar), and it ends the previous
        # bar: its clock stops and an unknown total becomes the count reached.
        seen: dict[str, int] = {}
        current: list[Any] = []

        def finish_current() -> None:
            for task in [t for t in prog.tasks if current and t.id == current[0]]:
                if task.total is None:
                    prog.update(task.id, total=task.completed)
                prog.stop_task(task.id)
            current.clear()

        def factory(name: str) -> Callable[[int, int], None]:
            finish_current()
            seen[name] = seen.get(name, 0) + 1
            label = name if seen[name] == 1 else f"{name} {seen[name]}"
            mine: list[Any] = []

            def update(advance: int, total: int) -> None:
                # total 0 means "not known yet": Rich shows a pulsing bar.
                if not mine:
                    mine.append(prog.add_task(label, total=total or None))
                    current[:] = mine
                prog.update(mine[0], advance=advance, total=total or None)
            return update

        yield factory
        finish_current()


def _open(workspace: str | Path) -> Workspace:
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
@writes
def init(workspace: WorkspaceOpt = Path("."), force: Annotated[bool, typer.Option(help="Overwrite.")] = False) -> None:
    """Write `visprep.toml` with every default, commented."""
    ws = Workspace(workspace)
    # Where the file is: the folder's, or the object in a workspace on object storage (not its local copy).
    shown = ws.config_path if ws.is_folder else f"{ws.location}/{ws.config_path.name}"
    if ws.config_path.exists() and not force:
        console.print(f"{shown} exists; use --force to overwrite")
        raise typer.Exit(1)
    ws.root.mkdir(parents=True, exist_ok=True)
    ws.write_config_text(render_config(VisprepConfig()))
    console.print(f"wrote {shown}")


AllowRemovalsOpt = Annotated[bool, typer.Option(
    help="Let a file's new snapshot remove more than catalog.max_removal_share of its products (an emptied or "
         "truncated export is refused without it).")]


@app.command()
@writes
def catalog(files: Annotated[list[Path], typer.Argument(help="Catalog files: CSV, JSONL or Parquet.")],
            workspace: WorkspaceOpt = Path("."), allow_removals: AllowRemovalsOpt = False) -> None:
    """Ingest product catalog files; bad rows go to the quarantine table."""
    from visprep.catalog.stage import ingest_catalog

    ws = _open(workspace)
    try:
        with _progress() as bar:
            r = ingest_catalog(ws, files, progress=bar("catalog"), allow_removals=allow_removals)
    except (FileNotFoundError, ValueError) as exc:
        _fail(exc)
    console.print(f"rows {r.rows_read}: new {r.new}, changed {r.changed}, unchanged {r.unchanged}, removed "
                  f"{r.removed}, identical duplicates {r.duplicate_identical}, quarantined {r.quarantined}"
                  + (f" {r.by_reason}" if r.by_reason else ""))


@app.command()
@writes
def run(files: Annotated[Optional[list[Path]], typer.Argument(help="Catalog files to ingest first.")] = None,
        workspace: WorkspaceOpt = Path("."),
        force: Annotated[bool, typer.Option(help="Rerun table stages even when up to date.")] = False,
        allow_removals: AllowRemovalsOpt = False,
        engine: Annotated[Optional[str], typer.Option(
            help="local or ray: where the per-record stages run (overrides [engine] kind).")] = None) -> None:
    """Run all stages in order, skipping work already done."""
    from visprep.pipeline import run_pipeline

    ws = _open(workspace)
    if engine is not None:
        if engine not in ("local", "ray"):
            _fail(ValueError(f"--engine must be 'local' or 'ray', got {engine!r}"))
        ws.set_config(ws.config.model_copy(update={"engine": ws.config.engine.model_copy(update={"kind": engine})}))
    t0 = time.perf_counter()
    try:
        with _progress() as bar:
            report = run_pipeline(ws, files or [], force=force, progress=bar, allow_removals=allow_removals)
    except (FileNotFoundError, ValueError) as exc:
        _fail(exc)
    _summary(ws, time.perf_counter() - t0, report)


@app.command()
@writes
def demo(workspace: WorkspaceOpt = Path("."),
         products: Annotated[int, typer.Option(help="Fashion-MNIST products in the demo catalog.")] = 2400,
         fresh: Annotated[bool, typer.Option(help="Delete the workspace first.")] = False,
         evaluate: Annotated[bool, typer.Option(help="Judge demo queries and print evaluation results.")] = True,
         ) -> None:
    """Build the demo workspace from the bundled real data and run every stage."""
    from visprep.demo.sources import write_demo_sources
    from visprep.pipeline import run_pipeline

    ws = Workspace(workspace)
    if fresh:
        ws.clear("demo-source")
    t0 = time.perf_counter()
    ws.root.mkdir(parents=True, exist_ok=True)
    if not ws.config_path.exists():
        from visprep.demo import demo_config

        ws.write_config_text(render_config(demo_config()))
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
    if evaluate:
        from visprep.evaluate.demo import run_demo_evaluation

        console.print("judging demo queries, then training a projection head on the frozen EfficientNet-Lite0 "
                      "features with visprep's batches and evaluating it against the frozen backbone (the first "
                      "run compiles ranx's numba code) ...")
        d = run_demo_evaluation(ws, seed=0)
        print_experiment(d.experiment)
    from visprep.report import build_report

    rep = build_report(ws)
    console.print(f"report: {rep.path} ({rep.bytes / 1e6:.2f} MB, {rep.seconds:.1f} s); open it in a browser")
    console.print(f"demo total {time.perf_counter() - t0:.1f} s")


# --- events commands ---


@app.command()
@writes
def events(workspace: WorkspaceOpt = Path("."),
           from_files: Annotated[Optional[list[Path]], typer.Option(
               "--from", help="Event files (JSON lines or Parquet); repeat for several.")] = None,
           kafka: Annotated[Optional[str], typer.Option(help="Kafka bootstrap HOST:PORT.")] = None,
           topic: Annotated[Optional[str], typer.Option(help="Kafka topic (with --kafka).")] = None,
           group: Annotated[str, typer.Option(help="Kafka consumer group.")] = "visprep-events",
           max_seconds: Annotated[Optional[float], typer.Option(
               help="Stop consuming after this long even if not caught up.")] = None) -> None:
    """Ingest behaviour events (files or a Kafka topic) exactly once; rebuild weighted interaction pairs."""
    from visprep.events.stage import ingest_event_files, ingest_kafka
    from visprep.workspace import WorkspaceLocked

    if bool(from_files) == bool(kafka):
        _fail(ValueError("give either --from FILE... or --kafka HOST:PORT --topic T"))
    if kafka and not topic:
        _fail(ValueError("--kafka needs --topic"))
    ws = _open(workspace)
    try:
        if from_files:
            with _progress() as bar:
                r = ingest_event_files(ws, from_files, progress=bar("events"))
        else:
            r = ingest_kafka(ws, bootstrap=kafka, topic=topic, group=group, max_seconds=max_seconds)
    except (FileNotFoundError, ValueError, ImportError, TimeoutError, WorkspaceLocked) as exc:
        _fail(exc)
    console.print(f"records {r.records}: new events {r.events_new}, duplicates {r.duplicates}, quarantined "
                  f"{r.quarantined}" + (f" {r.by_reason}" if r.by_reason else "")
                  + (f"; files already ingested {r.files_already}" if r.files_already else "")
                  + ("" if r.caught_up is None else f"; caught up: {r.caught_up}"))
    if r.pairs_rebuilt:
        console.print(f"interaction pairs {r.pairs}; concentration {r.concentration}")

# --- labels / evaluate commands ---


@app.command()
@writes
def labels(files: Annotated[list[Path], typer.Argument(help="Rater files: CSV, JSONL or Parquet.")],
           workspace: WorkspaceOpt = Path("."),
           export: Annotated[Optional[Path], typer.Option(help="Also write TREC qrels + Parquet here.")] = None) -> None:
    """Import human relevance judgments (0-4 rubric); build eval qrels, agreement and rater stats."""
    from visprep.labels.rubric import grade_name
    from visprep.labels.stage import labels_stage

    ws = _open(workspace)
    try:
        r = labels_stage(ws, files)
    except (FileNotFoundError, ValueError) as exc:
        _fail(exc)
    console.print(f"rows {r.rows_read}: judgments {r.judgments}, queries {r.queries} (fetched {r.queries_fetched}), "
                  f"qrels {r.qrels}, flagged for re-labelling {r.relabel}, identical duplicates "
                  f"{r.duplicate_identical}, conflicts {r.conflicts}, quarantined {r.quarantined}"
                  + (f" {r.by_reason}" if r.by_reason else ""))
    console.print("consensus grades: " + ", ".join(f"{g} {grade_name(g)}: {n}"
                                                   for g, n in sorted(r.grade_counts.items(), reverse=True)))
    t = Table(title="rater agreement")
    for col in ("batch", "items", "raters", "alpha (ordinal)", "Fleiss kappa", "Cohen kappa", "re-label"):
        t.add_column(col)
    for a in ws.read_table("label_agreement").to_pylist():
        t.add_row(a["batch"], str(a["n_items"]), str(a["n_raters"]), f"{a['alpha_ordinal']:.3f}",
                  f"{a['fleiss_kappa']:.3f}", f"{a['cohen_kappa_mean']:.3f}", str(a["relabel_items"]))
    console.print(t)
    if r.suspect_raters:
        console.print(f"[yellow]suspect raters (low agreement with the others):[/yellow] {', '.join(r.suspect_raters)}")
    if export is not None:
        from visprep.labels.trec import export_qrels

        for kind, path in export_qrels(ws, export).items():
            console.print(f"wrote {kind}: {path}")


@app.command()
def evaluate(model: Annotated[str, typer.Option("--model", "-m", help="Model name (features/<model>/ by default).")],
             workspace: WorkspaceOpt = Path("."),
             embeddings: Annotated[Optional[Path], typer.Option(help="(id, vector) Parquet file or folder.")] = None,
             baseline: Annotated[Optional[str], typer.Option(help="Compare with this model's stored results.")] = None,
             by_category: Annotated[bool, typer.Option(help="Print the per-category breakdown.")] = False) -> None:
    """Rank the catalog for each eval query; nDCG@k, Recall@k, MAP, MRR with bootstrap CIs."""
    from visprep.evaluate.stage import evaluate_stage

    ws = _open(workspace)
    try:
        r = evaluate_stage(ws, model=model, embeddings=embeddings, baseline=baseline)
    except (FileNotFoundError, ValueError) as exc:
        _fail(exc)
    print_evaluation(ws, r, by_category=by_category)


def print_evaluation(ws: Workspace, r: Any, *, by_category: bool = False) -> None:
    """Print an `EvaluateResult`: metrics with CIs, judged counts by grade, and the paired comparison."""
    cfg = ws.config.evaluate
    gain = "grade" if cfg.ndcg_gain == "linear" else "2^grade - 1"
    console.print(f"model {r.model}: {r.queries} queries ({r.queries_without_embedding} without embedding), "
                  f"{r.catalog_products} catalog products / {r.catalog_images} images; nDCG gain = {gain}; "
                  f"relevant (Recall, MAP, MRR) = grade >= {cfg.relevance_threshold}; judged by grade "
                  f"{dict(sorted(r.judged_by_grade.items()))}")
    t = Table(title=f"evaluation of {r.model} ({cfg.confidence:.0%} bootstrap CI)")
    for col in ("category", "metric", "value", "CI", "queries"):
        t.add_column(col)
    for row in r.metrics:
        if row["category"] == "*" or by_category:
            t.add_row(row["category"], row["metric"], f"{row['value']:.4f}",
                      f"[{row['ci_low']:.4f}, {row['ci_high']:.4f}]", str(row["n_queries"]))
    console.print(t)
    if r.comparisons:
        t = Table(title=f"{r.model} vs {r.baseline} (paired, same queries)")
        for col in ("metric", "base", "model", "diff", "CI of diff", "p perm", "p t", "W/L"):
            t.add_column(col, no_wrap=True)
        for c in r.comparisons:
            t.add_row(c.metric, f"{c.mean_a:.3f}", f"{c.mean_b:.3f}", f"{c.diff:+.3f}",
                      f"{c.ci_low:+.3f}..{c.ci_high:+.3f}", f"{c.p_randomization:.4f}", f"{c.p_ttest:.4f}",
                      f"{c.wins}/{c.losses}")
        console.print(t)
        console.print("p perm: two-sided paired randomisation (sign-flip) test; p t: paired t-test; W/L: queries "
                      "where the model beats / loses to the baseline")
    for note in r.notes:
        console.print(f"note: {note}")

# --- the pipeline's per-stage commands, generated from the stage registry (visprep.stages) ---


def _describe_fetch(r: Any) -> str:
    return f"urls {r.wanted}: already {r.already}, fetched {r.ok}, failed {r.failed} {r.by_status}"


def _describe_inspect(r: Any) -> str:
    return (f"images {r.stored}: already {r.already}, ok {r.ok}, refused {r.refused} {r.by_reason}"
            + (f"; signatures back-filled {r.backfilled}, failed {r.backfill_failed}"
               if r.backfilled or r.backfill_failed else ""))


def _describe_embed(r: Any) -> str:
    if hasattr(r, "unchanged"):  # `--import`: a trainer's vectors
        return (f"{r.model_id}: read {r.read}: changed {r.changed}, unchanged {r.unchanged}, unknown ids {r.unknown} "
                f"(quarantined); store holds {r.store_total}")
    return (f"{r.model_id}: images {r.images}: embedded {r.embedded}, skipped {r.skipped} (current), failed "
            f"{r.failed}{' ' + str(r.by_reason) if r.by_reason else ''}; store holds {r.store_total}")


def _describe_synth(r: Any) -> str:
    return (f"products {r.products}, source images {r.source_images} ({r.rendered_images} rendered now): new "
            f"same-product views {r.same_product_views}, new colour variants {r.color_variants}, kept {r.reused}, "
            f"dropped {r.dropped}, failed {r.failed} {r.by_op}; tables written: {', '.join(r.tables_written) or 'none'}")


def _describe_dedup(r: Any) -> str:
    c = r.counts
    return (f"products {r.products}: {r.groups} groups, {r.products_in_groups} products in groups of 2+, "
            f"{r.accepted_pairs} duplicate pairs; candidates {c.get('candidate_pairs', 0)}, vetoed by colour "
            f"{c.get('color_vetoed_pairs', 0)} / brand {c.get('brand_vetoed_pairs', 0)}, images decoded "
            f"{c.get('images_decoded', 0)}; {sum(r.seconds.values()):.1f} s")


def _describe_quality(r: Any) -> str:
    return (f"products checked {r.checked}: flagged {r.flagged} (policy {r.policy}, applied by the pairs stage and "
            "the mix)")


def _describe_popularity(r: Any) -> str:
    lines = [f"products {r.products} ({r.products_with_interactions} with interactions), T = {r.temperature}"]
    for name, fig in (("positive mass before", r.before), ("after re-sampling", r.after), ("exposure", r.exposure)):
        lines.append(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in fig.items()))
    return "\n".join(lines)


def _describe_shift(r: Any) -> str:
    d = r.report.as_dict()
    lines = [f"catalog {d['n_catalog']} vs user {d['n_user']} photos ({r.model_id}; embedded now {r.embedded}): "
             f"domain AUC {d['domain_auc']:.3f}"]
    for name, f in d["features"].items():
        lines.append(f"  {name}: KS {f['ks']:.3f} (p {f['p']:.1e}), PSI {f['psi']:.3f}, median catalog "
                     f"{f['catalog_median']} / user {f['user_median']}{'  DRIFT' if f['shift'] else ''}")
    lines.append(f"verdict: {d['verdict']}" + (f" ({'; '.join(d['reasons'])})" if d["reasons"] else "")
                 + f"  [rules: {d['rules']['domain_auc']}; feature {d['rules']['feature']}]")
    return "\n".join(lines)


def _describe_mix(m: dict[str, Any]) -> str:
    return (f"user-photo pairs: {m['added']} in tables/user_pairs (fraction {m['fraction']}, linked {m['linked']}, "
            f"eligible {m['eligible']}, target {m['target']})" + (f"; {m['note']}" if m["note"] else ""))


_DESCRIBE: dict[str, Callable[[Any], str]] = {
    "fetch": _describe_fetch, "inspect": _describe_inspect, "embed": _describe_embed, "embed_views": _describe_embed,
    "synth": _describe_synth, "dedup": _describe_dedup, "quality": _describe_quality,
    "popularity": _describe_popularity, "shift": _describe_shift, "mix": _describe_mix,
}
"""How a stage's result is printed; a stage without an entry prints its result as JSON (counts) or as is."""


def _describe(stage: str, result: Any) -> str:
    if isinstance(result, str):
        return f"{stage}: {result}"
    if stage in _DESCRIBE:
        return _DESCRIBE[stage](result)
    if isinstance(result, dict):
        return json.dumps(result, indent=2, default=str)
    return str(result)


def _run_with_deps(ws: Workspace, stage: str, with_deps: bool) -> None:
    """Bring what `stage` reads up to date first (`with_deps`), or stop naming the stale upstream table stages (a
    per-stage command runs only its own stage; `visprep run` composes them)."""
    from visprep import stages
    from visprep.pipeline import run_stage, stale_reason

    upstream = stages.upstream(stage, ws.config)
    if with_deps:
        for spec in upstream:
            with _progress() as bar:
                result = run_stage(ws, spec.name, progress=bar(spec.name))
            console.print(_describe(spec.name, result), markup=False, highlight=False)
        return
    checked = [s.name for s in upstream if not s.incremental and s.has_work(ws)]
    # A stage that never ran here has no inputs to have changed: its tables are absent or were made by hand. That is
    # said, not refused; a stage whose inputs or config changed since its last run is refused.
    never = [n for n in checked if ws.last_run(n) is None]
    if never:
        console.print(f"note: {', '.join(never)} never ran in this workspace; {stage} reads their tables as they are")
    stale = {n: stale_reason(ws, n) for n in checked if n not in never}
    stale = {n: why for n, why in stale.items() if why}
    if stale:
        console.print(f"[red]error:[/red] {stage} depends on {', '.join(stale)}, which "
                      f"{'is' if len(stale) == 1 else 'are'} stale ({escape('; '.join(f'{n}: {w}' for n, w in stale.items()))}): "
                      f"pass --with-deps to bring them up to date first, or use `visprep run`; or run "
                      f"`visprep {' && visprep '.join(n.replace('_', '-') for n in stale)}` and the stages after them")
        raise typer.Exit(1)


def _stage_command(name: str) -> Callable[..., None]:
    """The CLI command of registered stage `name`: its declared options, `--with-deps` and `--force`."""
    from visprep import stages

    spec = stages.get(name)

    def command(workspace: Path = Path("."), with_deps: bool = False, force: bool = False, **options: Any) -> None:
        from visprep.embed.registry import EmbedderUnavailable
        from visprep.pipeline import run_stage

        ws = _open(workspace)
        try:
            _run_with_deps(ws, name, with_deps)
            with _progress() as bar:
                result = run_stage(ws, name, force=force, progress=bar(name), explicit=True, **options)
        except (FileNotFoundError, ValueError, EmbedderUnavailable) as exc:
            _fail(exc)
        console.print(_describe(name, result), markup=False, highlight=False)

    P = pyinspect.Parameter
    params = [
        P("workspace", P.KEYWORD_ONLY, default=Path("."), annotation=WorkspaceOpt),
        P("with_deps", P.KEYWORD_ONLY, default=False, annotation=Annotated[bool, typer.Option(
            help="First bring the stages this one reads from up to date.")]),
        P("force", P.KEYWORD_ONLY, default=False, annotation=Annotated[bool, typer.Option(
            help="Run even when up to date.")]),
        *[P(o.name, P.KEYWORD_ONLY, default=o.default, annotation=Annotated[Optional[o.type], typer.Option(
            *([o.flag] if o.flag else []), help=o.help)]) for o in spec.options],
    ]
    command.__signature__ = pyinspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = name
    command.__doc__ = spec.summary
    return command


@app.command("stages")
def stages_command(workspace: WorkspaceOpt = Path("."),
                   mermaid: Annotated[bool, typer.Option(help="Print the stage graph as a Mermaid flowchart.")] = False
                   ) -> None:
    """List the stages `visprep run` runs, in order, with what each reads and writes (and whether it is stale)."""
    from visprep import stages
    from visprep.pipeline import stale_reason

    ws = _open(workspace)
    if mermaid:
        print(stages.mermaid(ws.config), end="")
        return
    t = Table(title=f"visprep run: stages in order ({ws.root})")
    for col in ("stage", "reads", "writes", "state"):
        t.add_column(col)
    for spec in stages.plan(ws.config):
        if spec.incremental:
            state = "incremental (does only missing work)"
        elif not spec.has_work(ws):
            state = "nothing to do"
        else:
            why = stale_reason(ws, spec.name)
            state = f"stale: {why}" if why else "up to date"
        t.add_row(spec.name, ", ".join(spec.all_reads(ws.config)), ", ".join(spec.writes), state)
    console.print(t)


def _register_stage_commands() -> None:
    from visprep import stages

    for spec in stages.STAGES:
        if spec.in_run:
            app.command(spec.name.replace("_", "-"), help=spec.summary)(writes(_stage_command(spec.name)))


_register_stage_commands()


# --- queries / augment commands ---


@app.command()
@writes
def queries(files: Annotated[list[str], typer.Argument(help="Photo paths or URLs, or CSV/JSONL files listing them "
                                                            "(column source, url, path or image).")],
            workspace: WorkspaceOpt = Path(".")) -> None:
    """Clean user query photos (orientation, crop, blur, resolution, NSFW) into the store and tables/queries."""
    from visprep.queries.stage import queries_stage

    ws = _open(workspace)
    try:
        with _progress() as bar:
            r = queries_stage(ws, files, progress=bar("queries"))
    except (FileNotFoundError, ValueError, ImportError) as exc:
        _fail(exc)
    console.print(f"queries {r.inputs}: accepted {r.accepted}, rejected {r.rejected}"
                  + (f" {r.by_reason}" if r.by_reason else "") + f" (run {r.run_id})")


@app.command("queries-calibrate-blur")
@writes
def queries_calibrate_blur(
        sharp: Annotated[list[Path], typer.Option("--sharp", help="Sharp example photos or folders of them.")],
        blurred: Annotated[list[Path], typer.Option("--blurred", help="Too-blurred example photos or folders.")],
        workspace: Annotated[Optional[Path], typer.Option("--workspace", "-w", file_okay=False,
                                                          help="Record the calibration as a run here.")] = None,
) -> None:
    """Pick the blur threshold that best separates labelled sharp and blurred photos."""
    from visprep.queries.sharpness import calibrate_blur_from_files

    try:
        cal = calibrate_blur_from_files(sharp, blurred)
    except (FileNotFoundError, ValueError) as exc:
        _fail(exc)
    if workspace is not None:
        ws = _open(workspace)
        with ws.run("queries-calibrate-blur", {"sharp": [str(p) for p in sharp],
                                               "blurred": [str(p) for p in blurred]}) as run:
            run.counts = {"sharp": cal.n_sharp, "blurred": cal.n_blurred}
            run.notes.append(json.dumps(cal.to_dict(), sort_keys=True))
    console.print_json(json.dumps(cal.to_dict()))
    console.print(f"put this in visprep.toml:\n[queries]\nblur_threshold = {cal.threshold}")


@app.command("augment-preview")
@writes
def augment_preview(image: Annotated[Path, typer.Argument(help="An image file to augment.")],
                    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")] = Path(
                        "augment-preview.png"),
                    workspace: WorkspaceOpt = Path("."),
                    policy: Annotated[Optional[str], typer.Option(help="Policy (default: augment.policy).")] = None,
                    n: Annotated[int, typer.Option("-n", help="Number of draws.")] = 16,
                    seed: Annotated[Optional[int], typer.Option(help="Seed (default: augment.seed).")] = None) -> None:
    """Write a grid PNG of one image under N draws of an augmentation policy (parameters saved in the run)."""
    from visprep.augment import preview_grid, resolve_policy, write_preview_png
    from visprep.images.decode import decode_rgb

    ws = _open(workspace)
    cfg = ws.config.augment
    name = policy or cfg.policy
    seed = cfg.seed if seed is None else seed
    try:
        params = resolve_policy(name, cfg.params if name == cfg.policy else {}, size=cfg.image_size)
        rgb = decode_rgb(image.read_bytes())
    except (OSError, ValueError) as exc:
        _fail(exc)
    with ws.run("augment-preview", {"policy": name, "params": params.to_dict(), "seed": seed, "n": n,
                                    "image": str(image), "out": str(out)}) as run:
        write_preview_png(out, preview_grid(rgb, params, n=n, seed=seed))
        run.counts = {"draws": n}
    console.print(f"wrote {out} ({n} draws of policy {name}, seed {seed})")


# --- experiment command ---


@app.command()
@writes
def experiment(workspace: WorkspaceOpt = Path("."),
               variants: Annotated[Optional[str], typer.Option(
                   help="Comma-separated variants (default [experiment] variants); frozen, in_batch and each "
                        "variant's control are always added.")] = None,
               seeds: Annotated[Optional[int], typer.Option(help="Seeds per variant.")] = None,
               steps: Annotated[Optional[int], typer.Option(help="Optimiser steps per model.")] = None) -> None:
    """Train a small head per data-preparation variant on frozen features; evaluate each on the eval judgments."""
    from visprep.experiment.stage import experiment_stage
    from visprep.split.check import SplitLeakError

    ws = _open(workspace)
    names = [v.strip() for v in variants.split(",") if v.strip()] if variants else None
    try:
        with _progress() as bar:
            r = experiment_stage(ws, variants=names, seeds=seeds, steps=steps, progress=bar("models"))
    except (FileNotFoundError, ValueError, SplitLeakError) as exc:
        _fail(exc)
    print_experiment(r)


def print_experiment(r: Any) -> None:
    """Print an `ExperimentResult`: one row per variant (metric means), its control and the nDCG@10 verdict."""
    from visprep.experiment.stage import METRICS, verdict

    by = {(row["variant"], row["metric"]): row for row in r.rows if row["status"] == "ok"}
    t = Table(title=f"experiment {r.run_id}: mean over queries (seeds averaged); difference against the control "
                    "with its 95% bootstrap CI")
    t.add_column("variant", no_wrap=True)
    for m in METRICS:
        t.add_column(m, justify="right")
    for col in ("control", "nDCG@10 vs control", "verdict"):
        t.add_column(col)
    for variant in dict.fromkeys(row["variant"] for row in r.rows):
        if (variant, METRICS[0]) not in by:
            continue
        head = by[(variant, METRICS[0])]
        d = head["diff_vs_control"]
        t.add_row(variant, *(f"{by[(variant, m)]['value']:.3f}" for m in METRICS), head["control"] or "",
                  "" if d is None else f"{d:+.3f} [{head['diff_ci_low']:+.3f}, {head['diff_ci_high']:+.3f}]",
                  verdict(head))
    console.print(t)
    for row in r.rows:
        if row["status"] == "skipped":
            console.print(f"skipped {row['variant']}: {row['reason']}")
    console.print(f"every metric with CIs and p values: {r.out_dir / 'results.md'} (and chart.png); took "
                  f"{r.seconds:.1f} s")


def _summary(ws: Workspace, seconds: float, report: dict[str, Any]) -> None:
    import pyarrow.compute as pc

    t = Table(title=f"visprep workspace {ws.root}")
    t.add_column("what")
    t.add_column("count", justify="right")
    from visprep.quality.mix import all_pairs

    products = ws.read_table("products", ["product_id"]).num_rows
    variants = ws.read_table("synthetic_products", ["product_id"]).num_rows
    imgs = ws.read_table("images", ["status"])
    views = ws.read_table("synthetic_views", ["image_id"]).num_rows
    pairs_t = all_pairs(ws, ["kind"])  # user-photo pairs live beside pairs
    q = ws.read_table("quarantine", ["stage", "reason"])
    t.add_row("catalog products", str(products))
    t.add_row("catalog images stored / decoded ok",
              f"{imgs.num_rows} / {pc.sum(pc.equal(imgs['status'], 'ok')).as_py() or 0}")
    if views or variants:
        t.add_row("synthetic views (colour variants, new products)", f"{views} ({variants})")
    for kind, n in _value_counts(pairs_t.column("kind").to_pylist()):
        t.add_row(f"pairs: {kind}", str(n))
    if ws.has_table("product_groups"):
        groups = _value_counts(ws.read_table("product_groups", ["group_id"]).column("group_id").to_pylist())
        multi = [n for _, n in groups if n > 1]
        t.add_row("near-duplicate groups (products in them)", f"{len(multi)} ({sum(multi)})")
    negatives = ws.read_table("negatives", ["kind"])
    t.add_row("negatives", str(negatives.num_rows))
    for kind, n in _value_counts(negatives.column("kind").to_pylist()):
        t.add_row(f"  {kind}", str(n))
    # The store's size after its last writer of this run (embed_views follows embed).
    embedded = next((r for r in (report.get("embed_views"), report.get("embed")) if hasattr(r, "store_total")), None)
    if embedded is not None:
        t.add_row(f"embeddings ({embedded.model_id})", str(embedded.store_total))
    if ws.has_table("batch_plan"):
        t.add_row("batch plan rows", str(ws.read_table("batch_plan", ["split"]).num_rows))
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
    from visprep.report.counts import workspace_counts

    ws = _open(workspace)
    counts = workspace_counts(ws)  # the same numbers the report shows
    tables = counts.tables
    last: dict[str, dict] = {}
    for r in ws.runs():
        last[r["stage"]] = r
    qc = [((s, r), n) for s, r, n in counts.quarantine]
    leak = None
    if "splits" in tables:  # the split-leak check: fails loudly, exit status 1
        from visprep.split.check import check_split_leaks

        leak = check_split_leaks(ws)
    # --- data quality: stale embeddings, class balance, popularity, shift ---
    from visprep.quality.report import quality_lines, quality_status

    quality_report = quality_status(ws)
    if as_json:
        console.print_json(json.dumps({"tables": tables, "last_runs": last, "quality": quality_report,
                                        "quarantine": [{"stage": s, "reason": r, "count": n} for (s, r), n in qc],
                                        "split_check": None if leak is None else
                                        {"ok": leak.ok, "leaks": leak.leaks, "warnings": leak.warnings}}))
        if leak is not None and not leak.ok:
            raise typer.Exit(1)
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
    for line in quality_lines(quality_report):  # data quality
        console.print(line, markup=False, highlight=False)
    if leak is not None:
        for w in leak.warnings:
            console.print(f"[yellow]split check warning:[/yellow] {w}")
        if not leak.ok:
            for line in leak.leaks:
                console.print(f"[bold red]SPLIT LEAK:[/bold red] {line}")
            raise typer.Exit(1)
        console.print(f"split check: no leak ({', '.join(f'{k} {v}' for k, v in leak.checked.items())})")


# --- report command ---


@app.command()
@writes
def report(workspace: WorkspaceOpt = Path("."),
           out: Annotated[Optional[Path], typer.Option("--out", "-o", help="HTML file to write (default "
                                                                         "<workspace>/report/index.html).")] = None,
           seed: Annotated[int, typer.Option(help="Seed of the sampled galleries.")] = 0) -> None:
    """Write a self-contained HTML report of the workspace (images inline, no network) to read before training."""
    from visprep.report import build_report

    ws = _open(workspace)
    try:
        r = build_report(ws, out=out, seed=seed)
    except (FileNotFoundError, ValueError) as exc:
        _fail(exc)
    empty = [name for name, has in r.sections.items() if not has]
    console.print(f"wrote {r.path} ({r.bytes / 1e6:.2f} MB, {r.thumbnails} thumbnails, {r.seconds:.1f} s)"
                  + (f"; no data yet for: {', '.join(empty)}" if empty else ""))


if __name__ == "__main__":
    app()
