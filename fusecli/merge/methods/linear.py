"""Linear: a weighted average of the models themselves (model soups, arXiv 2203.05482).

theta = sum_i w_i theta_i, divided by sum_i w_i when normalising. The base is not part of the
average (as in mergekit); list it as a model to include it. Default weights: 1/N each.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from fusecli.merge.params import Weight, check_weight
from fusecli.merge.registry import register


@dataclass(frozen=True)
class LinearOptions:
    """params.yaml `merge.linear`."""

    weight: Weight = None  # one for all models, or one per model; null: 1/N each
    normalize: bool = True  # divide by the sum of the weights

    def validate(self) -> None:
        check_weight("merge.linear", self.weight)


@register("linear", options=LinearOptions, mergekit="linear", reads_base=False)
def linear(
    base: Tensor | None, models: list[Tensor], params: LinearOptions, *, name: str = ""
) -> tuple[Tensor, None]:
    """Linear: weighted average of the model tensors."""
    merged = models[0] * params.weight[0]
    for w, theta in zip(params.weight[1:], models[1:], strict=True):
        merged.add_(theta, alpha=w)
    total = sum(params.weight)
    if params.normalize and total not in (0.0, 1.0):  # dividing by 1 changes nothing: skip the pass
        merged.div_(total)
    return merged, None
