"""End to end: real `dvc repro` on a copy of the workspace, and the incremental guarantees.

The copy runs with the demo's settings scaled down (fewer steps, smaller models) so the suite stays
within CI's time; the full-size demo is `make demo`.
"""

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

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

FAST = {
    "demo": {"steps": 60, "verify": False},
    "fuse": {"max_steps": 4, "save_steps": 1000, "logging_steps": 2},
    "evaluate": {"max_new_tokens": 4},
}

pytestmark = pytest.mark.slow


def workspace_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split("\n")
    return [f for f in out if f and (ROOT / f).is_file()]


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
    return proc


def ran_stages(proc: subprocess.CompletedProcess) -> set[str]:
    """The stages DVC reran: executed, or restored from its run cache because they were stale."""
    out = proc.stdout + proc.stderr
    return set(re.findall(r"Running stage '([^']+)'", out)) | set(re.findall(r"Stage '([^']+)' is cached", out))


def deep_update(d: dict, u: dict) -> dict:
    for k, v in u.items():
        d[k] = deep_update(d.get(k, {}), v) if isinstance(v, dict) else v
    return d


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("ws")
    for f in workspace_files():
        (ws / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, ws / f)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    (ws / "params.yaml").write_text(yaml.safe_dump(deep_update(params, FAST), sort_keys=False))
    run(["git", "init", "-q"], ws)
    run(["git", "add", "-A"], ws)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "workspace"], ws)
    proc = run(["dvc", "repro"], ws)
    stages = ran_stages(proc)
    assert {"build_demo", "build_dataset", "extract_pivot", "merge", "evaluate", "sft_baseline"} <= stages
    return ws


def test_full_run_produces_metrics_of_every_model(workspace):
    metrics = json.loads((workspace / "eval" / "metrics.json").read_text())
    lock = yaml.safe_load((workspace / "models.lock").read_text())
    slugs = sorted(lock["sources"])
    expected = {"pivot", "sft_baseline", "merged"} | {f"source:{s}" for s in slugs} | {f"fused:{s}" for s in slugs}
    assert expected <= set(metrics["models"])
    for scores in metrics["models"].values():
        assert scores, "every model has per-domain scores"
        for domain in scores.values():
            assert set(domain) == {"em", "ce"}
            assert domain["ce"] > 0 and 0.0 <= domain["em"] <= 1.0


def test_noop_repro_runs_nothing(workspace):
    assert ran_stages(run(["dvc", "repro"], workspace)) == set()


def test_reordering_sources_runs_nothing(workspace):
    lock_path = workspace / "models.lock"
    original = lock_path.read_text()
    lock = yaml.safe_load(original)
    lock["sources"] = dict(reversed(list(lock["sources"].items())))
    lock_path.write_text(yaml.safe_dump(lock, sort_keys=False))
    try:
        assert ran_stages(run(["dvc", "repro"], workspace)) == set()
    finally:
        lock_path.write_text(original)


def test_add_then_remove_source_reruns_only_its_stages(workspace):
    third = "demo/models/llama-demonym"
    run(["fusecli", "add-source", third, "--name", "demonym"], workspace)
    ran = ran_stages(run(["dvc", "repro"], workspace))
    assert ran == {"extract@demonym", "align@demonym", "fuse@demonym", "merge", "evaluate"}
    metrics = json.loads((workspace / "eval" / "metrics.json").read_text())
    assert {"source:demonym", "fused:demonym"} <= set(metrics["models"])

    run(["fusecli", "remove-source", "demonym"], workspace)
    assert not (workspace / "fused" / "demonym").exists()
    ran = ran_stages(run(["dvc", "repro"], workspace))
    assert ran == {"merge", "evaluate"}
    metrics = json.loads((workspace / "eval" / "metrics.json").read_text())
    assert "fused:demonym" not in metrics["models"]
