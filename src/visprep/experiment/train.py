"""Train one projection head on frozen features: P x K batches from a `TrainingSource`, or random pairs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from visprep.experiment.model import contrastive_loss, projection_head
from visprep.training.batches import TrainingSource


def pk_batches(source: TrainingSource, *, start_epoch: int = 0) -> Iterator[dict[str, Any]]:
    """The source's batches, epoch after epoch from `start_epoch`, in plan order (as a trainer reads them)."""
    epoch = start_epoch
    while True:
        yield from source.iter_batches(epoch)
        epoch += 1


def pair_batches(source: TrainingSource, *, size: int, negatives: int, seed: int) -> Iterator[dict[str, Any]]:
    """The `random` variant's batches: `size` anchors drawn uniformly from the split's items whose product has
    another image, each with one other image of its product and `negatives` random items of other groups.
    Yields features for anchors (size, D), positives (size, D) and negatives (size, negatives, D)."""
    items = source.items
    rows = source.planned[0]
    pid = items.product_id[rows]
    group = items.group[rows]
    payload_rows = source.payload.rows(pid, items.image_id[rows])
    by_product: dict[str, list[int]] = {}
    for j, p in enumerate(pid.tolist()):
        by_product.setdefault(p, []).append(j)
    anchors = np.array([j for j, p in enumerate(pid.tolist())
                        if len({items.image_id[rows[k]] for k in by_product[p]}) > 1], np.int64)
    if len(anchors) == 0:
        raise ValueError(f"split {source.split!r}: no product has two images, so no same-product pair exists")
    rng = np.random.default_rng([seed, 7])
    while True:
        a = anchors[rng.integers(0, len(anchors), size)]
        pos = np.empty(size, np.int64)
        for i, j in enumerate(a.tolist()):
            own = [k for k in by_product[pid[j]] if items.image_id[rows[k]] != items.image_id[rows[j]]]
            pos[i] = own[int(rng.integers(len(own)))]
        neg = rng.integers(0, len(rows), (size, negatives))
        clash = group[neg] == group[a][:, None]
        while clash.any():  # redraw the negatives that hit the anchor's own group
            neg[clash] = rng.integers(0, len(rows), int(clash.sum()))
            clash = group[neg] == group[a][:, None]
        yield {"anchor": source.payload.load(payload_rows[a]), "positive": source.payload.load(payload_rows[pos]),
               "negatives": source.payload.load(payload_rows[neg.reshape(-1)]).reshape(size, negatives, -1)}


def train_head(source: TrainingSource, *, structure: str, steps: int, hidden: int, dim: int, lr: float,
               weight_decay: float, temperature: float, seed: int, event_weight: float = 0.0,
               event_weights: str = "raw", random_negatives: int = 4,
               remine: Callable[[Any], TrainingSource] | None = None, remine_every: int = 0
               ) -> tuple[Any, list[float]]:
    """Train a projection head; return it (eval mode) and the loss of every step.

    Args:
        source: features payload; its negatives / event options decide what the batches hold.
        structure: "pk" (plan batches, multi-positive InfoNCE with in-batch negatives) or "pairs" (random pairs).
        event_weights: which weights the event term uses: "raw" or "debiased".
        random_negatives: random negatives per anchor of the "pairs" structure.
        remine: called with the head (in eval mode) every `remine_every` steps of a "pk" run; returns the source
            with negatives mined from the head's embeddings, which the next batches draw from.
    """
    import torch

    if source.payload.kind != "features":
        raise ValueError("the experiment trains on frozen features: build the source with payload='features'")
    dim_in = source.payload.vectors.shape[1]
    head = projection_head(dim_in, hidden, dim, seed=seed)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    norm = torch.nn.functional.normalize
    losses: list[float] = []
    n = source.batch_size()
    if structure == "pairs":
        # The same budget of anchor and positive embeddings per step as a P x K batch (n), and as many random
        # negatives per anchor as the variants with mined negatives add (at least one).
        batches: Iterator[dict[str, Any]] = pair_batches(source, size=n // 2, negatives=max(1, random_negatives),
                                                         seed=seed)
    elif structure == "pk":
        batches = pk_batches(source.with_options(seed=seed))
    else:
        raise ValueError(f"unknown structure {structure!r}; valid: pk, pairs")
    head.train()
    remined = 0
    for step in range(steps):
        if remine is not None and remine_every > 0 and structure == "pk" and step > 0 and step % remine_every == 0:
            head.eval()
            source = remine(head)
            head.train()
            remined += 1
            batches = pk_batches(source.with_options(seed=seed), start_epoch=remined)
        b = next(batches)
        if structure == "pairs":
            za = norm(head(torch.from_numpy(b["anchor"])), dim=1)
            zp = norm(head(torch.from_numpy(b["positive"])), dim=1)
            zn = norm(head(torch.from_numpy(b["negatives"])), dim=2)
            logits = torch.cat([(za * zp).sum(1, keepdim=True), torch.einsum("nd,nmd->nm", za, zn)], 1)
            loss = torch.nn.functional.cross_entropy(logits / temperature, torch.zeros(len(za), dtype=torch.long))
        else:
            z = norm(head(torch.from_numpy(b["features"])), dim=1)
            kw: dict[str, Any] = {}
            if "negatives" in b:
                nb = b["negatives"]
                kw["neg"] = norm(head(torch.from_numpy(nb["features"])), dim=2)
                kw["neg_mask"] = torch.from_numpy(nb["mask"])
            if "event_positives" in b:
                eb = b["event_positives"]
                kw["ev"] = norm(head(torch.from_numpy(eb["features"])), dim=2)
                kw["ev_mask"] = torch.from_numpy(eb["mask"])
                kw["ev_weight"] = torch.from_numpy(eb[f"{event_weights}_weight"])
            codes = np.unique(b["image_id"], return_inverse=True)[1]
            same = torch.from_numpy(codes[:, None] == codes[None, :])
            loss = contrastive_loss(z, torch.from_numpy(b["labels"]), temperature=temperature, same=same,
                                    weight=torch.from_numpy(b["weight"]), event_weight=event_weight, **kw)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    head.eval()
    return head, losses
