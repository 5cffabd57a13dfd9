"""Task arithmetic (arXiv 2212.04089): theta_0 + sum_i w_i delta_i (FuseChat baseline: w = 0.3)."""

from __future__ import annotations

from torch import Tensor

from fusecli.merge.methods.common import combine, task_vectors
from fusecli.merge.params import MergeParams
from fusecli.merge.registry import register


@register("task_arithmetic", options=("weight", "normalize"), weight=0.3, normalize=False, mergekit="task_arithmetic")
def task_arithmetic(base: Tensor, models: list[Tensor], params: MergeParams, *, name: str = "") -> tuple[Tensor, None]:
    """Task arithmetic: add the weighted task vectors to the base."""
    deltas = task_vectors(base, models)
    return combine(base, deltas, params.weight, consensus=False, normalize=params.normalize), None
