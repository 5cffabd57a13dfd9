"""TIES-Merging (arXiv 2306.01708): trim, elect sign, disjoint merge.

Trim: keep each task vector's top `density` fraction by magnitude. Elect: s = sign(sum_i w_i delta_i)
(0 as +). Merge: theta_0 + sum_i w_i e_i delta_i, divided by sum_i w_i e_i when normalising.
FuseChat baseline: density 0.6, weight 0.2, normalise.

The trim threshold of each task vector needs the whole tensor: `trim_thresholds` finds it in passes
over the tensor's blocks before any block is merged.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import Tensor

from fusecli.merge.methods.common import block_deltas, combine, kth_largest, per_model, task_vectors
from fusecli.merge.params import Weight, check_fraction, check_weight
from fusecli.merge.registry import Blocks, register


@dataclass(frozen=True)
class TiesOptions:
    """params.yaml `merge.ties` (FuseChat's baseline values as defaults)."""

    weight: Weight = 0.2  # one for all models, or one per model; null: 1/N each
    density: float = 0.6  # fraction of each task vector kept, by magnitude
    normalize: bool = True  # divide by the sum of the weights that agree with the elected sign

    def validate(self) -> None:
        check_weight("merge.ties", self.weight)
        check_fraction("merge.ties", "density", self.density, "the fraction of each task vector kept")


def trim_thresholds(blocks: Blocks, params: TiesOptions, name: str) -> Tensor | None:
    """Per model, the k-th largest |delta| with k = max(1, int(density * numel)); None keeps all."""
    if params.density >= 1:
        return None
    k = max(1, int(params.density * blocks.numel))

    def magnitudes() -> Iterator[Tensor]:
        return (block.derive("magnitudes", lambda b: block_deltas(b).abs()) for block in blocks)

    return kth_largest(magnitudes, k)


@register("ties", options=TiesOptions, mergekit="ties", stats=trim_thresholds)
def ties(
    base: Tensor, models: list[Tensor], params: TiesOptions, *, name: str = "", stats: Tensor | None
) -> tuple[Tensor, None]:
    """TIES: magnitude-trimmed task vectors merged where they agree with the elected sign."""
    deltas = task_vectors(base, models)
    if stats is not None:
        deltas.mul_(deltas.abs() >= per_model(stats, deltas))
    return combine(base, deltas, params.weight, consensus=True, normalize=params.normalize), None
