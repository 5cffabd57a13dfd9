"""A user's own JSONL through the real `dvc repro`: the held-out rows they asked for, and a reply cut at
extract.max_length counted and warned about (`fusecli check` warned before the run)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.tiny import write_model

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1", "COLUMNS": "400"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def dialogue(i: int, domain: str, reply: str) -> dict:
    return {"id": f"{domain}{i}", "domain": domain,
            "messages": [{"role": "user", "content": f"Question {i} about {domain}?"},
                         {"role": "assistant", "content": reply}]}


def test_own_jsonl_eval_count_and_cut_replies(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    for name in ("dvc.yaml", "params.yaml", ".dvc/config", "stages", "fusecli"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, ws / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (ws / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, ws / name)
    rows = [dialogue(i, d, f"Answer {i}.") for d in ("crops", "sports", "music") for i in range(6)]
    rows[0] = dialogue(0, "crops", " ".join(f"word{j}" for j in range(80))) | {"split": "train"}  # past 64 tokens
    (ws / "chats").mkdir()
    (ws / "chats/mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["dataset"].update(sources=[{"path": "chats/mine.jsonl"}], eval=2, max_chars=8000)
    params["extract"].update(max_length=64, batch_tokens=512, shard_size=8)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_model(ws / "models/pivot", "qwen2", 300)
    write_model(ws / "models/source", "llama", 280, seed=1)
    run(["git", "init", "-q"], ws)
    run(["fusecli", "set-pivot", "models/pivot", "--name", "pivot"], ws)
    run(["fusecli", "add-source", "models/source", "--name", "src"], ws)
    run(["fusecli", "dataset-deps"], ws)
    check = " ".join(run(["fusecli", "check"], ws).stdout.split())
    assert "warning: dataset.max_chars = 8000 cannot fit extract.max_length = 64" in check

    build = run(["dvc", "repro", "-s", "build_dataset"], ws)
    held = pl.read_parquet(ws / "data/eval.parquet")
    assert dict(held.group_by("domain").len().iter_rows()) == {"crops": 2, "sports": 2, "music": 2}
    assert "eval.parquet (6 rows: crops 2, music 2, sports 2)" in build.stdout
    train = pl.read_parquet(ws / "data/train.parquet")
    assert train.height == 12 and "mine:crops0" in set(train["id"])

    extract = run(["dvc", "repro", "-s", "extract_pivot"], ws)
    summary = json.loads((ws / "extract/pivot/manifest.json").read_text())["summary"]
    assert summary["cut_rows"] == [train["id"].to_list().index("mine:crops0")]
    assert 0 < summary["response_tokens_cut"] < summary["response_tokens"]
    assert "warning: extract pivot: 1 of 12 rows cut at extract.max_length = 64 (ids mine:crops0)" in extract.stderr
    assert "1 of 12 rows cut at extract.max_length = 64" in extract.stdout
