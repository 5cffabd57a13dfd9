"""The user's dataset files are DVC dependencies of build_dataset: an edit reruns the dataset."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fusecli.config import load_section
from fusecli.data.build import DatasetParams, SourceParams
from fusecli.data.deps import check_declared, declared_files, sync_declared
from fusecli.errors import FusecliError

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def row(i: int) -> str:
    return json.dumps({"messages": [{"role": "user", "content": f"Question {i}?"},
                                    {"role": "assistant", "content": f"Answer {i}"}]})


def params(*paths: str) -> DatasetParams:
    return DatasetParams(sources=tuple(SourceParams(path=p) for p in paths), eval=0.1)


def test_the_repository_dvc_yaml_depends_on_every_dataset_file_of_params_yaml():
    check_declared(load_section(DatasetParams, "dataset", ROOT / "params.yaml"), ROOT / "dvc.yaml")


def test_a_dataset_file_missing_from_the_deps_is_a_one_line_error(tmp_path):
    dvc_yaml = tmp_path / "dvc.yaml"
    shutil.copy(ROOT / "dvc.yaml", dvc_yaml)
    with pytest.raises(FusecliError, match=r"'chats/mine.jsonl' is not a dependency of build_dataset.*dataset-deps"):
        check_declared(params("demo", "chats/mine.jsonl"), dvc_yaml)


def test_sync_adds_and_removes_dataset_files_and_keeps_the_rest_of_dvc_yaml(tmp_path):
    dvc_yaml = tmp_path / "dvc.yaml"
    shutil.copy(ROOT / "dvc.yaml", dvc_yaml)
    original = dvc_yaml.read_text()
    both = ["a.jsonl", "my data/b.parquet"]
    assert sync_declared(params("demo", *both), dvc_yaml) == (both, [])
    assert declared_files(dvc_yaml) == ["demo/dialogues.jsonl", "a.jsonl", "my data/b.parquet"]
    check_declared(params("a.jsonl", "my data/b.parquet"), dvc_yaml)
    assert sync_declared(params("demo", "a.jsonl", "my data/b.parquet"), dvc_yaml) == ([], [])  # idempotent
    assert sync_declared(params("demo"), dvc_yaml) == ([], ["a.jsonl", "my data/b.parquet"])
    assert dvc_yaml.read_text() == original  # comments, order and every other stage untouched


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


@pytest.mark.slow
def test_editing_a_dataset_file_makes_build_dataset_stale(tmp_path):
    """The user's own file, in a folder with a space: `dvc status` and `fusecli status` see the edit."""
    ws = tmp_path / "ws"
    for name in ("dvc.yaml", "params.yaml", "models.lock", ".dvc/config", ".dvcignore", "stages", "fusecli"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, ws / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            (ws / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, ws / name)
    data = ws / "my chats" / "mine.jsonl"
    data.parent.mkdir()
    data.write_text("".join(row(i) + "\n" for i in range(20)))
    p = yaml.safe_load((ws / "params.yaml").read_text())
    p["dataset"]["sources"] = [{"path": "my chats/mine.jsonl", "eval": 0.2}]
    (ws / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    _run(["git", "init", "-q"], ws)
    _run(["fusecli", "dataset-deps"], ws)
    _run(["dvc", "repro", "-s", "build_dataset"], ws)
    assert json.loads(_run(["dvc", "status", "--json", "build_dataset"], ws).stdout or "{}") == {}

    with data.open("a") as f:
        f.write(row(20) + "\n")
    assert "build_dataset" in json.loads(_run(["dvc", "status", "--json", "build_dataset"], ws).stdout)
    assert "build_dataset" in _run(["fusecli", "status"], ws).stdout
