"""VaRM: variation-ratio merge (FuseChat v1, arXiv 2402.16107).

Per tensor j: w_ij = mean(delta_ij^2) / sum_k mean(delta_kj^2); theta_j = sum_i w_ij theta_ij.
A model that moved a matrix further from the base gets more say in it. If no model moved the
tensor at all, the weights are uniform (the result is then the base).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fusecli.merge.methods.common import per_model, task_vectors
from fusecli.merge.params import MergeParams
from fusecli.merge.registry import Coefficients, register


@register("varm")
def varm(base: Tensor, models: list[Tensor], params: MergeParams, *, name: str = "") -> tuple[Tensor, Coefficients]:
    """VaRM (FuseChat v1): per-matrix weights proportional to the mean squared task vector."""
    energy = task_vectors(base, models).square().flatten(start_dim=1).mean(dim=1)
    total = energy.sum()
    w = torch.full_like(energy, 1.0 / len(models)) if total == 0 else energy / total
    thetas = torch.stack(models)
    return (per_model(w, thetas) * thetas).sum(dim=0), {"weight": w.tolist()}
