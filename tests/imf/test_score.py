"""The score stage: the rule reward, and the per-response cache (adding a source rates only its responses)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from fusecli.errors import FusecliError
from fusecli.imf import rewards
from fusecli.imf.rewards import Item, RuleReward, ScoreParams
from fusecli.imf.score import score
from fusecli.imf.tables import SAMPLES, SCORES, read_table, write_table

PARAMS = ScoreParams(reward="rule", reward_model=None, batch_size=4, device="cpu", dtype="auto")


def test_rule_reward_is_membership_in_the_accepted_answers():
    r = RuleReward(PARAMS, "params.yaml")
    items = [Item([], " peru ", "Peru", None), Item([], "Chile", "Peru", ["Peru", "Chile"]),
             Item([], "Peru.", "Peru", None), Item([], "x", None, None)]
    assert r.score(items) == [1.0, 1.0, 0.0, None]


def write_samples(folder: Path, source: str, responses: list[str]) -> None:
    rows = [{"row": i % 2, "id": f"r{i % 2}", "source": source, "k": i // 2,
             "prompt": json.dumps([{"role": "user", "content": f"q{i % 2}"}]), "response": r}
            for i, r in enumerate(responses)]
    write_table(pl.DataFrame(rows, schema=SAMPLES), folder / f"{source}.parquet")


class Counting(RuleReward):
    rated: list[str] = []

    def score(self, items):
        Counting.rated += [it.response for it in items]
        return super().score(items)


def test_adding_a_source_rates_only_its_responses(tmp_path, monkeypatch):
    monkeypatch.setitem(rewards.REWARDS, "rule", Counting)
    pl.DataFrame({"id": ["r0", "r1"], "domain": ["d", "d"], "messages": ["[]", "[]"], "answer": ["A", "B"]}
                 ).write_parquet(tmp_path / "train.parquet")
    write_samples(tmp_path / "samples", "a", ["A", "B", "x", "B"])
    out = tmp_path / "scores.parquet"
    done = score(tmp_path / "train.parquet", tmp_path / "samples", ["a"], out, PARAMS, "params.yaml", tmp_path / "c")
    assert sorted(Counting.rated) == ["A", "B", "x"] and done["rated"] == 3  # row 1's two "B": one response
    write_samples(tmp_path / "samples", "b", ["A", "y"])
    Counting.rated = []
    done = score(tmp_path / "train.parquet", tmp_path / "samples", ["a", "b"], out, PARAMS, "params.yaml",
                 tmp_path / "c")
    assert Counting.rated == ["y"] and done == {"responses": 6, "rated": 1, "cached": 5, "unscored": {}}
    # b's "A" to prompt r0 is a's "A" to r0 again: one response, one cached score
    table = read_table(out, SCORES, "score").sort(["source", "k", "row"])
    assert table["score"].to_list() == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]


def test_a_missing_source_table_names_the_stage_to_run(tmp_path):
    pl.DataFrame({"id": ["r0"], "messages": ["[]"], "answer": ["A"]}).write_parquet(tmp_path / "train.parquet")
    with pytest.raises(FusecliError, match=r"samples/b.parquet is missing or unreadable: run `dvc repro sample@b`"):
        score(tmp_path / "train.parquet", tmp_path / "samples", ["b"], tmp_path / "s.parquet", PARAMS, "params.yaml",
              None)
