"""The `align` section of params.yaml (every key is in params.yaml: the values live there, not here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fusecli.errors import FusecliError

VocabMapName = Literal["ms", "em", "mined_vocab"]
DistMapName = Literal["prefix", "vocab_map"]


@dataclass(frozen=True)
class AlignParams:
    """params.yaml `align`: the map distributions use (`prefix`: each source token to the pivot's first piece
    of its text; `vocab_map`: the paper's, exact match else `vocab_map`), the token aligner and vocabulary
    map of the paper's statistics (saved in vocab_map.safetensors either way), what a pivot position inside a
    source token gets (the source's row conditioned on the prefix, or a one-hot), output width K, workers."""

    dist_map: DistMapName
    within_token: Literal["condition", "one_hot"]
    method: Literal["mined", "offsets"]
    vocab_map: VocabMapName
    k: int
    workers: int

    def validate(self) -> None:
        if self.k < 1:
            raise FusecliError(f"align.k = {self.k} must be at least 1: set it to the extract top-K (10)")
        if self.workers < 1:
            raise FusecliError(f"align.workers = {self.workers} must be at least 1: use 1 for no process pool")
