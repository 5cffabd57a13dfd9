"""A workspace and model folders whose paths hold spaces: every path dvc.yaml interpolates reaches its stage whole."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.tiny import write_dataset, write_model

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def spaced(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("paths") / "my work space"
    for name in ("dvc.yaml", "params.yaml", ".dvc/config", "stages", "fusecli"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, ws / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (ws / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, ws / name)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["merge"].update(method="linear", methods=["linear"])
    params["extract"].update(max_length=64, batch_tokens=512, shard_size=8)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_model(ws / "my models" / "pivot one", "qwen2", 300)
    write_model(ws / "my models" / "source two", "qwen2", 300, seed=1)
    shutil.copytree(ws / "my models" / "source two", ws / "fused" / "two")  # stands in for fuse@two's output
    (ws / "fisher" / "two").mkdir(parents=True)  # and for fisher@two's, which merge@linear does not read
    (ws / "data").mkdir()
    write_dataset(ws / "data" / "train.parquet", 12)
    run(["git", "init", "-q"], ws)
    run(["fusecli", "set-pivot", "my models/pivot one", "--name", "one"], ws)
    run(["fusecli", "add-source", "my models/source two", "--name", "two"], ws)
    return ws


def test_every_interpolated_path_is_one_argument_of_its_command(spaced):
    from dvc.repo import Repo

    paths = {"my models/pivot one", "my models/source two"}
    with Repo(str(spaced)) as repo:
        for stage in repo.index.stages:
            words = shlex.split(stage.cmd)
            for path in paths:
                if any(path.split(" ")[1] in word for word in words):  # "models/pivot": the path is in the command
                    assert path in words, (stage.addressing, stage.cmd)


def test_extract_and_merge_run_on_model_folders_with_spaces(spaced):
    run(["dvc", "repro", "-s", "extract@two", "merge@linear"], spaced)
    assert (spaced / "extract" / "sources" / "two" / "manifest.json").is_file()
    from fusecli.plan import merged_weights

    assert list(merged_weights(spaced / "merged" / "linear", spaced).glob("*.safetensors"))  # one source: fused/two
    umask = os.umask(0)
    os.umask(umask)
    for path in [*(spaced / "merged").rglob("*"), *(spaced / "extract").rglob("*"), spaced / "models.lock"]:
        want = (0o777 if path.is_dir() else 0o666) & ~umask  # index, card, report: not mkstemp's 0600
        assert path.stat().st_mode & 0o777 == want, path
