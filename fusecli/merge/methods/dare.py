"""DARE (arXiv 2311.03099): drop each task-vector entry with probability 1 - density, rescale the
survivors by 1 / density, then merge linearly (`dare_linear`) or with TIES sign consensus
(`dare_ties`). FuseChat baseline: density 0.6, weight 0.2, normalise.

The drop masks are seeded by (seed, tensor name, model index) and drawn on the CPU, so a merge is
reproducible and does not depend on the device, the tensor order or the other tensors. A tensor
merged in row blocks draws each block's mask from the same generator in order, and torch draws
uniform numbers one element after another, so the masks do not depend on the blocks either.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor

from fusecli.merge.methods.common import combine, task_vectors
from fusecli.merge.params import Weight, check_fraction, check_weight
from fusecli.merge.registry import Blocks, register


@dataclass(frozen=True)
class DareOptions:
    """params.yaml `merge.dare_linear` and `merge.dare_ties` (FuseChat's baseline values as defaults)."""

    weight: Weight = 0.2  # one for all models, or one per model; null: 1/N each
    density: float = 0.6  # fraction of each task vector kept
    normalize: bool = True  # divide by the sum of the weights that contributed
    seed: int = 0  # the masks are a function of (seed, tensor name, model index)

    def validate(self) -> None:
        check_weight("merge.dare_*", self.weight)
        check_fraction("merge.dare_*", "density", self.density, "the fraction of each task vector kept")


def dare_generator(seed: int, name: str, index: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}\0{name}\0{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def dare_mask(shape: torch.Size | tuple[int, ...], density: float, seed: int, name: str, index: int) -> Tensor:
    """Keep-mask for model `index` on tensor `name`: each entry kept with probability `density`."""
    return torch.rand(shape, generator=dare_generator(seed, name, index)) < density


def dare_generators(blocks: Blocks, params: DareOptions, name: str) -> list[torch.Generator] | None:
    """One mask generator per model for this tensor; the blocks draw from them in order."""
    if params.density >= 1:
        return None
    return [dare_generator(params.seed, name, i) for i in range(blocks.n_models)]


def dare_deltas(
    base: Tensor, models: list[Tensor], params: DareOptions, generators: list[torch.Generator] | None
) -> Tensor:
    deltas = task_vectors(base, models)
    if generators is None:
        return deltas
    masks = torch.stack([torch.rand(base.shape, generator=g) < params.density for g in generators])
    return deltas * masks.to(deltas.device) / params.density


@register("dare_linear", options=DareOptions, mergekit="dare_linear", stats=dare_generators)
def dare_linear(
    base: Tensor, models: list[Tensor], params: DareOptions, *, name: str = "", stats: list[torch.Generator] | None
) -> tuple[Tensor, None]:
    """DARE-linear: randomly dropped, rescaled task vectors, weighted sum."""
    deltas = dare_deltas(base, models, params, stats)
    return combine(base, deltas, params.weight, consensus=False, normalize=params.normalize), None


@register("dare_ties", options=DareOptions, mergekit="dare_ties", stats=dare_generators)
def dare_ties(
    base: Tensor, models: list[Tensor], params: DareOptions, *, name: str = "", stats: list[torch.Generator] | None
) -> tuple[Tensor, None]:
    """DARE-TIES: randomly dropped, rescaled task vectors, merged where signs agree."""
    deltas = dare_deltas(base, models, params, stats)
    return combine(base, deltas, params.weight, consensus=True, normalize=params.normalize), None
