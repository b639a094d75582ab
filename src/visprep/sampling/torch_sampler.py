"""A torch `BatchSampler` (pass it as `DataLoader(batch_sampler=...)`) over the P x K planner."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from visprep.sampling.planner import plan_epoch

try:
    from torch.utils.data import Sampler
except ImportError:  # torch is optional for planning; the sampler class needs it
    Sampler = object  # type: ignore[assignment,misc]


def _codes(values: Sequence) -> np.ndarray:
    return np.unique(np.asarray([str(v) for v in values]), return_inverse=True)[1].astype(np.int64)


class PKBatchSampler(Sampler):  # type: ignore[misc,type-arg]
    """Yield lists of P x K dataset indices per batch; every index at least once per epoch.

    Args:
        classes: per dataset index, its class (product) label.
        groups: per index, its product group (default: the class); groups never share a batch.
        categories: per index, its top-level category (default: one stratum).
        p, k: classes per batch, items per class.
        temperature: rare-category over-sampling (1 = natural shares).
        weights: per index popularity weight for over-sampled classes.
        seed: epoch e is planned with seed + e; call `set_epoch` like a DistributedSampler.
    """

    def __init__(self, classes: Sequence, *, groups: Sequence | None = None, categories: Sequence | None = None,
                 p: int, k: int, temperature: float = 1.0, weights: Sequence[float] | None = None,
                 seed: int = 0) -> None:
        self.product = _codes(classes)
        self.group = _codes(groups) if groups is not None else self.product
        self.category = _codes(categories) if categories is not None else np.zeros(len(self.product), np.int64)
        self.p, self.k, self.temperature, self.seed = p, k, temperature, seed
        self.weights = None if weights is None else np.asarray(weights, float)
        self.epoch = 0
        self._plan = None
        self._plan_epoch = -1

    def set_epoch(self, epoch: int) -> None:
        """Plan epoch `epoch` next."""
        self.epoch = epoch

    def plan(self):
        """The `BatchPlan` of the current epoch (cached)."""
        if self._plan_epoch != self.epoch:
            self._plan = plan_epoch(self.product, self.group, self.category, p=self.p, k=self.k,
                                    temperature=self.temperature, weight=self.weights,
                                    rng=np.random.default_rng(self.seed + self.epoch))
            self._plan_epoch = self.epoch
        return self._plan

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.plan().item:
            yield batch.reshape(-1).tolist()

    def __len__(self) -> int:
        return self.plan().num_batches
