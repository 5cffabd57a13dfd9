"""Linear: a weighted average of the models themselves (model soups, arXiv 2203.05482).

theta = sum_i w_i theta_i, divided by sum_i w_i when normalising. The base is not part of the
average (as in mergekit); list it as a model to include it. Default weights: 1/N each.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fusecli.merge.methods.common import nonzero, per_model
from fusecli.merge.params import MergeParams
from fusecli.merge.registry import UNIFORM, register


@register("linear", options=("weight", "normalize"), weight=UNIFORM, normalize=True, mergekit="linear")
def linear(base: Tensor, models: list[Tensor], params: MergeParams, *, name: str = "") -> tuple[Tensor, None]:
    """Linear: weighted average of the model tensors."""
    thetas = torch.stack(models)
    w = per_model(params.weight, thetas)
    merged = (w * thetas).sum(dim=0)
    if params.normalize:
        merged = merged / nonzero(w.sum())
    return merged, None
