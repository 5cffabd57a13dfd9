"""TIES-Merging (arXiv 2306.01708): trim, elect sign, disjoint merge.

Trim: keep each task vector's top `density` fraction by magnitude. Elect: s = sign(sum_i w_i delta_i)
(0 as +). Merge: theta_0 + sum_i w_i e_i delta_i, divided by sum_i w_i e_i when normalising.
FuseChat baseline: density 0.6, weight 0.2, normalise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fusecli.merge.methods.common import combine, magnitude_prune, task_vectors
from fusecli.merge.params import MergeParams
from fusecli.merge.registry import register


@register("ties", options=("weight", "density", "normalize"), weight=0.2, normalize=True, mergekit="ties")
def ties(base: Tensor, models: list[Tensor], params: MergeParams, *, name: str = "") -> tuple[Tensor, None]:
    """TIES: magnitude-trimmed task vectors merged where they agree with the elected sign."""
    deltas = torch.stack([magnitude_prune(d, params.density) for d in task_vectors(base, models)])
    return combine(base, deltas, params.weight, consensus=True, normalize=params.normalize), None
