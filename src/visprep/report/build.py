"""`build_report`: render every section over a workspace into one self-contained HTML file."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from visprep.report.context import ReportContext, ReportLimits
from visprep.report.page import RenderedSection, empty, render_page
from visprep.report.sections import SectionSpec, resolve_sections
from visprep.report.thumbs import THUMB_PX, Thumbnailer
from visprep.workspace import Workspace, atomic_write_bytes, utcnow


@dataclass(frozen=True)
class ReportResult:
    """What `build_report` wrote.

    Attributes:
        path: the HTML file.
        bytes: its size.
        seconds: build time.
        sections: section id -> whether the workspace had data for it.
        thumbnails: images inlined as thumbnails (failed ones are shown as grey boxes and not counted).
        run_id: the report's run record.
    """

    path: Path
    bytes: int
    seconds: float
    sections: dict[str, bool]
    thumbnails: int
    run_id: str


def report_path(ws: Workspace) -> Path:
    """Where the report of `ws` goes: `<workspace>/report/index.html`."""
    return ws.root / "report" / "index.html"


def build_report(ws: Workspace, *, out: Path | None = None, seed: int = 0, sections: Sequence[str] | None = None,
                 limits: ReportLimits | None = None, thumb_px: int = THUMB_PX) -> ReportResult:
    """Write the HTML report of `ws` to `out` (default `<workspace>/report/index.html`), atomically.

    Args:
        ws: an existing workspace (tables may be missing: their sections say so).
        out: the HTML file to write.
        seed: picks the gallery samples; the same workspace and seed give the same page.
        sections: section ids to include, in page order (default all; see `visprep.report.SECTIONS`).
        limits: how many examples, rows and points the page shows at most.
        thumb_px: longest side of the inline thumbnails, in pixels.

    Returns:
        What was written, with a run record `report` in the workspace.
    """
    if not ws.root.is_dir():
        raise FileNotFoundError(f"workspace {ws.root} does not exist")
    specs = resolve_sections(sections)
    limits = limits or ReportLimits()
    out = Path(out) if out is not None else report_path(ws)
    params = {"seed": seed, "sections": [s.id for s in specs], "limits": asdict(limits), "thumb_px": thumb_px,
              "out": str(out)}
    t0 = time.perf_counter()
    # The report writes nothing another stage reads, so it does not take the writer lock (a report may be built
    # while a stage runs; each table it reads is one consistent version).
    with ws.run("report", params, lock=False) as run:
        thumbs = Thumbnailer(ws, size=thumb_px)
        ctx = ReportContext(ws, seed=seed, limits=limits, thumbs=thumbs, exclude_run=run.run_id)
        try:
            rendered = [_render(spec, ctx) for spec in specs]
        finally:
            ctx.close()
        html = render_page(rendered, title=f"visprep report: {ws.root.name}",
                           subtitle=f"{ws.root} · built {utcnow():%Y-%m-%d %H:%M} UTC · seed {seed}")
        data = html.encode("utf-8")
        atomic_write_bytes(out, data)
        run.counts = {"bytes": len(data), "sections_with_data": sum(not s.empty for s in rendered),
                      "sections_empty": sum(s.empty for s in rendered), "thumbnails": thumbs.made,
                      "thumbnails_failed": thumbs.failed}
        run.metrics = {"path": str(out)}
    return ReportResult(path=out, bytes=len(data), seconds=round(time.perf_counter() - t0, 3),
                        sections={s.id: not s.empty for s in rendered}, thumbnails=thumbs.made,
                        run_id=run.run_id)


def _render(spec: SectionSpec, ctx: ReportContext) -> RenderedSection:
    """The section's body, or its no-data notice when the workspace lacks what it shows."""
    if not spec.applies(ctx):
        return RenderedSection(spec.id, spec.title, empty(spec.no_data), empty=True)
    return RenderedSection(spec.id, spec.title, spec.render(ctx))

