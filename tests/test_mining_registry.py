"""The miners behind one interface: the registry, every miner at once through `mine_stage`, and a new miner added
by a test (a class, its registration, the kind in `mining.kinds`)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from visprep.config import MiningConfig, VisprepConfig
from visprep.mining.miners import MINERS, Miner, MinerResult, MiningContext, register_miner
from visprep.mining.stage import mine_stage
from visprep.schema import NEGATIVES
from visprep.workspace import Workspace

BUILT_IN = ["other_category", "random", "brand", "skip_above", "ann"]


def _ws(tmp_path) -> Workspace:
    from test_mining_stage import _workspace

    tmp_path.mkdir(parents=True, exist_ok=True)
    return _workspace(tmp_path)


def _with_kinds(ws: Workspace, kinds: list[str]) -> Workspace:
    cfg = ws.config
    ws.set_config(VisprepConfig.model_validate({**cfg.model_dump(), "mining": {**cfg.mining.model_dump(),
                                                                              "kinds": kinds}}))
    return ws


def test_registry_holds_every_built_in_miner_in_the_default_order() -> None:
    assert list(MINERS)[: len(BUILT_IN)] == BUILT_IN
    assert MiningConfig().kinds == BUILT_IN
    fields = set(MiningConfig.model_fields)
    for name, miner in MINERS.items():
        assert miner.name == name and isinstance(miner, Miner)
        assert miner.config_keys and set(miner.config_keys) <= fields, (name, miner.config_keys)


def test_config_rejects_a_kind_no_miner_has() -> None:
    with pytest.raises(ValidationError, match="'nope'.*registered: other_category"):
        MiningConfig(kinds=["random", "nope"])


def test_register_miner_refuses_a_second_miner_of_a_name() -> None:
    class Again(Miner):
        name = "random"

        def mine(self, ctx: MiningContext) -> MinerResult:
            return MinerResult(NEGATIVES.empty_table())

    with pytest.raises(ValueError, match="'random' is already registered"):
        register_miner(Again())
    assert type(MINERS["random"]).__name__ == "RandomMiner"


def test_a_miner_result_must_have_the_negatives_schema() -> None:
    with pytest.raises(ValueError, match="negatives schema"):
        MinerResult(pa.table({"anchor_id": ["a"]}))


def test_every_miner_at_once_never_a_positive_and_counts_match_rows(tmp_path) -> None:
    ws = _ws(tmp_path)
    counts = mine_stage(ws)
    neg = ws.read_table("negatives")
    kinds = neg.column("kind").to_pylist()
    assert set(kinds) == set(BUILT_IN)
    for kind in BUILT_IN:
        assert counts[f"{kind}.rows"] == kinds.count(kind) > 0
    # Rows of every kind name images of the pool, in the anchor's split, never of the anchor's own group.
    group = {f"P{i:02d}": ("G0" if i < 2 else f"P{i:02d}") for i in range(24)}
    for r in neg.to_pylist():
        assert group[r["anchor_product_id"]] != group[r["negative_product_id"]], r
        assert r["split"] == "train" and r["anchor_id"] != r["negative_id"]
    assert neg.schema.equals(NEGATIVES)


def test_the_order_of_mining_kinds_does_not_change_the_table(tmp_path) -> None:
    """Miners run in registration order (the shared random stream), whatever order the config lists them in."""
    a = _ws(tmp_path / "a")
    mine_stage(a)
    b = _with_kinds(_ws(tmp_path / "b"), list(reversed(BUILT_IN)))
    mine_stage(b)
    key = ["kind", "anchor_id", "rank", "negative_id"]
    assert (a.read_table("negatives").sort_by([(k, "ascending") for k in key]).to_pylist()
            == b.read_table("negatives").sort_by([(k, "ascending") for k in key]).to_pylist())


class NextItemMiner(Miner):
    """A test miner: each anchor's next pool item (wrapping), unless it is a positive."""

    name = "next_item"
    config_keys = ("same_split",)

    def mine(self, ctx: MiningContext) -> MinerResult:
        parts, dropped = [], 0
        for rows in ctx.pools:
            a = np.arange(len(rows))
            n = (a + 1) % len(rows)
            pos = ctx.positives.subset(rows).contains(a, ctx.items.group[rows][n][:, None])[:, 0]
            dropped += int(pos.sum())
            parts.append((rows, a[~pos], n[~pos], np.ones(int((~pos).sum()), np.int32), None))
        return self.result(ctx, parts, {"positive": dropped}, ["next_item: one per anchor"])


@pytest.fixture
def next_item() -> Iterator[Miner]:
    miner = register_miner(NextItemMiner())
    try:
        yield miner
    finally:
        MINERS.pop(miner.name)


def test_a_new_miner_is_a_class_and_a_registration(tmp_path, next_item) -> None:
    ws = _with_kinds(_ws(tmp_path), ["random", "next_item"])
    counts = mine_stage(ws)
    neg = ws.read_table("negatives")
    mine = [r for r in neg.to_pylist() if r["kind"] == "next_item"]
    assert counts["next_item.rows"] == len(mine) == 72 - counts["next_item.positive"]
    # The pool is ordered by product then position: every image but a product's last has its own product next
    # (2 x 24), and P00's last image has P01's first (one group).
    assert counts["next_item.positive"] == 49
    assert {r["kind"] for r in neg.to_pylist()} == {"random", "next_item"}
    assert "next_item: one per anchor" in ws.last_run("mine")["notes"]
    assert all(r["rank"] == 1 and r["score"] is None for r in mine)


def test_mine_stage_names_a_kind_whose_miner_was_unregistered(tmp_path) -> None:
    miner = register_miner(NextItemMiner())
    try:
        ws = _with_kinds(_ws(tmp_path), ["random", "next_item"])
    finally:
        MINERS.pop(miner.name)
    with pytest.raises(ValueError, match="mining.kinds: no registered miner 'next_item'"):
        mine_stage(ws)
