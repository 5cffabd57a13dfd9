"""fusecli refuses to change a workspace while a `dvc repro` stage runs in it (a real, concurrent repro)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fusecli.busy import dvc_running_commands
from fusecli.cli import app

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAGE = """\
import time
from pathlib import Path
from fusecli.runtime import start_stage
start_stage("params.yaml", "models.lock")
Path("started").touch()
while not Path("go").exists():
    time.sleep(0.05)
Path("out.txt").write_text("done")
"""


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.stdout + result.stderr


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.1)


@pytest.mark.slow
def test_workspace_changes_wait_for_a_running_dvc_repro(ws: Path) -> None:
    assert cli("set-pivot", "local/qwen")[0] == 0
    assert cli("add-source", "local/llama")[0] == 0
    (ws / "stage.py").write_text(STAGE)
    params = (ROOT / "params.yaml").read_text().replace("max_length: 256", "max_length: 64")  # tiny models' context
    (ws / "params.yaml").write_text(params)
    (ws / "dvc.yaml").write_text(textwrap.dedent("""\
        stages:
          slow:
            cmd: python stage.py
            deps: [stage.py]
            outs: [out.txt]
        """))
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=ws, check=True, capture_output=True)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    repro = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=ws, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(ws / "started", repro)
        lock_before = (ws / "models.lock").read_bytes()
        (ws / "gpu.yaml").write_text("fuse:\n  lam: 0.9\n")
        for args in (["remove-source", "llama"], ["add-source", "local/llama", "--name", "again"],
                     ["set-pivot", "local/llama", "--name", "piv"], ["profile", "gpu.yaml"], ["recover"],
                     ["dataset-deps"]):
            code, out = cli(*args)
            lines = [line for line in out.splitlines() if line.startswith("error: ")]
            assert code == 1 and len(lines) == 1, (args, out)
            assert "a `dvc repro` stage is running in" in lines[0] and "wait for it to finish" in lines[0], out
        assert (ws / "models.lock").read_bytes() == lock_before
        assert (ws / "params.yaml").read_text() == params  # the profile (lam: 0.9) was not applied
        assert cli("list")[0] == 0  # reading is fine
    finally:
        (ws / "go").touch()
        out, _ = repro.communicate(timeout=300)
    assert repro.returncode == 0, out
    assert (ws / "out.txt").read_text() == "done"
    code, out = cli("remove-source", "llama")
    assert code == 0, out


SLOW_START = """\
import time
from pathlib import Path
Path("started").touch()  # a stage still importing torch: it holds no workspace lock yet
while not Path("go").exists():
    time.sleep(0.05)
Path("out.txt").write_text("done")
"""


def test_changes_refused_while_dvc_runs_a_stage_that_has_not_taken_the_workspace_lock(ws: Path) -> None:
    """The window of `remove-source` 8 s into `dvc repro -f -s fuse@<slug>`: DVC has released its repo lock and
    the stage has not reached its first line; DVC's rwlock already names it."""
    assert cli("set-pivot", "local/qwen")[0] == 0
    assert cli("add-source", "local/llama")[0] == 0
    (ws / "stage.py").write_text(SLOW_START)
    (ws / "dvc.yaml").write_text("stages:\n  slow:\n    cmd: python stage.py\n    outs: [out.txt]\n")
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=ws, check=True, capture_output=True)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    repro = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "-f", "-s", "slow"], cwd=ws, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(ws / "started", repro)
        assert any("dvc" in cmd for cmd in dvc_running_commands(ws))
        lock_before = (ws / "models.lock").read_bytes()
        for args in (["remove-source", "llama"], ["add-source", "local/llama", "--name", "again"]):
            code, out = cli(*args)
            lines = [line for line in out.splitlines() if line.startswith("error: ")]
            assert code == 1 and len(lines) == 1, (args, out)
            assert "DVC's .dvc/tmp/rwlock lists" in lines[0] and "wait for it to finish" in lines[0], out
        assert (ws / "models.lock").read_bytes() == lock_before
        assert (ws / "local" / "llama").is_dir()
    finally:
        (ws / "go").touch()
        out, _ = repro.communicate(timeout=300)
    assert repro.returncode == 0, out
    assert dvc_running_commands(ws) == []
    code, out = cli("remove-source", "llama")
    assert code == 0, out


def test_rwlock_entries_of_dead_processes_and_torn_rwlocks_block_nothing(ws: Path) -> None:
    """A SIGKILLed DVC leaves its entries behind; DVC itself skips dead pids, and so does fusecli."""
    assert cli("set-pivot", "local/qwen")[0] == 0
    assert cli("add-source", "local/llama")[0] == 0
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=ws, check=True, capture_output=True)
    rwlock = ws / ".dvc" / "tmp" / "rwlock"
    rwlock.parent.mkdir(parents=True, exist_ok=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        live = {"pid": sleeper.pid, "cmd": "dvc repro -f -s fuse@llama"}
        rwlock.write_text(json.dumps({"read": {str(ws / "align" / "llama"): [live]}}))
        code, out = cli("remove-source", "llama")
        assert code == 1 and f"lists dvc repro -f -s fuse@llama (pid {sleeper.pid})" in out, out
        assert "llama" in (ws / "models.lock").read_text()
    finally:
        sleeper.kill()
        sleeper.wait()
    rwlock.write_text(json.dumps({"write": {str(ws / "fused" / "llama"): {"pid": dead.pid, "cmd": "dvc repro"}}}))
    assert dvc_running_commands(ws) == []
    rwlock.write_text('{"read": {"x": [{"pid"')  # torn by a kill: `fusecli recover` repairs it
    assert dvc_running_commands(ws) == []
    code, out = cli("remove-source", "llama")
    assert code == 0, out
