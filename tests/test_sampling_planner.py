"""Property tests of the P x K planner and the torch BatchSampler: coverage, shape, no group collisions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visprep.sampling.planner import plan_epoch
from visprep.sampling.torch_sampler import PKBatchSampler


@st.composite
def catalogs(draw):
    n_products = draw(st.integers(4, 30))
    n_groups = draw(st.integers(2, n_products))
    prod_group = [draw(st.integers(0, n_groups - 1)) for _ in range(n_products)]
    prod_cat = [draw(st.integers(0, 3)) for _ in range(n_products)]
    sizes = [draw(st.integers(1, 6)) for _ in range(n_products)]
    product = np.repeat(np.arange(n_products), sizes)
    return product, np.array(prod_group)[product], np.array(prod_cat)[product]


@given(cat=catalogs(), p=st.integers(2, 6), k=st.integers(1, 4), t=st.sampled_from([1.0, 2.0, 10.0]),
       seed=st.integers(0, 1000))
@settings(max_examples=120, deadline=None)
def test_plan_shape_coverage_and_no_group_collisions(cat, p, k, t, seed) -> None:
    product, group, category = cat
    if len(np.unique(group)) < p:
        with pytest.raises(ValueError, match="distinct product groups"):
            plan_epoch(product, group, category, p=p, k=k, temperature=t, rng=np.random.default_rng(seed))
        return
    plan = plan_epoch(product, group, category, p=p, k=k, temperature=t, rng=np.random.default_rng(seed))
    assert plan.item.shape[1:] == (p, k) and plan.repeat.shape == plan.item.shape
    # Coverage: every item at least once per epoch, and once as a non-repeat.
    assert set(plan.item.reshape(-1).tolist()) == set(range(len(product)))
    first = plan.item[~plan.repeat]
    assert sorted(first.tolist()) == list(range(len(product)))
    for batch in plan.item:
        classes_product = [set(product[c].tolist()) for c in batch]
        assert all(len(s) == 1 for s in classes_product)  # a class is one product
        groups = [int(group[c[0]]) for c in batch]
        assert len(groups) == len(set(groups))  # no group in two classes of one batch


def test_rare_categories_are_over_sampled_with_temperature() -> None:
    # 200 single-image products in category 0, 10 in category 1.
    product = np.arange(210)
    category = np.array([0] * 200 + [1] * 10)
    counts = {}
    for t in (1.0, 4.0):
        plan = plan_epoch(product, product, category, p=10, k=1, temperature=t, rng=np.random.default_rng(0))
        counts[t] = (category[plan.item.reshape(-1)] == 1).sum()
    assert counts[1.0] >= 10 and counts[4.0] > 3 * counts[1.0]


def test_popularity_weights_steer_over_sampling() -> None:
    product = np.arange(110)
    category = np.array([0] * 100 + [1] * 10)
    weight = np.ones(110)
    weight[100] = 1000.0  # one popular product in the rare category
    plan = plan_epoch(product, product, category, p=10, k=1, temperature=4.0, weight=weight,
                      rng=np.random.default_rng(0))
    extra = np.bincount(plan.item[plan.repeat], minlength=110)
    # the popular product fills its one slot per batch (its group may not appear twice), far above any other
    assert extra[100] >= plan.num_batches - 2 and extra[100] > 3 * np.delete(extra, 100).max()


def test_batch_sampler_with_dataloader() -> None:
    torch = pytest.importorskip("torch")
    labels = [i // 3 for i in range(60)]  # 20 products x 3 images
    sampler = PKBatchSampler(labels, p=4, k=3, seed=1)
    data = torch.arange(60)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler)
    seen = set()
    n = 0
    for batch in loader:
        assert batch.shape == (12,)
        assert len({labels[i] for i in batch.tolist()}) == 4
        seen |= set(batch.tolist())
        n += 1
    assert n == len(sampler) == 5 and seen == set(range(60))
    first = [b for b in sampler]
    sampler.set_epoch(1)
    assert [b for b in sampler] != first
