"""The implicit path follows the reward and nothing else: a planted reward that prefers wrong answers makes
`imf` worse than SFT on the references, and the honest rule makes it right.

Every prompt gets two responses from each of two sources, one right and one wrong (what sample@ writes, with
the sampling left out: tests/imf/test_sample.py covers it), so the choice lies with the reward alone. The
scores, choices, imf_sft and imf_dpo then run as the stages run them; the SFT row is the same training on the
references (sft_baseline's loss and settings).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import polars as pl
import pytest
import torch

from fusecli.evaluate.run import exact_matches
from fusecli.fuse.train import FuseParams
from fusecli.imf import rewards
from fusecli.imf.pairs import Choice, choices
from fusecli.imf.params import TrainParams
from fusecli.imf.rewards import ScoreParams
from fusecli.imf.score import score
from fusecli.imf.tables import SAMPLES, SCORES, load_samples, read_table, write_table
from fusecli.imf.train import train_dpo, train_sft
from fusecli.models import load_model, load_tokenizer
from tests.params import section
from tests.tiny import dialogues, write_dataset, write_model

N = 12
pytestmark = pytest.mark.slow


class Planted(rewards.RuleReward):
    """Rewards exactly the wrong answers."""

    def config(self) -> dict:
        return {"reward": "planted"}

    def score(self, items: list[rewards.Item]) -> list[float | None]:
        return [None if s is None else 1.0 - s for s in super().score(items)]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return make_world(tmp_path_factory.mktemp("imf"))


def make_world(root: Path) -> Path:
    """The training data, a tiny pivot and two sources' samples: per prompt one right and one wrong answer."""
    write_dataset(root / "train.parquet", N)
    write_model(root / "pivot", "qwen2", 300, seed=0)
    answers = [d[-1]["content"] for d in dialogues(N)]
    kinds = sorted(set(answers))
    for s, source in enumerate(("a", "b")):
        rows = []
        for i, d in enumerate(dialogues(N)):
            wrong = kinds[(kinds.index(answers[i]) + 1 + s) % len(kinds)]
            replies = [answers[i], wrong] if s == 0 else [wrong, answers[i]]
            rows += [{"row": i, "id": f"r{i}", "source": source, "k": k, "prompt": json.dumps(d[:-1]),
                      "response": r} for k, r in enumerate(replies)]
        write_table(pl.DataFrame(rows, schema=SAMPLES), root / "samples" / f"{source}.parquet")
    return root


def fuse_params(tmp: Path) -> FuseParams:
    return section(FuseParams, "fuse", max_steps=60, learning_rate=0.01, global_batch_size=12, micro_batch_size=12,
                   logging_steps=10, save_steps=1000, warmup_ratio=0.0, scratch=str(tmp / "scratch"))


def train_params(**changes) -> TrainParams:
    base = TrainParams(max_length=64, loss_type="sigmoid_norm", beta=1.0, gap_min=0.5, gap_max=None,
                       learning_rate=0.001, epochs=1.0, max_steps=20)
    return dataclasses.replace(base, **changes)


def right_share(model_dir: Path) -> float:
    tok = load_tokenizer(model_dir)
    model = load_model(model_dir, torch.device("cpu"), torch.float32).eval()
    rows = [{"messages": d, "answer": d[-1]["content"]} for d in dialogues(N)]
    return sum(exact_matches(model, tok, rows, N, 4, torch.device("cpu"))) / N


def imf_run(world: Path, reward: str, tmp: Path) -> dict[str, float]:
    params = ScoreParams(reward=reward, reward_model=None, batch_size=8, device="cpu", dtype="auto")
    score(world / "train.parquet", world / "samples", ["a", "b"], tmp / "scores.parquet", params, "params.yaml",
          None)
    train = train_params()
    picked = choices(load_samples(world / "samples", ["a", "b"]), read_table(tmp / "scores.parquet", SCORES, "score"),
                     train.gap_min, train.gap_max)
    assert len(picked) == N and all(c.rejected is not None for c in picked)  # every prompt has a same-source pair
    fuse = fuse_params(tmp)
    train_sft(str(world / "pivot"), picked, str(tmp / "sft"), str(tmp / "logs_sft"), fuse, train.max_length, {})
    train_dpo(str(tmp / "sft"), picked, str(tmp / "dpo"), str(tmp / "logs_dpo"), fuse, train, {})
    return {"imf_sft": right_share(tmp / "sft"), "imf": right_share(tmp / "dpo")}


def test_a_reward_preferring_wrong_answers_makes_imf_worse_than_sft(world: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setitem(rewards.REWARDS, "planted", Planted)
    references = [Choice(i, json.dumps(d[:-1]), "reference", d[-1]["content"], 1.0, None, None)
                  for i, d in enumerate(dialogues(N))]
    fuse = fuse_params(tmp_path)
    train_sft(str(world / "pivot"), references, str(tmp_path / "sft_baseline"), str(tmp_path / "logs_b"), fuse,
              64, {})
    sft = right_share(tmp_path / "sft_baseline")
    planted = imf_run(world, "planted", tmp_path / "planted")
    honest = imf_run(world, "rule", tmp_path / "honest")
    assert sft >= 0.9, "the SFT row learns the references (else the comparison below says nothing)"
    assert planted["imf"] < sft - 0.5 and planted["imf_sft"] < sft - 0.5
    assert honest["imf_sft"] >= 0.9 and honest["imf"] > planted["imf"] + 0.5  # the same data, the honest reward
