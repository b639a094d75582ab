"""The preparation variants `visprep experiment` trains: each a small recipe of what the training data holds.

Every variant trains the same head with the same seeds, schedule and step budget; only the data differs. Each
names the control it isolates a choice against (the `control` column of `experiment_results`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Recipe:
    """What one variant's training data holds.

    Attributes:
        name: the variant's name.
        about: one line for reports.
        train: False for `frozen` (the backbone's features as they are).
        structure: "pk" (P x K batches of the plan, in-batch negatives) or "pairs" (random same-product pairs,
            random negatives only, no batch structure).
        groups: respect near-duplicate product groups (planner, negative rules, mining); False: group = product.
        ann: ANN hard negatives: None, "guard" (false-negative guard on, the default mining) or "noguard".
        events: interaction pairs as extra positives: None, "raw" or "debiased" weights.
        user_photos: user photos linked by events in the P x K batches.
        remine: re-mine the ANN negatives with the head being trained every `experiment.remine_every` steps (the
            spec mines "after each epoch" with the current model) instead of once with the frozen backbone.
        control: the variant this one is compared against to isolate its choice.
    """

    name: str
    about: str
    train: bool = True
    structure: Literal["pk", "pairs"] = "pk"
    groups: bool = True
    ann: Literal["guard", "noguard"] | None = None
    events: Literal["raw", "debiased"] | None = None
    user_photos: bool = False
    remine: bool = False
    control: str | None = "frozen"

    @property
    def data_key(self) -> tuple:
        """Variants with equal keys train on the same data, so they are trained once and share results."""
        return (self.train, self.structure, self.groups, self.ann, self.events, self.user_photos, self.remine)


VARIANTS: dict[str, Recipe] = {r.name: r for r in (
    Recipe("frozen", "no training: the backbone's features as they are", train=False, control=None),
    Recipe("random", "random same-product pairs (P x K / 2 per step), each with `negatives_per_anchor` random "
           "negatives only: no P x K structure, no in-batch negatives", structure="pairs"),
    Recipe("in_batch", "P x K batches of the plan, in-batch negatives"),
    Recipe("ann_hard", "in_batch + mined ANN hard negatives, false-negative guard off", ann="noguard",
           control="in_batch"),
    Recipe("ann_hard+guard", "in_batch + mined ANN hard negatives behind the false-negative guard (the default "
           "mining)", ann="guard", control="ann_hard"),
    Recipe("ann_hard+guard+remine", "ann_hard+guard with the ANN negatives re-mined from the head being trained "
           "every `experiment.remine_every` steps, against mining once with the frozen backbone", ann="guard",
           remine=True, control="ann_hard+guard"),
    Recipe("+dedup", "the default (ann_hard+guard) with near-duplicate groups respected, against the same run "
           "with groups ignored (no_dedup)", ann="guard", control="no_dedup"),
    Recipe("no_dedup", "control of +dedup: ann_hard+guard with near-duplicate groups ignored (group = product) in "
           "the plan, the mining and the negative rule", ann="guard", groups=False, control=None),
    Recipe("+events", "the default + interaction pairs (click, cart, purchase, co-view) as extra positives with "
           "raw weights", ann="guard", events="raw", control="+dedup"),
    Recipe("+debias", "+events with position- and popularity-debiased weights", ann="guard", events="debiased",
           control="+events"),
    Recipe("+user_photos", "the default + user photos linked by events in the P x K batches", ann="guard",
           user_photos=True, control="+dedup"),
)}
"""Registry of variants; `register_variant` adds a user's own."""

ALWAYS = ("frozen", "in_batch")
"""Variants every table compares against: trained (or evaluated) whenever an experiment runs."""


def register_variant(recipe: Recipe, *, replace: bool = False) -> None:
    """Add a user's own variant (its control must be registered)."""
    if recipe.name in VARIANTS and not replace:
        raise ValueError(f"variant {recipe.name!r} is already registered; pass replace=True")
    if recipe.control is not None and recipe.control not in VARIANTS and recipe.control != recipe.name:
        raise ValueError(f"variant {recipe.name!r}: unknown control {recipe.control!r}")
    VARIANTS[recipe.name] = recipe


def resolve_variants(names: list[str]) -> list[Recipe]:
    """The recipes of `names`, plus `frozen`, `in_batch` and the controls they need, in registry order.

    Raises:
        ValueError: an unknown name (the message lists the valid ones).
    """
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; valid: {', '.join(VARIANTS)}")
    wanted = set(names) | set(ALWAYS)
    while True:  # controls of controls too: +debias needs +events, which needs +dedup, ...
        more = {VARIANTS[n].control for n in wanted if VARIANTS[n].control} - wanted
        if not more:
            break
        wanted |= more  # type: ignore[arg-type]
    return [r for name, r in VARIANTS.items() if name in wanted]
