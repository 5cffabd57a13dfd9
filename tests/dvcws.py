"""A copy of the workspace whose outputs are placeholders recorded in dvc.lock, to ask real `dvc status`
which stages an edit makes stale without running one (seconds, not the pipeline's minutes)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import networkx as nx
import yaml

from fusecli.closure import ROOT

BIN = Path(sys.executable).parent


def dvc(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.run([str(BIN / "dvc"), *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def committed_workspace(tmp_path: Path) -> Path:
    """The repository's tracked files, with placeholder outputs recorded in dvc.lock."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True, text=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, tmp_path / f)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    from dvc.repo import Repo

    with Repo(str(tmp_path)) as repo:
        outs = [Path(out.def_path) for stage in repo.index.stages for out in stage.outs]
    lock = yaml.safe_load((tmp_path / "models.lock").read_text())
    models = [lock["pivot"]["path"], *(s["path"] for s in lock["sources"].values())]
    for out in [*outs, *map(Path, models)]:
        folder = tmp_path / out if not out.suffix else (tmp_path / out).parent
        folder.mkdir(parents=True, exist_ok=True)
        (tmp_path / out if out.suffix else folder / "placeholder").write_text("x")
    dvc(["commit", "--force", "--quiet"], tmp_path)
    assert "up to date" in dvc(["status"], tmp_path)
    return tmp_path


def stale(ws: Path) -> set[str]:
    """Stages DVC would rerun: the stale ones and every stage downstream of them."""
    changed = set(yaml.safe_load(dvc(["status", "--json"], ws)) or {})
    from dvc.repo import Repo

    with Repo(str(ws)) as repo:
        graph = repo.index.graph  # an edge runs from a stage to a stage it depends on
        names = {stage: stage.name for stage in graph}
        downstream = {names[a] for stage in graph if names[stage] in changed for a in nx.ancestors(graph, stage)}
    return changed | downstream


def stale_after(ws: Path, edit: Callable[[dict], None]) -> set[str]:
    """Stages DVC would rerun after `edit(params)`."""
    params = yaml.safe_load((ws / "params.yaml").read_text())
    edit(params)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return stale(ws)
