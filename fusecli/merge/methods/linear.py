"""Linear: a weighted average of the models themselves (model soups, arXiv 2203.05482).

theta = sum_i w_i theta_i, divided by sum_i w_i when normalising. The base is not part of the
average (as in mergekit); list it as a model to include it. Default weights: 1/N each.
"""

from __future__ import annotations

from torch import Tensor

from fusecli.merge.params import MergeParams
from fusecli.merge.registry import UNIFORM, register


@register(
    "linear", options=("weight", "normalize"), weight=UNIFORM, normalize=True, mergekit="linear", reads_base=False
)
def linear(base: Tensor | None, models: list[Tensor], params: MergeParams, *, name: str = "") -> tuple[Tensor, None]:
    """Linear: weighted average of the model tensors."""
    merged = models[0] * params.weight[0]
    for w, theta in zip(params.weight[1:], models[1:], strict=True):
        merged.add_(theta, alpha=w)
    total = sum(params.weight)
    if params.normalize and total not in (0.0, 1.0):  # dividing by 1 changes nothing: skip the pass
        merged.div_(total)
    return merged, None
