"""Pieces shared by the task-vector methods: each formula here is written once (method.md, stage 5).

Conventions from method.md: variance is the population variance, sign(0) counts as + when electing
a sign, a zero delta never agrees with the elected sign, and a zero denominator counts as 1.
"""

from __future__ import annotations

import torch
from torch import Tensor


def task_vectors(base: Tensor, models: list[Tensor]) -> Tensor:
    """delta_i = theta_i - theta_0, stacked on a new first axis: [N, *shape]."""
    return torch.stack([m - base for m in models])


def per_model(values: Tensor | list[float] | tuple[float, ...], like: Tensor) -> Tensor:
    """Per-model scalars shaped [N, 1, ..., 1] to broadcast against stacked [N, *shape] tensors."""
    v = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def nonzero(x: Tensor) -> Tensor:
    """A denominator where 0 counts as 1 (method.md): positions nobody contributes to stay at 0."""
    return torch.where(x == 0, torch.ones_like(x), x)


def top_fraction_mask(score: Tensor, k: int) -> Tensor:
    """True at the k largest entries of `score`. Entries tied with the k-th are all kept, so the
    mask is a function of the values alone (no device- or sort-dependent tie breaking)."""
    if k <= 0:
        return torch.zeros_like(score, dtype=torch.bool)
    flat = score.flatten()
    if k >= flat.numel():
        return torch.ones_like(score, dtype=torch.bool)
    threshold = torch.kthvalue(flat, flat.numel() - k + 1).values
    return score >= threshold


def elected_sign_agreement(deltas: Tensor) -> Tensor:
    """TIES sign election: s = sign(sum_i delta_i) with 0 as +; e_i = [sign(delta_i) == s].
    A zero delta has sign 0, agrees with neither sign, and is erased."""
    elected = torch.where(deltas.sum(dim=0) >= 0, 1.0, -1.0).to(deltas.dtype)
    return deltas.sign() == elected


def magnitude_prune(delta: Tensor, density: float) -> Tensor:
    """TIES trim: keep the top `density` fraction of one task vector by |delta| (at least one entry)."""
    if density >= 1:
        return delta
    k = max(1, int(density * delta.numel()))
    return delta * top_fraction_mask(delta.abs(), k)


def combine(base: Tensor, deltas: Tensor, weights: tuple[float, ...], *, consensus: bool, normalize: bool) -> Tensor:
    """mergekit's generalised task arithmetic: theta_0 + sum_i w_i delta_i (TIES sign consensus
    optional), divided by the weights that contributed at each position when normalising."""
    w = per_model(weights, deltas)
    weighted = deltas * w
    if consensus:
        agree = elected_sign_agreement(weighted)
        mixed = (weighted * agree).sum(dim=0)
        divisor = (w * agree).sum(dim=0)
    else:
        mixed = weighted.sum(dim=0)
        divisor = w.sum()
    if normalize:
        mixed = mixed / nonzero(divisor)
    return base + mixed
