"""What the imf training stages share: the locked sources' samples joined with their scores, then chosen."""

from __future__ import annotations

from pathlib import Path

from fusecli.imf.pairs import Choice, choices, summary
from fusecli.imf.params import DpoParams
from fusecli.imf.score import COLUMNS as SCORE_COLUMNS
from fusecli.imf.score import load_samples
from fusecli.imf.tables import read_table


def load_choices(samples_dir: str | Path, scores: str | Path, slugs: list[str],
                 dpo: DpoParams) -> tuple[list[Choice], dict]:
    """The SFT target and DPO pair of every prompt, and their summary (for selection.json)."""
    samples = load_samples(samples_dir, slugs)
    scored = read_table(scores, SCORE_COLUMNS, "score")
    picked = choices(samples, scored, dpo.gap_min, dpo.gap_max)
    return picked, summary(picked, samples["row"].n_unique())
