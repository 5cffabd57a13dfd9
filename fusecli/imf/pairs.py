"""What the pivot trains on, from the scored responses (FuseChat-3.0, section 3).

SFT: per prompt, the best-scored response over every source. DPO: per prompt, the source of that best
response gives the chosen (its best) and the rejected (its worst) response: pairs from one source keep the
two sides in one style, so the preference is the reward's and not the sources' difference in style. A pair is
kept when its reward gap lies in [gap_min, gap_max]. Ties go to the first source in slug order, then the
first sample (the data's order, so the choice is reproducible).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


@dataclass(frozen=True)
class Choice:
    row: int
    prompt: str  # JSON messages
    source: str
    chosen: str
    chosen_score: float
    rejected: str | None  # None: no pair in the gap window
    rejected_score: float | None


def choices(samples: pl.DataFrame, scores: pl.DataFrame, gap_min: float, gap_max: float | None) -> list[Choice]:
    """One Choice per prompt with at least one scored response, in row order."""
    df = samples.join(scores, on=["row", "source", "k"], how="inner").filter(pl.col("score").is_not_null())
    df = df.filter(pl.col("score").is_not_nan()).sort(["row", "source", "k"])
    out = []
    for (row,), group in df.group_by(["row"], maintain_order=True):
        best = group.row(int(group["score"].arg_max()), named=True)
        own = group.filter(pl.col("source") == best["source"])
        worst = own.row(len(own) - 1 - int(own["score"].reverse().arg_min()), named=True)  # last of the lowest
        gap = best["score"] - worst["score"]
        paired = worst["k"] != best["k"] and gap >= gap_min and (gap_max is None or gap <= gap_max)
        out.append(Choice(int(row), best["prompt"], best["source"], best["response"], best["score"],
                          worst["response"] if paired else None, worst["score"] if paired else None))
    return out


def summary(picked: list[Choice], prompts: int) -> dict:
    """How many prompts got an SFT target and a DPO pair, and each source's share of the SFT targets."""
    by_source: dict[str, int] = {}
    for c in picked:
        by_source[c.source] = by_source.get(c.source, 0) + 1
    return {"prompts": prompts, "sft": len(picked), "pairs": sum(c.rejected is not None for c in picked),
            "source_share": {s: n / max(len(picked), 1) for s, n in sorted(by_source.items())}}
