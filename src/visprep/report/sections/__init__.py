"""The report's sections, in page order, in one named registry.

A section is a `SectionSpec`: an anchor id, a heading, when it applies (which data it needs) and a `render`
function that returns its body. The builder owns the bookkeeping: a section whose data is absent gets a notice
saying what to run instead of its body, so no section has to handle an empty workspace on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from visprep.report.context import ReportContext
from visprep.report.sections import (
    behaviour,
    catalog,
    duplicates,
    evaluation,
    image_quality,
    labels,
    overview,
    pairs,
    quarantine,
    runs,
)


@dataclass(frozen=True)
class SectionSpec:
    """One section: `render(ctx)` returns its body HTML; it is called only when `applies(ctx)`."""

    id: str
    title: str
    applies: Callable[[ReportContext], bool]
    no_data: str  # what the page says when the section does not apply: what is missing, what to run
    render: Callable[[ReportContext], str]


def _tables(*names: str) -> Callable[[ReportContext], bool]:
    """Applies when any of the tables `names` has rows."""
    return lambda ctx: any(ctx.rows(n) > 0 for n in names)


SECTIONS: dict[str, SectionSpec] = {s.id: s for s in (
    SectionSpec("overview", "Overview", lambda ctx: True, "", overview.render),
    SectionSpec("catalog", "Catalog", _tables("products"),
                "No products yet: ingest a catalog (`visprep catalog FILE` or `visprep run FILE`).", catalog.render),
    SectionSpec("quarantine", "Quarantine", _tables("quarantine"),
                "Nothing quarantined: every record so far was accepted.", quarantine.render),
    SectionSpec("image-quality", "Image quality", _tables("images"),
                "No decoded images yet: run `visprep fetch` and `visprep inspect`.", image_quality.render),
    SectionSpec("duplicates", "Near-duplicates", _tables("product_groups", "duplicate_edges"),
                "No near-duplicate groups: run `visprep dedup`.", duplicates.render),
    SectionSpec("pairs", "Pairs and negatives", _tables("pairs", "user_pairs", "negatives"),
                "No training pairs yet: run `visprep pairs` and `visprep mine`.", pairs.render),
    SectionSpec("behaviour", "Behaviour", _tables("events", "interaction_pairs", "popularity"),
                "No behaviour events: ingest them with `visprep events --from FILE` (or --kafka), then "
                "`visprep popularity`.", behaviour.render),
    SectionSpec("labels", "Labels", _tables("judgments", "eval_qrels"),
                "No human judgments: import rater files with `visprep labels FILE`.", labels.render),
    SectionSpec("evaluation", "Evaluation and experiments", _tables("eval_metrics", "experiment_results"),
                "No evaluation yet: run `visprep evaluate -m MODEL` or `visprep experiment` after importing "
                "labels.", evaluation.render),
    SectionSpec("runs", "Runs", lambda ctx: bool(runs.run_records(ctx)),
                "No stage has run in this workspace yet.", runs.render),
)}


def resolve_sections(names: Sequence[str] | None) -> list[SectionSpec]:
    """The sections named (all, in page order, when None); an unknown name raises with the valid ones."""
    if names is None:
        return list(SECTIONS.values())
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown report section(s) {unknown}; valid sections: {', '.join(SECTIONS)}")
    return [SECTIONS[n] for n in names]
