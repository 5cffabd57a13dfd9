"""Pieces shared by the task-vector methods: each formula here is written once (method.md, stage 5).

Conventions from method.md: variance is the population variance, sign(0) counts as + when electing
a sign, a zero delta never agrees with the elected sign, and a zero denominator counts as 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

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
    """A denominator where 0 counts as 1 (method.md): positions nobody contributes to stay at 0."""
    return torch.where(x == 0, torch.ones_like(x), x)


def kth_largest(passes: Callable[[], Iterable[Tensor]], k: Callable[[int], int]) -> Tensor:
    """Per row n of the [N, ...] chunks of non-negative values that `passes()` yields (one tensor cut into
    blocks): its k-th largest value over all chunks, k = k(number of nonzero values in row n);
    +inf where k <= 0, -inf where k covers the whole row. `values >= result` then keeps the top k,
    and every value tied with the k-th (a function of the values alone, not of a sort order).

    Exact, with two passes and no chunk held beyond its pass: a radix select on the float32 bit
    patterns, ordered as the values are for non-negative floats. Pass 1 counts the high 16 bits,
    which finds the bucket of the k-th value; pass 2 counts the low 16 bits inside that bucket."""
    high: list[Tensor] = []
    zeros: list[int] = []
    for chunk in passes():
        for n, row in enumerate(chunk):
            bits = _bits(row)
            counts, z = torch.bincount(bits >> 16, minlength=1 << 15), bits.numel() - int(torch.count_nonzero(bits))
            if n == len(high):
                high.append(counts)
                zeros.append(z)
            else:
                high[n] += counts
                zeros[n] += z
    assert high, "kth_largest needs at least one chunk"
    numel = int(high[0].sum())
    ks = [k(numel - z) for z in zeros]
    at_least = torch.stack(high).flip(1).cumsum(1).flip(1)  # [n, b]: values of row n in bucket b or above
    bucket = [int((at_least[n] >= kn).nonzero().max()) if 0 < kn < numel else 0 for n, kn in enumerate(ks)]
    low = torch.zeros(len(ks), 1 << 16, dtype=torch.int64, device=at_least.device)
    for chunk in passes() if any(0 < kn < numel for kn in ks) else ():
        for n, row in enumerate(chunk):
            bits = _bits(row)
            low[n] += torch.bincount(bits[(bits >> 16) == bucket[n]] & 0xFFFF, minlength=1 << 16)
    out = []
    for n, kn in enumerate(ks):
        if kn <= 0 or kn >= numel:
            out.append(math.inf if kn <= 0 else -math.inf)
            continue
        above = int(at_least[n, bucket[n] + 1]) if bucket[n] + 1 < (1 << 15) else 0
        within = low[n].flip(0).cumsum(0).flip(0)
        offset = int((within >= kn - above).nonzero().max())
        out.append(torch.tensor(bucket[n] << 16 | offset, dtype=torch.int32).view(torch.float32).item())
    return torch.tensor(out, dtype=torch.float32)


def _bits(row: Tensor) -> Tensor:
    """The int32 bit patterns of one row of non-negative float32 values without -0.0 (as abs() and
    var() give), flattened: these order as the values do."""
    return row.float().contiguous().view(torch.int32).flatten()


def elected_sign_agreement(deltas: Tensor) -> Tensor:
    """TIES sign election: s = sign(sum_i delta_i) with 0 as +; e_i = [sign(delta_i) == s].
    A zero delta has sign 0, agrees with neither sign, and is erased."""
    positive = deltas.sum(dim=0) >= 0
    return torch.where(positive, deltas > 0, deltas < 0)


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
