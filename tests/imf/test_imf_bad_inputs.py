"""Every new option of the implicit path, set wrong: one line naming the problem and the fix, exit status 1,
before any work (the stage mains, as DVC runs them, in-process)."""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from fusecli.closure import ROOT
from fusecli.errors import FusecliError
from fusecli.fuse.train import FuseParams
from fusecli.imf.pairs import Choice
from fusecli.imf.params import TrainParams, load_imf
from fusecli.imf.rewards import ScoreParams
from fusecli.imf.score import score
from fusecli.imf.tables import SAMPLES, write_table
from fusecli.imf.train import sft_examples, train_dpo
from tests.params import section

STAGE_ARGS = {
    "sample": ["--source", "a", "--data", "d", "--out", "o"],
    "score": ["--data", "d", "--samples", "s", "--out", "o"],
    "imf_sft": ["--samples", "s", "--scores", "c", "--out", "o", "--live-dir", "l"],
    "imf_dpo": ["--samples", "s", "--scores", "c", "--sft", "m", "--out", "o", "--live-dir", "l"],
}
CASES = {  # (stage, imf.<key>.<option> = value) -> the line
    "n": ("sample", "sample", "n", 1, "imf.sample.n = 1 must be >= 2: the preference stage pairs a source's best "
          "and worst responses"),
    "temperature": ("sample", "sample", "temperature", 0, "imf.sample.temperature = 0.0 must be > 0 (sampling, not "
                    "greedy)"),
    "top_p": ("sample", "sample", "top_p", 1.5, "imf.sample.top_p = 1.5 must be within (0, 1]"),
    "max_new_tokens": ("sample", "sample", "max_new_tokens", 0, "imf.sample.max_new_tokens and imf.sample.batch_size "
                       "must be >= 1"),
    "batch_size": ("sample", "sample", "batch_size", 0, "imf.sample.max_new_tokens and imf.sample.batch_size must be "
                   ">= 1"),
    "backend": ("sample", "sample", "backend", "tgi", "imf.sample.backend = 'tgi' is unknown: use one of "
                "['transformers', 'vllm']"),
    "seed": ("sample", "sample", "seed", "x", "imf.sample.seed = 'x' must be of type int"),
    "sample-key": ("sample", "sample", "samples", 3, "imf.sample: unknown key 'samples'; valid keys: backend, "
                   "batch_size, device, dtype, max_new_tokens, n, seed, temperature, top_p"),
    "reward": ("score", "score", "reward", "magic", "imf.score.reward = 'magic' is unknown: use one of "
               "['judge', 'reward_model', 'rule']"),
    "reward_model": ("score", "score", "reward", "reward_model", "imf.score.reward is reward_model but "
                     "imf.score.reward_model is null: give the folder of a sequence-classification reward model"),
    "score-batch": ("score", "score", "batch_size", 0, "imf.score.batch_size = 0 must be >= 1"),
    "max_length": ("imf_sft", "train", "max_length", 4, "imf.train.max_length = 4 must be >= 8 tokens"),
    "loss_type": ("imf_dpo", "train", "loss_type", "kto", "imf.train.loss_type = 'kto' is unknown: use one of "
                  "['aot', 'aot_unpaired', 'apo_down', 'apo_zero', 'bco_pair', 'discopop', 'exo_pair', 'hinge', "
                  "'ipo', 'nca_pair', 'robust', 'sft', 'sigmoid', 'sigmoid_norm', 'sppo_hard']"),
    "beta": ("imf_dpo", "train", "beta", 0, "imf.train.beta = 0.0 must be > 0"),
    "gap_min": ("imf_dpo", "train", "gap_min", -1, "imf.train gap window [-1.0, None] is empty or negative: set "
                "0 <= gap_min <= gap_max (or gap_max: null)"),
    "gap_max": ("imf_dpo", "train", "gap_max", 0.1, "imf.train gap window [0.5, 0.1] is empty or negative: set "
                "0 <= gap_min <= gap_max (or gap_max: null)"),
    "learning_rate": ("imf_dpo", "train", "learning_rate", 0, "imf.train.learning_rate = 0.0 must be > 0"),
    "train-missing": ("imf_dpo", "train", "beta", None, "imf.train.beta is missing: add it to params.yaml"),
}


def run_stage(stage: str, params: Path, monkeypatch, capsys) -> str:
    monkeypatch.chdir(params.parent)
    monkeypatch.setattr(sys, "argv", [f"{stage}.py", "--params", str(params), "--lock", "models.lock",
                                      *STAGE_ARGS[stage]])
    with pytest.raises(SystemExit) as code:
        importlib.import_module(f"stages.{stage}").main()
    assert code.value.code == 1
    return capsys.readouterr().err.strip()


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_option_is_one_line(case, tmp_path, monkeypatch, capsys):
    stage, key, option, value, line = CASES[case]
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    if value is None:
        del data["imf"][key][option]
    else:
        data["imf"][key][option] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    assert run_stage(stage, tmp_path / "params.yaml", monkeypatch, capsys) == f"error: {line}"


def test_epochs_and_max_steps_both_off_is_one_line(tmp_path, monkeypatch, capsys):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["imf"]["train"].update(epochs=0, max_steps=-1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    err = run_stage("imf_dpo", tmp_path / "params.yaml", monkeypatch, capsys)
    assert err == "error: imf.train.epochs or imf.train.max_steps must be > 0"


def test_no_imf_section_is_one_line(tmp_path, monkeypatch, capsys):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    del data["imf"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    err = run_stage("score", tmp_path / "params.yaml", monkeypatch, capsys)
    path = tmp_path / "params.yaml"
    assert err == f"error: {path} has no imf.score section: add it (see params.yaml in the repository)"


def test_a_source_not_in_the_lock_is_one_line(tmp_path, monkeypatch, capsys):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copy(ROOT / "models.lock", tmp_path / "models.lock")
    err = run_stage("sample", tmp_path / "params.yaml", monkeypatch, capsys)
    assert err == "error: no source 'a' in models.lock: add it with fusecli add-source"


def scoring_world(tmp_path: Path) -> Path:
    pl.DataFrame({"id": ["r0"], "messages": ["[]"], "answer": ["A"]}).write_parquet(tmp_path / "train.parquet")
    write_table(pl.DataFrame([{"row": 0, "id": "r0", "source": "a", "k": 0, "response": "A",
                               "prompt": json.dumps([{"role": "user", "content": "q"}])}], schema=SAMPLES),
                tmp_path / "samples" / "a.parquet")
    return tmp_path


def test_a_reward_model_folder_without_a_model_is_one_line(tmp_path):
    ws = scoring_world(tmp_path)
    params = ScoreParams(reward="reward_model", reward_model=str(tmp_path / "nowhere"), batch_size=2, device="cpu",
                         dtype="auto")
    with pytest.raises(FusecliError, match=r"^imf.score.reward_model = '.*nowhere' is not a model folder with "
                                           r"safetensors weights: give the local folder"):
        score(ws / "train.parquet", ws / "samples", ["a"], ws / "s.parquet", params, str(ROOT / "params.yaml"), None)


def test_an_unreachable_judge_is_one_line(tmp_path):
    pytest.importorskip("openai")
    ws = scoring_world(tmp_path)
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["evaluate"]["judge"].update(base_url="http://127.0.0.1:9/v1", retries=0, timeout=5.0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    params = ScoreParams(reward="judge", reward_model=None, batch_size=2, device="cpu", dtype="auto")
    with pytest.raises(FusecliError, match=r"^cannot reach the judge at http://127.0.0.1:9/v1: start the server"):
        score(ws / "train.parquet", ws / "samples", ["a"], ws / "s.parquet", params, str(tmp_path / "params.yaml"),
              None)
    assert not (ws / "s.parquet").exists()


def test_nothing_to_train_on_is_one_line(tmp_path):
    train = load_imf(TrainParams, "train", ROOT / "params.yaml")
    with pytest.raises(FusecliError, match=r"^no prompt has a scored response that fits imf.train.max_length"):
        sft_examples(object(), [], train.max_length)



def test_no_preference_pair_keeps_the_sft_model_with_a_warning(tmp_path, capsys):
    train = load_imf(TrainParams, "train", ROOT / "params.yaml")
    sft = tmp_path / "sft"
    sft.mkdir()
    (sft / "model.safetensors").write_bytes(b"weights")
    (sft / "config.json").write_text("{}")
    unpaired = [Choice(0, "[]", "a", "A", 1.0, None, None)]
    summary = train_dpo(str(sft), unpaired, str(tmp_path / "o"), str(tmp_path / "l"), section(FuseParams, "fuse"),
                        train, {"prompts": 1})  # fmt: skip
    assert (tmp_path / "o" / "model.safetensors").read_bytes() == b"weights"
    assert summary["steps"] == 0 and "imf is imf_sft" in summary["warning"]
    assert json.loads((tmp_path / "l" / "selection.json").read_text())["warning"] == summary["warning"]
    assert "warning: imf_dpo: no preference pair lies in the reward-gap window" in capsys.readouterr().err
