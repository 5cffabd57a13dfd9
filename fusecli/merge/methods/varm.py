"""VaRM: variation-ratio merge (FuseChat v1, arXiv 2402.16107).

Per tensor j: w_ij = mean(delta_ij^2) / sum_k mean(delta_kj^2); theta_j = sum_i w_ij theta_ij.
A model that moved a matrix further from the base gets more say in it. If no model moved the
tensor at all, the weights are uniform (the result is then the base). The weights need the whole
tensor: `varm_weights` sums over its blocks before any block is merged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fusecli.merge.methods.common import block_deltas, per_model
from fusecli.merge.registry import Blocks, Coefficients, register


@dataclass(frozen=True)
class VarmOptions:
    """params.yaml `merge.varm`: none, the weights come from the task vectors."""


def varm_weights(blocks: Blocks, params: VarmOptions, name: str) -> Tensor:
    """w_i = sum(delta_i^2) / sum_k sum(delta_k^2) (the means' 1/numel cancels); uniform if all 0."""
    energy = torch.zeros(blocks.n_models, dtype=torch.float64)
    for b in blocks:
        energy += block_deltas(b).square().flatten(start_dim=1).sum(dim=1, dtype=torch.float64).cpu()
    total = energy.sum()
    return torch.full_like(energy, 1.0 / len(energy)) if total == 0 else energy / total


@register("varm", options=VarmOptions, stats=varm_weights)
def varm(
    base: Tensor, models: list[Tensor], params: VarmOptions, *, name: str = "", stats: Tensor
) -> tuple[Tensor, Coefficients]:
    """VaRM (FuseChat v1): per-matrix weights proportional to the mean squared task vector."""
    thetas = torch.stack(models)
    return (per_model(stats, thetas) * thetas).sum(dim=0), {"weight": stats.tolist()}
