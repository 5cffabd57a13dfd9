"""benchmarks/merge_study.py: which domain each source taught, retention, the CE barrier and the tables, on a
planted set of scores (the study itself needs finished workspaces; docs/benchmarks.md records its runs)."""

from __future__ import annotations

import pytest

from benchmarks import merge_study


def run(name: str, crop_merged: float) -> dict:
    def s(crop, sport, lang, ce=1.0):
        return {"crop": {"em": crop, "ce": ce}, "sport": {"em": sport, "ce": ce}, "language": {"em": lang, "ce": ce}}

    scores = {
        "pivot": s(0.4, 0.3, 1.0, ce=2.0),
        "pair:a": s(0.9, 0.3, 1.0, ce=1.0),
        "pair:b": s(0.4, 0.8, 1.0, ce=3.0),
        "line 0.25": s(0, 0, 0, ce=1.5),
        "line 0.5": s(0, 0, 0, ce=2.5),  # the straight line is at 2.0: a barrier of 0.5
        "line 0.75": s(0, 0, 0, ce=2.5),
        "merge:x": s(crop_merged, 0.55, 0.95),
    }
    return {"workspace": f"/w/{name}", "sources": ["a", "b"], "domains": merge_study.source_domains(scores, ["a", "b"]),
            "deltas": {"relative_norm": [0.2, 0.3], "cosine": 0.1, "sign_agreement": 0.55}, "scores": scores}


def test_each_source_owns_the_domain_its_pair_gained_most_on():
    assert run("s0", 0.65)["domains"] == {"a": "crop", "b": "sport"}


def test_retention_is_the_share_of_each_pairs_gain_and_of_the_pivot_elsewhere():
    kept = merge_study.retention(run("s0", 0.65))
    assert kept["merge:x"] == pytest.approx({"crop": 0.5, "sport": 0.5, "language": 0.95})
    assert kept["pair:a"]["crop"] == pytest.approx(1.0) and kept["pivot"]["sport"] == pytest.approx(0.0)


def test_barrier_is_the_worst_rise_above_the_straight_line():
    assert merge_study.barrier(run("s0", 0.65)) == pytest.approx({"crop": 0.5, "sport": 0.5, "language": 0.5})


def test_tables_give_mean_and_half_range_over_workspaces():
    text = merge_study.render([run("s0", 0.65), run("s1", 0.85)])
    row = next(line for line in text.splitlines() if line.startswith("| merge:x |"))
    assert "0.750 ± 0.100" in row  # crop EM over the two
    assert "0.700 ± 0.200" in row  # crop kept: 0.5 and 0.9
    assert "| 0.750 ± 0.033 |" in row  # mean EM over the domains: 0.717 and 0.783 in the two workspaces
    assert text.index("| pivot |") < text.index("| pair:a |") < text.index("| merge:x |")
    assert "| s1 | 0.200, 0.300 | 0.100 | 0.550 | crop +0.500" in text
