"""SCE: Select, Calculate, Erase (FuseChat-2.0, arXiv 2408.07990, section 3.3).

Per tensor j with task vectors delta_i = theta_i - theta_0:
- Select: population variance of delta across models at each position; keep the top tau fraction.
  As in the authors' release (and mergekit), tau counts positions with nonzero variance:
  k = int(tau * #{var > 0}); tau = 1 keeps every position.
- Calculate: eta_i = sum((mask * delta_i)^2) / numel, normalised over models (uniform if all 0).
- Erase: elected sign s = sign(sum_i delta_i) (0 as +), e_i = [sign(delta_i) == s].
- Merge: delta* = sum_i eta_i e_i delta_i / sum_i eta_i e_i (0 denominator as 1); theta_0 + delta*.

Two published variants differ in what the mask touches (method.md):
- `release` (the authors' code): the mask only weighs eta; the full deltas are elected and merged.
- `sparse` (mergekit's `sce`): unselected positions are zeroed before election and merging.
They agree at tau = 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fusecli.merge.methods.common import (
    elected_sign_agreement,
    nonzero,
    per_model,
    task_vectors,
    top_fraction_mask,
)
from fusecli.merge.params import MergeParams
from fusecli.merge.registry import Coefficients, register


def variance_mask(deltas: Tensor, tau: float) -> Tensor:
    """Select: True at the top-tau fraction of positions by variance across models."""
    if tau >= 1:
        return torch.ones_like(deltas[0], dtype=torch.bool)
    var = deltas.var(dim=0, unbiased=False)
    return top_fraction_mask(var, int(tau * int(torch.count_nonzero(var))))


def matrix_weights(deltas: Tensor) -> Tensor:
    """Calculate: eta_i = mean over the tensor of delta_i^2, normalised to sum 1 (uniform if all 0)."""
    energy = deltas.square().flatten(start_dim=1).mean(dim=1)
    total = energy.sum()
    if total == 0:
        return torch.full_like(energy, 1.0 / energy.numel())
    return energy / total


@register("sce", options=("sce_variant", "select_topk"), mergekit="sce")
def sce(base: Tensor, models: list[Tensor], params: MergeParams, *, name: str = "") -> tuple[Tensor, Coefficients]:
    """SCE (FuseChat-2.0): variance-selected, energy-weighted, sign-agreeing task-vector average."""
    deltas = task_vectors(base, models)
    mask = variance_mask(deltas, params.select_topk)
    if params.sce_variant == "sparse":
        deltas = deltas * mask
    eta = matrix_weights(deltas * mask)
    weights = per_model(eta, deltas) * elected_sign_agreement(deltas)
    merged = (weights * deltas).sum(dim=0) / nonzero(weights.sum(dim=0))
    return base + merged, {"eta": eta.tolist()}
