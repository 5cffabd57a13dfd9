"""The `align` section of params.yaml (every key is in params.yaml: the values live there, not here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from fusecli.errors import FusecliError

VocabMapName = Literal["ms", "em", "mined_vocab"]


@dataclass(frozen=True)
class AlignParams:
    """params.yaml `align`: token aligner, vocabulary map, output width K, worker processes."""

    method: Literal["mined", "offsets"]
    vocab_map: VocabMapName
    k: int
    workers: int

    UNHASHED: ClassVar[tuple[str, ...]] = ("workers",)  # speed only: dvc.yaml's align@ does not hash them

    def validate(self) -> None:
        if self.k < 1:
            raise FusecliError(f"align.k = {self.k} must be at least 1: set it to the extract top-K (10)")
        if self.workers < 1:
            raise FusecliError(f"align.workers = {self.workers} must be at least 1: use 1 for no process pool")
