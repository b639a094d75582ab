"""`visprep experiment`: the loss against a brute-force oracle, and the whole run on a small real workspace."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from visprep.demo.sources import write_demo_sources
from visprep.experiment.model import contrastive_loss
from visprep.experiment.stage import experiment_stage
from visprep.experiment.variants import resolve_variants
from visprep.labels.demo import build_demo_judgments
from visprep.labels.stage import labels_stage
from visprep.pipeline import run_pipeline
from visprep.schema import INTERACTION_PAIRS
from visprep.split.check import SplitLeakError
from visprep.workspace import Workspace

torch = pytest.importorskip("torch")


def _oracle_loss(z, labels, t, same, weight, neg, neg_mask, ev, ev_mask, ev_w, lam):
    """The loss of visprep.experiment.model, one anchor and one term at a time."""
    z, neg, ev = (np.asarray(x, np.float64) for x in (z, neg, ev))
    n = len(z)
    num = den = 0.0
    ev_terms = []
    w_valid = [ev_w[i][e] for i in range(n) for e in range(ev.shape[1]) if ev_mask[i][e]]
    w_mean = np.mean(w_valid) if w_valid else 1.0
    for i in range(n):
        logits = [z[i] @ z[j] / t for j in range(n) if j != i and not same[i][j]]
        logits += [z[i] @ neg[i, m] / t for m in range(neg.shape[1]) if neg_mask[i][m]]
        logits += [z[i] @ ev[i, e] / t for e in range(ev.shape[1]) if ev_mask[i][e]]
        lse = np.log(np.sum(np.exp(logits)))
        pos = [j for j in range(n) if j != i and not same[i][j] and labels[j] == labels[i]]
        if pos:
            li = -np.mean([z[i] @ z[j] / t - lse for j in pos])
            num += weight[i] * li
            den += weight[i]
        for e in range(ev.shape[1]):
            if ev_mask[i][e]:
                ev_terms.append(ev_w[i][e] / w_mean * -(z[i] @ ev[i, e] / t - lse))
    total = num / den if den else 0.0
    if ev_terms:
        total += lam * np.sum(ev_terms) / len(ev_terms)
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, d, m, e = 8, 5, 3, 2

    def unit(*shape):
        x = rng.normal(size=shape)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    z, neg, ev = unit(n, d), unit(n, m, d), unit(n, e, d)
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3])
    image = np.array([0, 1, 1, 2, 3, 4, 5, 6])  # slots 1 and 2 hold the same image (a top-up repeat)
    same = image[:, None] == image[None, :]
    np.fill_diagonal(same, False)
    weight = rng.uniform(0.2, 2.0, n)
    neg_mask, ev_mask = rng.random((n, m)) < 0.7, rng.random((n, e)) < 0.5
    ev_w = rng.uniform(0.1, 3.0, (n, e))
    got = contrastive_loss(torch.tensor(z), torch.tensor(labels), temperature=0.2, same=torch.tensor(same),
                           weight=torch.tensor(weight), neg=torch.tensor(neg), neg_mask=torch.tensor(neg_mask),
                           ev=torch.tensor(ev), ev_mask=torch.tensor(ev_mask), ev_weight=torch.tensor(ev_w),
                           event_weight=0.7)
    want = _oracle_loss(z, labels, 0.2, same, weight, neg, neg_mask, ev, ev_mask, ev_w, 0.7)
    assert float(got) == pytest.approx(want, rel=1e-9)


def test_unknown_variant_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid: frozen, random, in_batch"):
        resolve_variants(["in_batch", "fancy"])
    names = [r.name for r in resolve_variants(["+debias"])]
    assert names == ["frozen", "in_batch", "+dedup", "no_dedup", "+events", "+debias"]  # controls come along


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("experiment")
    ws = Workspace(root / "ws")
    ws.root.mkdir()
    ws.config_path.write_text(
        "[export]\nmax_count = 40\n[inspect]\nworkers = 2\nbatch_size = 32\n"
        '[embed]\noptions = { profile = "imagenet-64" }\n'
        '[synthetic]\nbackgrounds = ["texture"]\nreframe_scales = [0.8]\nhue_shifts_deg = [180.0]\n'
        "[sampling]\np = 8\nk = 2\n[experiment]\nhidden = 64\ndim = 32\nbootstrap = 200\n"
        "[evaluate]\npermutations = 200\n")
    src = write_demo_sources(root / "src", n_products=150, seed=11)
    run_pipeline(ws, src.catalog_files)
    labels_stage(ws, [build_demo_judgments(ws, seed=0, n_queries=12)])
    run_pipeline(ws)  # the split pins judged products to eval
    return ws


def test_experiment_trains_evaluates_and_reports(ws: Workspace) -> None:
    r = experiment_stage(ws, variants=["in_batch", "ann_hard+guard", "+events", "+user_photos"], seeds=2, steps=15)
    ok = {row["variant"] for row in r.rows if row["status"] == "ok"}
    assert ok == {"frozen", "in_batch", "ann_hard", "ann_hard+guard", "+dedup", "no_dedup"}
    skipped = {row["variant"]: row["reason"] for row in r.rows if row["status"] == "skipped"}
    assert set(skipped) == {"+events", "+user_photos"} and "interaction_pairs" in skipped["+events"]
    rows = {(row["variant"], row["metric"]): row for row in r.rows if row["status"] == "ok"}
    for (variant, metric), row in rows.items():
        assert row["ci_low"] <= row["value"] <= row["ci_high"] and row["queries"] > 0
        if variant != "frozen":
            assert row["diff_vs_frozen"] == pytest.approx(row["value"] - rows[("frozen", metric)]["value"])
            assert 0 < row["p_vs_frozen"] <= 1 and row["seeds"] == 2
    # +dedup is the default recipe (trained once) compared against its groups-ignored control.
    assert rows[("+dedup", "map")]["value"] == rows[("ann_hard+guard", "map")]["value"]
    assert rows[("+dedup", "map")]["control"] == "no_dedup" and ("no_dedup", "map") in rows
    assert rows[("ann_hard", "ndcg@10")]["control"] == "in_batch"
    table = ws.read_table("experiment_results").to_pylist()
    assert len([t for t in table if t["run_id"] == r.run_id]) == len(r.rows)
    assert (r.out_dir / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (r.out_dir / "results.md").read_text()
    assert "| in_batch | ndcg@10 |" in md and "+events" in md
    run = ws.last_run("experiment")
    assert run["counts"]["models_trained"] == 2 * 4 and run["params"]["resolved"]["steps"] == 15


def test_event_variants_run_when_events_link_training_products(ws: Workspace) -> None:
    splits = ws.read_table("splits").to_pylist()
    train = sorted(r["product_id"] for r in splits if r["split"] == "train")
    rng = np.random.default_rng(0)
    rows = []
    for a, b in rng.choice(len(train), size=(40, 2)):
        if a != b:
            rows.append({"anchor_id": train[a], "anchor_type": "product", "product_id": train[b], "kind": "coview",
                         "count": 2, "raw_weight": float(rng.uniform(1, 20)),
                         "debiased_weight": float(rng.uniform(0.1, 2))})
    ws.write_table("interaction_pairs", pa.Table.from_pylist(rows, schema=INTERACTION_PAIRS))
    try:
        r = experiment_stage(ws, variants=["+debias"], seeds=1, steps=10)
    finally:
        ws.table_path("interaction_pairs").unlink()
    status = {row["variant"]: row["status"] for row in r.rows}
    assert status == {"frozen": "ok", "in_batch": "ok", "+dedup": "ok", "no_dedup": "ok", "+events": "ok",
                      "+debias": "ok"}
    by = {(row["variant"], row["metric"]): row for row in r.rows}
    assert by[("+debias", "map")]["control"] == "+events"


def test_refuses_a_leaking_workspace(ws: Workspace) -> None:
    splits = ws.read_table("splits")
    qrels = ws.read_table("eval_qrels").to_pylist()
    judged = next(q["product_id"] for q in qrels if q["grade"] == 4)
    moved = pa.Table.from_pylist([{**r, "split": "train"} if r["product_id"] == judged else r
                                  for r in splits.to_pylist()], schema=splits.schema)
    ws.write_table("splits", moved)
    try:
        with pytest.raises(SplitLeakError, match="judged"):
            experiment_stage(ws, variants=["in_batch"], seeds=1, steps=2)
    finally:
        ws.write_table("splits", splits)


def test_remine_variant_mines_with_the_head_being_trained(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """ann_hard+guard+remine re-mines every `remine_every` steps from the head's embeddings and is
    compared against mining once with the frozen backbone."""
    import visprep.experiment.stage as stage

    calls: list[str] = []
    real = stage.mine_ann

    def spy(ws_, items, split, payload, *, guard, store=None):
        # The frozen backbone's vectors are the store's (its shared index); a head's are not.
        assert (store is None) == payload.model_id.endswith("+head")
        calls.append(payload.model_id)
        return real(ws_, items, split, payload, guard=guard, store=store)

    monkeypatch.setattr(stage, "mine_ann", spy)
    ws.set_config(ws.config.model_copy(update={"experiment": ws.config.experiment.model_copy(
        update={"remine_every": 4})}))
    try:
        r = experiment_stage(ws, variants=["ann_hard+guard+remine"], seeds=1, steps=10)
    finally:
        ws.set_config(ws.config.model_copy(update={"experiment": ws.config.experiment.model_copy(
            update={"remine_every": 100})}))
    rows = {(row["variant"], row["metric"]): row for row in r.rows if row["status"] == "ok"}
    assert rows[("ann_hard+guard+remine", "ndcg@10")]["control"] == "ann_hard+guard"
    head_mines = [c for c in calls if c.endswith("+head")]
    assert len(head_mines) == 2  # steps 4 and 8 of 10
    assert len(calls) - len(head_mines) == 2  # frozen-backbone mining, guard on and off, once each
