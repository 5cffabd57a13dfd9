"""benchmarks/dilution.py: the drops against a plain recomputation, the random source a user's add-source accepts,
the refusal of an unfinished workspace, and (slow) a real run on the demo world scaled down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks import dilution, quality
from fusecli.errors import FusecliError
from tests.tiny import write_dataset

ROOT = Path(__file__).resolve().parents[2]


def scores(**domains: tuple[float, float]) -> dict:
    return {d: {"em": em, "ce": ce} for d, (em, ce) in domains.items()}


def test_drops_are_per_domain_and_signed_by_the_score():
    before = {"merged": scores(crop=(0.60, 1.0), sport=(0.50, 2.0), mean=(0.55, 1.5)),
              "merged:linear": scores(crop=(0.40, 1.0), sport=(0.30, 2.0)),
              "fused:a": scores(crop=(0.9, 0.5)), "merged:gone": scores(crop=(0.1, 1.0))}
    after = {"merged": scores(crop=(0.55, 1.5), sport=(0.52, 1.0), mean=(0.1, 9.0)),
             "merged:linear": scores(crop=(0.40, 1.0), sport=(0.10, 2.5)), "fused:a": scores(crop=(0.0, 9.0))}
    em = dilution.drops(before, after, "em")
    assert set(em) == {"merged", "merged:linear"}  # merged models present before and after; no pair model
    assert em["merged"]["domains"] == {"crop": {"before": 0.60, "after": 0.55, "drop": pytest.approx(0.05)},
                                       "sport": {"before": 0.50, "after": 0.52, "drop": pytest.approx(-0.02)}}
    assert (em["merged"]["worst"], em["merged"]["max_drop"]) == ("crop", pytest.approx(0.05))  # not the mean row
    assert (em["merged:linear"]["worst"], em["merged:linear"]["max_drop"]) == ("sport", pytest.approx(0.2))
    ce = dilution.drops(before, after, "ce")  # lower is better: a higher CE after is the drop
    assert ce["merged"]["domains"]["crop"]["drop"] == pytest.approx(0.5)
    assert (ce["merged"]["worst"], ce["merged"]["max_drop"]) == ("crop", pytest.approx(0.5))
    lines = "\n".join(dilution.report_lines(em, "em", 0.03))
    assert "| crop | 0.600 | 0.550 | -0.050 |" in lines
    assert "merged: largest drop +0.050 (crop); issue 24's bar (<= 0.03): NOT met" in lines


def test_the_random_source_is_pinned_by_add_source_with_its_own_tokenizer(tmp_path):
    ws = tmp_path / "ws"
    (ws / "data").mkdir(parents=True)
    (ws / "models.lock").write_text((ROOT / "models.lock").read_text())
    write_dataset(ws / "data" / "train.parquet", n=30)
    folder = dilution.write_random_model(ws / "models" / "random", dilution.training_lines(ws), "gpt_neox", 320,
                                         32, 1, seed=0)
    quality.run_logged(["fusecli", "add-source", str(folder), "--name", "random"], ws, tmp_path / "log",
                       "fusecli add-source")
    entry = yaml.safe_load((ws / "models.lock").read_text())["sources"]["random"]
    assert entry["origin"] == "local" and entry["path"] == "models/random"
    assert entry["architecture"] == "GPTNeoXForCausalLM" and entry["vocab_size"] == 320
    assert entry["chat_template_hash"].startswith("sha256:")

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}], tokenize=False)
    assert "<|im_start|>user" in text and len(tok) == 320
    again = dilution.write_random_model(tmp_path / "again", dilution.training_lines(ws), "gpt_neox", 320, 32, 1, 0)
    assert (again / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()  # seeded


def test_an_unfinished_workspace_is_refused(tmp_path):
    with pytest.raises(FusecliError, match="has no eval/metrics.json: run `dvc repro` there first"):
        dilution.check_finished(tmp_path, tmp_path / "log")
    with pytest.raises(FusecliError, match="data/train.parquet is missing: pass --workspace a workspace where"):
        dilution.training_lines(tmp_path)


@pytest.mark.slow
def test_a_random_source_on_the_demo_world(tmp_path):
    """A finished scaled-down demo workspace (tests/benchmarks/test_quality.py's FAST settings), then the script:
    the random source gets its pair run, every merge reruns, and the drops of each merged model come out."""
    from tests.benchmarks.test_quality import FAST

    ws = tmp_path / "finished"
    ws.mkdir()
    quality.copy_workspace(ROOT, ws)
    quality.configure(ws, 0, [quality.parse_set(s) for s in FAST])
    quality.repro(ws, tmp_path / "repro.log")
    out = tmp_path / "d.json"
    cmd = [sys.executable, "-m", "benchmarks.dilution", "--workspace", str(ws), "--workdir", str(tmp_path / "work"),
           "--hidden-size", "32", "--layers", "1", "--vocab-size", "400", "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    methods = yaml.safe_load((ws / "params.yaml").read_text())["merge"]["methods"]
    assert set(result["models"]) == {"merged"} | {f"merged:{m}" for m in methods}
    domains = set(json.loads((ws / "eval" / "metrics.json").read_text())["models"]["merged"])
    for r in result["models"].values():
        assert set(r["domains"]) == domains and r["max_drop"] == max(v["drop"] for v in r["domains"].values())
    assert 0.0 <= result["source"]["taught"]["fuse@random"] <= 1.0
    assert result["source"]["taught"]["fuse_all"] is not None
    copy = tmp_path / "work" / "workspace"
    assert "random" in yaml.safe_load((copy / "models.lock").read_text())["sources"]
    assert "random" not in yaml.safe_load((ws / "models.lock").read_text())["sources"]  # the original is untouched
    assert (copy / "fused" / "random" / "config.json").is_file()
    assert "merged: largest drop" in proc.stdout and "random source random (gpt_neox) taught:" in proc.stdout
