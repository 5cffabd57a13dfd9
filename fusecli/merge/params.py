"""The `merge` section of params.yaml (also built from `fusecli merge --set KEY=VALUE`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from fusecli.errors import FusecliError


@dataclass(frozen=True)
class MergeParams:
    method: str = "sce"
    sce_variant: Literal["release", "sparse"] = "release"  # method.md: release is the authors' code
    select_topk: float = 0.1  # SCE tau: fraction of positions kept by variance
    weight: float | tuple[float, ...] | None = None  # one for all models, or one per model; None: default
    density: float = 0.6  # TIES / DARE: fraction of each task vector kept
    normalize: bool | None = None  # divide by the sum of weights; None: the method's default
    seed: int = 0  # DARE masks are a function of (seed, tensor name, model index)
    device: Literal["cpu", "cuda"] = "cpu"  # where the arithmetic runs; output is identical up to rounding
    max_shard_size: str | int = "5GB"  # output shard size: bytes, or "500MB", "5GB", "2GiB"

    def validate(self) -> None:
        from fusecli.merge.io import parse_size
        from fusecli.merge.registry import get_method

        get_method(self.method)
        if not 0 < self.density <= 1:
            raise FusecliError(
                f"merge.density = {self.density} must be in (0, 1]: the fraction of each task vector kept"
            )
        if not 0 < self.select_topk <= 1:
            raise FusecliError(
                f"merge.select_topk = {self.select_topk} must be in (0, 1]: the fraction of positions kept"
            )
        weights = self.weight if isinstance(self.weight, tuple) else (self.weight,)
        if any(w is not None and not math.isfinite(w) for w in weights):
            raise FusecliError(f"merge.weight = {self.weight} must be finite numbers")
        if isinstance(self.weight, tuple) and not self.weight:
            raise FusecliError("merge.weight is an empty list: give one number, or one per model")
        parse_size(self.max_shard_size)
