"""Pieces shared by the task-vector methods: each formula here is written once (docs/method.md, stage 5).

Conventions from docs/method.md: variance is the population variance, sign(0) counts as + when electing
a sign, a zero delta never agrees with the elected sign, and a zero denominator counts as 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from fusecli.merge.registry import Block


def task_vectors(base: Tensor, models: list[Tensor]) -> Tensor:
    """delta_i = theta_i - theta_0, stacked on a new first axis: [N, *shape]."""
    return torch.stack(models).sub_(base)


def block_deltas(block: Block) -> Tensor:
    """The task vectors of a block, computed once however many passes read them."""
    return block.derive("deltas", lambda b: task_vectors(b.base, b.models))


def per_model(values: Tensor | list[float] | tuple[float, ...], like: Tensor) -> Tensor:
    """Per-model scalars shaped [N, 1, ..., 1] to broadcast against stacked [N, *shape] tensors."""
    v = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def nonzero(x: Tensor) -> Tensor:
    """A denominator where 0 counts as 1 (docs/method.md): positions nobody contributes to stay at 0."""
    return torch.where(x == 0, torch.ones_like(x), x)


def kth_largest(passes: Callable[[], Iterable[Tensor]], k: int | Callable[[int], int]) -> Tensor:
    """Per row n of the [N, ...] chunks of non-negative values that `passes()` yields (one tensor cut
    into blocks): its k-th largest value over all chunks, where k is a number or a function of the
    row's count of nonzero values; +inf where k <= 0, -inf where k covers the whole row. Then
    `values >= result` keeps the top k, and every value tied with the k-th (a function of the values
    alone, not of a sort order).

    Exact, with two passes and no chunk held beyond its pass: a radix select on the float32 bit
    patterns, ordered as the values are for non-negative floats. Pass 1 counts the high 16 bits,
    which finds the bucket of the k-th value; pass 2 counts the low 16 bits inside that bucket."""
    high: list[Tensor] = []
    zeros: list[int] = []
    for chunk in passes():
        for n, row in enumerate(chunk):
            bits = _bits(row)
            counts = torch.bincount(bits >> 16, minlength=1 << 15)
            z = 0 if isinstance(k, int) else bits.numel() - int(torch.count_nonzero(bits))
            if n == len(high):
                high.append(counts)
                zeros.append(z)
            else:
                high[n] += counts
                zeros[n] += z
    assert high, "kth_largest needs at least one chunk"
    numel = int(high[0].sum())
    ks = [k if isinstance(k, int) else k(numel - z) for z in zeros]
    # numpy for the small histograms: cum[b] = values in buckets <= b, so the k-th largest value lies
    # in the first bucket b with cum[b] > numel - k
    cum = [np.cumsum(h.cpu().numpy()) for h in high]
    bucket = []  # -1: no selection needed (k <= 0 or k >= numel)
    for c, kn in zip(cum, ks, strict=True):
        bucket.append(int(np.searchsorted(c, numel - kn, "right")) if 0 < kn < numel else -1)
    low = [np.zeros(1 << 16, dtype=np.int64) for _ in ks]
    for chunk in passes() if any(b >= 0 for b in bucket) else ():
        for n, row in enumerate(chunk):
            if bucket[n] >= 0:
                bits = _bits(row)
                inside = bits[(bits >> 16) == bucket[n]] & 0xFFFF
                low[n] += torch.bincount(inside, minlength=1 << 16).cpu().numpy()
    out = []
    for n, kn in enumerate(ks):
        if bucket[n] < 0:
            out.append(math.inf if kn <= 0 else -math.inf)
            continue
        above = numel - int(cum[n][bucket[n]])  # values in higher buckets
        in_bucket = np.cumsum(low[n])
        offset = int(np.searchsorted(in_bucket, in_bucket[-1] - (kn - above), side="right"))
        out.append(np.array(bucket[n] << 16 | offset, dtype=np.int32).view(np.float32).item())
    return torch.tensor(out, dtype=torch.float32)


def _bits(row: Tensor) -> Tensor:
    """The int32 bit patterns of one row of non-negative float32 values without -0.0 (as abs() and
    var() give), flattened: these order as the values do."""
    return row.float().contiguous().view(torch.int32).flatten()


def elected_sign_agreement(deltas: Tensor) -> Tensor:
    """TIES sign election: s = sign(sum_i delta_i) with 0 as +; e_i = [sign(delta_i) == s].
    A zero delta has sign 0, agrees with neither sign, and is erased."""
    positive = deltas.sum(dim=0) >= 0
    return ((deltas > 0) == positive) & (deltas != 0)


def combine(base: Tensor, deltas: Tensor, weights: tuple[float, ...], *, consensus: bool, normalize: bool) -> Tensor:
    """mergekit's generalised task arithmetic: theta_0 + sum_i w_i delta_i (TIES sign consensus
    optional), divided by the weights that contributed at each position when normalising."""
    w = per_model(weights, deltas)
    weighted = deltas * w
    if consensus:
        agree = elected_sign_agreement(weighted)
        mixed = weighted.mul_(agree).sum(dim=0)
        divisor = (w * agree).sum(dim=0)
    else:
        mixed = weighted.sum(dim=0)
        divisor = w.sum()
    if normalize:
        mixed = mixed / nonzero(divisor)
    return base + mixed
