"""Fisher-gated task arithmetic (ours): each pair model's whole task vector, except where another pair's
own knowledge depends more on the same parameter.

theta = theta_0 + sum_i w_i g_i delta_i,   g_i = (F_i / max_j F_j) ** gamma   (g_i = 1 where every F_j = 0)

F_i is model i's diagonal Fisher on the sequences its source taught in its pair fusion (MinCE's choice,
stage fisher@<slug>, fusecli/fuse/fisher.py). Why not an average: the pair models learn different
sources on different sequences, so their task vectors barely overlap, and every 1/N-weighted merge
(linear, SCE, TIES with normalising) keeps 1/N of each (docs/benchmarks.md, "Why merges kept half").
Why not the plain sum (task_arithmetic, weight 1): where two task vectors meet on a parameter that one
pair's knowledge needs more, the other's change is interference; the gate shrinks it by how much less
its own data needs that parameter. gamma = 0 is the plain sum, gamma -> inf keeps only the model whose
data needs each parameter most. Fisher merging (arXiv 2111.09832) averages with the same F_i, which
again keeps about 1/N of each task vector where the F_i are alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fusecli.errors import FusecliError
from fusecli.merge.methods.common import per_model, task_vectors
from fusecli.merge.params import Weight, check_weight
from fusecli.merge.registry import register


@dataclass(frozen=True)
class FisherGateOptions:
    """params.yaml `merge.fisher_gate`."""

    weight: Weight = 1.0  # one for all models, or one per model: scales each gated task vector
    gamma: float = 0.5  # how hard the gate is: 0 the plain sum, large keeps only the most important model

    def validate(self) -> None:
        check_weight("merge.fisher_gate", self.weight)
        if not 0 <= self.gamma < float("inf"):
            raise FusecliError(f"merge.fisher_gate.gamma = {self.gamma} must be a finite number >= 0")


def gates(importance: list[Tensor], gamma: float) -> Tensor:
    """g_i = (F_i / max_j F_j) ** gamma per position, 1 where no model's F is positive."""
    f = torch.stack(importance).clamp_min_(0)
    top = f.amax(dim=0, keepdim=True)
    g = torch.where(top > 0, f / torch.where(top > 0, top, 1.0), 1.0)
    return g.pow_(gamma) if gamma != 1 else g


@register("fisher_gate", options=FisherGateOptions, reads_importance=True)
def fisher_gate(
    base: Tensor, models: list[Tensor], params: FisherGateOptions, *, name: str = "", importance: list[Tensor]
) -> tuple[Tensor, None]:
    """Fisher-gated task arithmetic: each task vector kept where its own data needs the parameter most."""
    if len(importance) != len(models):
        raise FusecliError(f"{name}: {len(importance)} importance tensors for {len(models)} models")
    deltas = task_vectors(base, models)
    deltas.mul_(gates(importance, params.gamma)).mul_(per_model(params.weight, deltas))
    return base + deltas.sum(dim=0), None
