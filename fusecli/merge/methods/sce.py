"""SCE: Select, Calculate, Erase (FuseChat-2.0, arXiv 2408.07990, section 3.3).

Per tensor j with task vectors delta_i = theta_i - theta_0:
- Select: population variance of delta across models at each position; keep the top tau fraction.
  As in the authors' release (and mergekit), tau counts positions with nonzero variance:
  k = int(tau * #{var > 0}); tau = 1 keeps every position.
- Calculate: eta_i = sum((mask * delta_i)^2) / numel, normalised over models (uniform if all 0).
- Erase: elected sign s = sign(sum_i delta_i) (0 as +), e_i = [sign(delta_i) == s].
- Merge: delta* = sum_i eta_i e_i delta_i / sum_i eta_i e_i (0 denominator as 1); theta_0 + delta*.

Two published variants differ in what the mask touches (docs/method.md):
- `release` (the authors' code): the mask only weighs eta; the full deltas are elected and merged.
- `sparse` (mergekit's `sce`): unselected positions are zeroed before election and merging.
They agree at tau = 1.

Select and Calculate need the whole tensor, so they are `sce_stats`: passes over its blocks that
give the variance threshold and eta before any block is merged.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from fusecli.merge.methods.common import (
    block_deltas,
    elected_sign_agreement,
    kth_largest,
    nonzero,
    per_model,
    task_vectors,
)
from fusecli.merge.params import check_fraction
from fusecli.merge.registry import Block, Blocks, Coefficients, register


@dataclass(frozen=True)
class SceOptions:
    """params.yaml `merge.sce`."""

    variant: Literal["release", "sparse"] = "release"  # release: the authors' code (docs/method.md)
    select_topk: float = 0.1  # tau: the fraction of positions kept by variance

    def validate(self) -> None:
        check_fraction("merge.sce", "select_topk", self.select_topk, "the fraction of positions kept")


@dataclass(frozen=True)
class SceStats:
    threshold: float  # Select keeps positions with variance >= threshold (-inf: all)
    eta: Tensor  # [N] Calculate's per-model weights


def variance(deltas: Tensor) -> Tensor:
    """Population variance across models at each position, mean((delta - mean)^2). In float64, as
    torch.var computes it on CPU, so the selection is torch's (and mergekit's) to the bit; written
    out because torch.var over the first axis is 4x slower. Elementwise, so equal in any block."""
    mean = deltas.sum(dim=0, dtype=torch.float64).div_(len(deltas))
    total = torch.zeros_like(mean)
    for delta in deltas:
        total.add_((delta.double() - mean).square_())
    return total.div_(len(deltas)).float()


def block_variance(block: Block) -> Tensor:
    return block.derive("variance", lambda b: variance(block_deltas(b)))


def sce_stats(blocks: Blocks, params: SceOptions, name: str) -> SceStats:
    """Select: the variance threshold of the top tau fraction. Calculate: eta from the selected deltas."""
    tau, threshold = params.select_topk, -math.inf
    if tau < 1:

        def variances() -> Iterator[Tensor]:
            return (block_variance(b)[None] for b in blocks)

        threshold = float(kth_largest(variances, lambda nonzero_count: int(tau * nonzero_count))[0])
    energy = torch.zeros(blocks.n_models, dtype=torch.float64)
    for b in blocks:
        squares = block_deltas(b).square()
        if threshold > -math.inf:
            squares.mul_(block_variance(b) >= threshold)
        energy += squares.flatten(start_dim=1).sum(dim=1, dtype=torch.float64).cpu()
    total = energy.sum()
    eta = torch.full_like(energy, 1.0 / len(energy)) if total == 0 else energy / total
    return SceStats(threshold, eta)


@register("sce", options=SceOptions, mergekit="sce", stats=sce_stats)
def sce(
    base: Tensor, models: list[Tensor], params: SceOptions, *, name: str = "", stats: SceStats
) -> tuple[Tensor, Coefficients]:
    """SCE (FuseChat-2.0): variance-selected, energy-weighted, sign-agreeing task-vector average."""
    deltas = task_vectors(base, models)
    if params.variant == "sparse" and stats.threshold > -math.inf:
        deltas.mul_(variance(deltas) >= stats.threshold)
    weights = elected_sign_agreement(deltas).to(deltas.dtype).mul_(per_model(stats.eta, deltas))
    merged = deltas.mul_(weights).sum(dim=0).div_(nonzero(weights.sum(dim=0)))
    return merged.add_(base), {"eta": stats.eta.tolist()}
