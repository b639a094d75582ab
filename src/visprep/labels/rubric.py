"""The graded relevance rubric (0–4), defined once: reports, exports and the CLI show these names."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Grade:
    """One grade of the rubric: its value, short name and the instruction raters read."""

    value: int
    name: str
    description: str


RUBRIC: tuple[Grade, ...] = (
    Grade(0, "Irrelevant", "Wrong category: a shopper looking for the query item would not want this."),
    Grade(1, "Related", "Same category, different style."),
    Grade(2, "Similar", "Same category, similar style."),
    Grade(3, "Highly similar", "Same style, different colour (or another minor variant)."),
    Grade(4, "Exact", "The same product, in a different photo."),
)
"""The grades, lowest first; `RUBRIC[g].value == g`."""

MIN_GRADE = RUBRIC[0].value
MAX_GRADE = RUBRIC[-1].value
GRADE_NAMES: dict[int, str] = {g.value: g.name for g in RUBRIC}


def grade_name(grade: int) -> str:
    """Return the rubric name of `grade` ("Exact" for 4); ValueError outside 0–4."""
    try:
        return GRADE_NAMES[int(grade)]
    except KeyError:
        raise ValueError(f"grade {grade!r} is outside the rubric {MIN_GRADE}–{MAX_GRADE}") from None


def rubric_text() -> str:
    """The rubric as plain text, one grade a line (for rater instructions, reports and export headers)."""
    return "\n".join(f"{g.value} {g.name}: {g.description}" for g in reversed(RUBRIC))
