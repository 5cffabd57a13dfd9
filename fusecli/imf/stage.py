"""What the imf training stages share: the locked sources' samples joined with their scores, then chosen."""

from __future__ import annotations

from pathlib import Path

from fusecli.imf.pairs import Choice, choices, summary
from fusecli.imf.params import TrainParams
from fusecli.imf.tables import SCORES, load_samples, read_table


def load_choices(samples_dir: str | Path, scores: str | Path, slugs: list[str],
                 train: TrainParams) -> tuple[list[Choice], dict]:
    """The SFT target and DPO pair of every prompt, and their summary (for selection.json)."""
    samples = load_samples(samples_dir, slugs)
    scored = read_table(scores, SCORES, "score")
    picked = choices(samples, scored, train.gap_min, train.gap_max)
    return picked, summary(picked, samples["row"].n_unique())
