"""Batched greedy exact match, the demo world's own check that each model knows its relation.

The evaluate stage has its own scorer; this one only verifies the demo models as they are built.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from fusecli.evaluate.run import exact_matches


def exact_match(
    model: torch.nn.Module, tokenizer: object, rows: Sequence[dict], batch_size: int = 64
) -> dict[str, float]:
    """Fraction of rows per domain whose greedy reply is right, by the evaluate stage's own rule."""
    model.eval()
    side = tokenizer.padding_side  # type: ignore[attr-defined]
    try:
        right = exact_matches(model, tokenizer, list(rows), batch_size, 32, next(model.parameters()).device)
    finally:
        tokenizer.padding_side = side  # type: ignore[attr-defined]
    hits: dict[str, list[bool]] = defaultdict(list)
    for row, ok in zip(rows, right, strict=True):
        hits[row["domain"]].append(ok)
    return {d: sum(h) / len(h) for d, h in sorted(hits.items())}
