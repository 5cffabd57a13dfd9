"""Task arithmetic (arXiv 2212.04089): theta_0 + sum_i w_i delta_i (FuseChat baseline: w = 0.3)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from fusecli.merge.methods.common import combine, task_vectors
from fusecli.merge.params import Weight, check_weight
from fusecli.merge.registry import register


@dataclass(frozen=True)
class TaskArithmeticOptions:
    """params.yaml `merge.task_arithmetic` (FuseChat's baseline values as defaults)."""

    weight: Weight = 0.3  # one for all models, or one per model; null: 1/N each
    normalize: bool = False  # divide by the sum of the weights

    def validate(self) -> None:
        check_weight("merge.task_arithmetic", self.weight)


@register("task_arithmetic", options=TaskArithmeticOptions, mergekit="task_arithmetic")
def task_arithmetic(
    base: Tensor, models: list[Tensor], params: TaskArithmeticOptions, *, name: str = ""
) -> tuple[Tensor, None]:
    """Task arithmetic: add the weighted task vectors to the base."""
    deltas = task_vectors(base, models)
    return combine(base, deltas, params.weight, consensus=False, normalize=params.normalize), None
