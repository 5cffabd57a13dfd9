"""`fusecli add-source` and `remove-source` stay incremental for the implicit path: real `dvc status`.

Every stage's outputs are stand-ins recorded with `dvc commit` (no stage runs: the test is about what DVC
would rerun, and each stage's own work is tested elsewhere), then a source is added or removed and
`workspace.stale_stages` (`dvc status` plus the stages after the changed ones, from `dvc dag`) is compared
with exactly what the pipeline's promise says.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fusecli.closure import ROOT
from fusecli.workspace import stale_stages
from tests.tiny import write_model

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


def stand_in_outputs(ws: Path) -> None:
    """A file or a folder holding one file at every output and dependency path of every stage, where none is
    yet (the locked models' folders lie inside build_demo's output)."""
    from dvc.repo import Repo

    with Repo(str(ws)) as repo:
        stages = list(repo.index.stages)
        paths = [Path(o.fs_path) for stage in stages for o in stage.outs]
        paths += [Path(d.fs_path) for stage in stages for d in stage.deps if hasattr(d, "fs_path")]
    for out in paths:
        if out.exists():
            continue
        if out.suffix:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(f"stand-in {out.name}\n")
        else:
            out.mkdir(parents=True)
            (out / "stand-in.txt").write_text(f"stand-in {out.name}\n")


def commit(ws: Path) -> None:
    stand_in_outputs(ws)
    run([sys.executable, "-m", "dvc", "commit", "-f", "-q"], ws)
    assert stale_stages(ws) == {}


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, tmp_path / f)
    run(["git", "init", "-q"], tmp_path)
    commit(tmp_path)
    return tmp_path


def per_method(ws: Path) -> set[str]:
    return {f"merge@{m}" for m in yaml.safe_load((ws / "params.yaml").read_text())["merge"]["methods"]}


# every source's stages feed them; demo_use reads models.lock (a second; its answer, so build_demo, unchanged)
AFTER_SOURCES = {"demo_use", "score", "imf_sft", "imf_dpo", "fuse_all", "evaluate", "report"}


def test_adding_then_removing_a_source_stales_exactly_its_stages_and_those_after_them(ws: Path) -> None:
    write_model(ws / "models" / "newsrc", "llama", 300, seed=3)
    run(["fusecli", "add-source", "models/newsrc", "--name", "newsrc"], ws)
    own = {"extract@newsrc", "align@newsrc", "fuse@newsrc", "fisher@newsrc", "sample@newsrc"}
    assert set(stale_stages(ws)) == own | AFTER_SOURCES | per_method(ws)

    commit(ws)
    run(["fusecli", "remove-source", "newsrc"], ws)
    assert not (ws / "imf" / "samples" / "newsrc.parquet").exists()
    assert set(stale_stages(ws)) == AFTER_SOURCES | per_method(ws)
