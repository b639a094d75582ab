"""The experiment's model and loss: a projection head on frozen features, multi-positive InfoNCE over P x K batches.

Loss of anchor i (Khosla et al. 2020's supervised contrastive loss, "L_out" form), with s = cosine / temperature:

    l_i = - mean_{p in P(i)} [ s_ip - log( sum_{j != i} e^{s_ij} + sum_{n in N(i)} e^{s_in} + sum_{e in E(i)} e^{s_ie} ) ]

P(i): the batch's other images of i's product; N(i): i's mined hard negatives (added to the denominator only);
E(i): i's event-linked products (extra positives: their own weighted term, in the denominator too). The batch loss is
the sample-weighted mean of l_i over anchors with a positive, plus `event_weight` x the weighted mean of the event
terms (weights divided by their batch mean, so raw and debiased weights differ in emphasis, not in scale).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is in the demo and dev extras
        raise ImportError("visprep experiment needs torch: pip install 'visprep[torch]'") from exc
    return torch


def projection_head(in_dim: int, hidden: int, out_dim: int, *, seed: int) -> Any:
    """MLP in_dim -> hidden -> out_dim (ReLU, no bias on the output), seeded initialisation."""
    torch = _torch()
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        head = torch.nn.Sequential(torch.nn.Linear(in_dim, hidden), torch.nn.ReLU(),
                                   torch.nn.Linear(hidden, out_dim, bias=False))
    finally:
        torch.random.set_rng_state(gen_state)
    return head


def embed_with(head: Any, features: np.ndarray, *, batch: int = 8192) -> np.ndarray:
    """(n, out_dim) float32 L2-normalised head outputs of (n, in_dim) features (None head: the features)."""
    if head is None:
        x = np.asarray(features, np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    torch = _torch()
    out = []
    with torch.no_grad():
        for s in range(0, len(features), batch):
            z = head(torch.from_numpy(np.ascontiguousarray(features[s : s + batch], np.float32)))
            out.append(torch.nn.functional.normalize(z, dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def contrastive_loss(z: Any, labels: Any, *, temperature: float, same: Any | None = None, weight: Any | None = None,
                     neg: Any | None = None, neg_mask: Any | None = None, ev: Any | None = None,
                     ev_mask: Any | None = None, ev_weight: Any | None = None, event_weight: float = 0.0) -> Any:
    """The batch loss of the module docstring.

    Args:
        z: (N, d) L2-normalised anchor embeddings.
        labels: (N,) int64 product labels (equal label = positive).
        same: (N, N) bool: slots holding the same image (a P x K cell topped up with repeats); such a slot is
            the anchor itself, so it is neither a positive nor in the denominator. None: only the diagonal.
        temperature: softmax temperature.
        weight: (N,) sample weights (None: ones).
        neg, neg_mask: (N, m, d) hard-negative embeddings and (N, m) bool validity.
        ev, ev_mask, ev_weight: (N, e, d) event-positive embeddings, (N, e) validity and (N, e) weights.
        event_weight: weight of the event term.

    Returns:
        A scalar tensor (0 when no anchor has a positive).
    """
    torch = _torch()
    n = z.shape[0]
    sim = z @ z.T / temperature
    eye = torch.eye(n, dtype=torch.bool) if same is None else (same | torch.eye(n, dtype=torch.bool))
    pos = (labels[:, None] == labels[None, :]) & ~eye
    logits = [sim.masked_fill(eye, float("-inf"))]
    if neg is not None and neg.shape[1]:
        s_neg = torch.einsum("nd,nmd->nm", z, neg) / temperature
        logits.append(s_neg.masked_fill(~neg_mask, float("-inf")))
    s_ev = None
    if ev is not None and ev.shape[1]:
        s_ev = torch.einsum("nd,ned->ne", z, ev) / temperature
        logits.append(s_ev.masked_fill(~ev_mask, float("-inf")))
    lse = torch.logsumexp(torch.cat(logits, dim=1), dim=1)  # (N,)
    n_pos = pos.sum(1)
    has = n_pos > 0
    w = torch.ones(n, dtype=z.dtype) if weight is None else weight.to(z.dtype)
    total = z.new_zeros(())
    if has.any():
        per_anchor = -((sim - lse[:, None]) * pos).sum(1)[has] / n_pos[has]
        total = total + (per_anchor * w[has]).sum() / w[has].sum().clamp_min(1e-12)
    if s_ev is not None and event_weight > 0 and ev_mask.any():
        ew = ev_weight.to(z.dtype) * ev_mask
        ew = ew / ew[ev_mask].mean().clamp_min(1e-12)
        terms = -(s_ev - lse[:, None])
        total = total + event_weight * (terms * ew)[ev_mask].sum() / ev_mask.sum()
    return total
