"""build_demo trains the demo world only where models.lock or dataset.sources reads it (fusecli/demo/use.py),
checked with real `dvc repro` and `dvc status` on a copy of the repository."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fusecli.data.build import DatasetParams, SourceParams
from fusecli.demo.use import PLACEHOLDER, demo_users, read_use, write_use
from fusecli.errors import FusecliError
from fusecli.lock import read_lock
from tests.params import section

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DEMO_LOCK = read_lock(ROOT / "models.lock")  # the shipped lock: the demo's pivot and sources


def dataset(*paths: str) -> DatasetParams:
    return section(DatasetParams, "dataset", sources=tuple(SourceParams(path=p) for p in paths))


def test_demo_users_are_the_demo_models_and_the_demo_data():
    own = DEMO_LOCK.with_pivot(DEMO_LOCK.pivot.__class__(**{**DEMO_LOCK.pivot.__dict__, "origin": "local"}))
    for slug in DEMO_LOCK.sources:
        own = own.without_source(slug)
    assert demo_users(DEMO_LOCK, dataset("demo")) == [
        "pivot qwen2-languages", "sources.llama-crops", "sources.mistral-sports", "dataset.sources (path: demo)"]
    assert demo_users(own, dataset("mine.jsonl")) == []
    assert demo_users(own, dataset("mine.jsonl", "demo")) == ["dataset.sources (path: demo)"]
    assert demo_users(DEMO_LOCK.without_source("llama-crops"), dataset("mine.jsonl"))[-1] == "sources.mistral-sports"


def test_the_use_file_holds_only_the_answer(tmp_path):
    """Its bytes change only with the answer: that is what keeps build_demo cached when another model is pinned."""
    write_use(DEMO_LOCK, dataset("demo"), tmp_path / "a.json")
    write_use(DEMO_LOCK.without_source("llama-crops"), dataset("demo", "mine.jsonl"), tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert read_use(tmp_path / "a.json") is True
    (tmp_path / "c.json").write_text('{"used": "yes"}')
    with pytest.raises(FusecliError, match="no boolean 'used'"):
        read_use(tmp_path / "c.json")
    with pytest.raises(FusecliError, match="run `dvc repro demo_use`"):
        read_use(tmp_path / "missing.json")


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(cwd), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def ran(out: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", out))


def set_dataset(ws: Path, *paths: str) -> None:
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["dataset"]["sources"] = [{"path": p} for p in paths]
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["fusecli", "dataset-deps"], ws)


@pytest.mark.slow
def test_a_workspace_of_its_own_models_and_data_never_trains_the_demo(tmp_path, tiny_models):
    ws = tmp_path / "ws"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout.split("\n")
    for f in files:
        if f and (ROOT / f).is_file():
            (ws / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, ws / f)
    for name, folder in tiny_models.items():
        shutil.copytree(folder, ws / "local" / name)
    (ws / "mine.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                            {"role": "assistant", "content": "hello"}]}) + "\n")
    run(["git", "init", "-q"], ws)
    # The README's order for a workspace without the demo.
    run(["fusecli", "set-pivot", "local/qwen"], ws)
    run(["fusecli", "add-source", "local/llama"], ws)
    for slug in DEMO_LOCK.sources:
        run(["fusecli", "remove-source", slug], ws)
    set_dataset(ws, "mine.jsonl")

    out = run(["dvc", "repro", "build_demo"], ws)
    assert ran(out) == {"demo_use", "build_demo"}
    assert "not built" in out
    assert sorted(p.name for p in (ws / "demo" / "models").iterdir()) == [PLACEHOLDER]
    assert (ws / "demo" / "dialogues.jsonl").read_text() == ""
    assert "up to date" in run(["dvc", "status", "--with-deps", "build_demo"], ws)

    run(["fusecli", "add-source", "local/qwen", "--name", "qwen-src"], ws)  # pinning reruns only the answer
    assert "demo_use" in run(["dvc", "status", "--with-deps", "build_demo"], ws)
    out = run(["dvc", "repro", "build_demo"], ws)
    assert ran(out) == {"demo_use"} and "Stage 'build_demo' didn't change, skipping" in out
    assert "up to date" in run(["dvc", "status", "--with-deps", "build_demo"], ws)

    set_dataset(ws, "mine.jsonl", "demo")  # the demo's data wanted again: build_demo is stale (test_pipeline builds it)
    assert ran(run(["dvc", "repro", "demo_use"], ws)) == {"demo_use"}
    assert "demo/use.json" in run(["dvc", "status", "build_demo"], ws)
