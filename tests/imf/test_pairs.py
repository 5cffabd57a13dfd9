"""pairs.choices against a plain reference: best over every source for SFT, that source's worst for DPO,
the gap window, ties and unscored responses."""

from __future__ import annotations

import random

import polars as pl

from fusecli.imf.pairs import choices, summary
from fusecli.imf.tables import SAMPLES, SCORES


def tables(rows: list[tuple[int, str, int, float | None]]) -> tuple[pl.DataFrame, pl.DataFrame]:
    samples = pl.DataFrame([{"row": r, "id": f"r{r}", "source": s, "k": k, "prompt": f"p{r}", "response": f"{s}{r}.{k}"}
                            for r, s, k, _ in rows], schema=SAMPLES)
    scores = pl.DataFrame([{"row": r, "source": s, "k": k, "score": v} for r, s, k, v in rows], schema=SCORES)
    return samples, scores


def reference(rows, gap_min, gap_max):
    """Plain loops: per row, max score (first in (source, k) order); worst of that source (last of the lowest)."""
    out = []
    for row in sorted({r for r, *_ in rows}):
        mine = sorted((s, k, v) for r, s, k, v in rows if r == row and v is not None)
        if not mine:
            continue
        top = max(v for _, _, v in mine)
        bs, bk, _ = next(x for x in mine if x[2] == top)
        own = [x for x in mine if x[0] == bs]
        low = min(v for _, _, v in own)
        _, wk, _ = [x for x in own if x[2] == low][-1]
        gap = top - low
        ok = wk != bk and gap >= gap_min and (gap_max is None or gap <= gap_max)
        out.append((row, bs, f"{bs}{row}.{bk}", top, f"{bs}{row}.{wk}" if ok else None))
    return out


def test_choices_match_the_plain_reference_on_random_scores():
    rng = random.Random(0)
    for trial in range(30):
        rows = [(r, s, k, rng.choice([None, 0.0, 0.5, 1.0, rng.random()]))
                for r in range(8) for s in ("b", "a", "c") for k in range(3)]
        gap_min, gap_max = rng.choice([(0.0, None), (0.5, None), (0.1, 0.6)])
        got = choices(*tables(rows), gap_min, gap_max)
        assert [(c.row, c.source, c.chosen, c.chosen_score, c.rejected) for c in got] == \
            reference(rows, gap_min, gap_max), trial


def test_pairs_come_from_one_source_and_the_window_bounds_the_gap():
    rows = [(0, "a", 0, 0.9), (0, "a", 1, 0.1), (0, "b", 0, 0.0),  # a's best is best: a's worst is rejected
            (1, "a", 0, 0.6), (1, "a", 1, 0.55), (1, "b", 0, 0.2),  # gap 0.05 < gap_min: SFT only
            (2, "a", 0, None), (2, "b", 0, None)]  # nothing scored: no choice at all
    got = choices(*tables(rows), 0.1, 0.9)
    assert [(c.row, c.chosen, c.rejected) for c in got] == [(0, "a0.0", "a0.1"), (1, "a1.0", None)]
    assert summary(got, 3) == {"prompts": 3, "sft": 2, "pairs": 1, "source_share": {"a": 1.0}}
    assert [c.rejected for c in choices(*tables(rows), 0.1, 0.5)] == [None, None]  # gap 0.8 > gap_max
