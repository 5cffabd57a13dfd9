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
from huggingface_hub import ModelCard
from PIL import Image

from fusecli.evaluate.summary import terminal_summary

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

FAST = {
    "demo": {"steps": 60, "verify": False},
    "dataset": {"sources": [{"path": "demo", "eval_count": 200}]},  # evaluate scores ~16 models per run
    "fuse": {"max_steps": 4, "save_steps": 1000, "logging_steps": 2},
    "evaluate": {"max_new_tokens": 4},
    "imf": {"sample": {"n": 2, "max_new_tokens": 4}, "train": {"max_steps": 2}},
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


def merge_stages(ws: Path) -> set[str]:
    """`merge@<method>` for every method in params.yaml's merge.methods."""
    return {f"merge@{m}" for m in yaml.safe_load((ws / "params.yaml").read_text())["merge"]["methods"]}


def deep_update(d: dict, u: dict) -> dict:
    for k, v in u.items():
        d[k] = deep_update(d.get(k, {}), v) if isinstance(v, dict) else v
    return d


def git_commit(repo: Path, message: str) -> None:
    """Commit everything git does not ignore (DVC's .gitignore lines keep cached outputs out)."""
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message], repo)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("ws")
    for f in workspace_files():
        (ws / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, ws / f)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    (ws / "params.yaml").write_text(yaml.safe_dump(deep_update(params, FAST), sort_keys=False))
    run(["git", "init", "-q"], ws)
    git_commit(ws, "workspace")
    proc = run(["dvc", "repro"], ws)
    stages = ran_stages(proc)
    assert {"demo_use", "build_demo", "build_dataset", "extract_pivot", "evaluate", "report", "sft_baseline",
            "fuse_all", "score", "imf_sft", "imf_dpo"} <= stages
    assert merge_stages(ws) <= stages
    return ws


def test_full_run_produces_metrics_of_every_model_and_method(workspace):
    metrics = json.loads((workspace / "eval" / "metrics.json").read_text())
    lock = yaml.safe_load((workspace / "models.lock").read_text())
    merge = yaml.safe_load((workspace / "params.yaml").read_text())["merge"]
    slugs = sorted(lock["sources"])
    expected = {"pivot", "sft_baseline", "merged", "fuselm", "imf_sft", "imf"} | {f"source:{s}" for s in slugs}
    expected |= {f"fused:{s}" for s in slugs}
    expected |= {f"merged:{m}" for m in merge["methods"]}
    assert set(metrics["models"]) == expected
    assert metrics["models"]["merged"] == metrics["models"][f"merged:{merge['method']}"]
    for scores in metrics["models"].values():
        assert scores, "every model has per-domain scores"
        for domain in scores.values():
            assert set(domain) == {"em", "ce", "ppl", "rows", "em_rows", "em_reply", "em_too_long", "em_answer_cut",
                                   "ce_rows"}
            assert domain["ce"] > 0 and 0.0 <= domain["em"] <= 1.0
            assert domain["rows"] == domain["em_rows"] == domain["ce_rows"] > 0  # every demo row has an `answer`


def test_report_with_valid_pngs(workspace):
    index = (workspace / "reports" / "index.md").read_text()
    pngs = sorted((workspace / "reports" / "plots").glob("*.png"))
    assert {"scores_em", "scores_ce", "curves", "coefficients_sce", "coefficients_varm"} <= {p.stem for p in pngs}
    for png in pngs:
        assert f"(plots/{png.name})" in index
        assert png.stat().st_size > 5_000, f"{png.name} is trivially small"
        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            assert im.format == "PNG" and im.width > 200 and im.height > 150
    assert "Incomplete inputs" not in index
    teachers = json.loads((workspace / "reports" / "teachers.json").read_text())
    assert set(teachers) == set(yaml.safe_load((workspace / "models.lock").read_text())["sources"]) | {"fuselm"}
    assert set(teachers["fuselm"]["share"]) == set(teachers) - {"fuselm"}  # fuse_all chose among every source
    assert "| fuselm |" in index and "| fuse_all |" in index
    for method in yaml.safe_load((workspace / "params.yaml").read_text())["merge"]["methods"]:
        card = ModelCard.load(workspace / "reports" / "cards" / method / "README.md")
        assert card.data.to_dict() == ModelCard.load(workspace / "merged" / method / "README.md").data.to_dict()
        assert card.data.fusecli["merge"]["method"] == method and "## Evaluation" in card.text
        assert f"(cards/{method}/README.md)" in index


def test_metrics_and_plots_are_registered_with_dvc(workspace):
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], workspace).stdout)
    files = next(iter(shown.values()))["data"]
    assert {"eval/metrics.json", "eval/summary.json", "reports/teachers.json"} <= set(files)
    summary = files["eval/metrics.json"]["data"]["summary"]
    assert files["eval/summary.json"]["data"] == terminal_summary(summary)
    plots = json.loads(run(["dvc", "plots", "show", "--json"], workspace).stdout)
    assert not plots.get("errors"), plots.get("errors")
    assert "reports/plots/scores_em.png" in plots["data"] and "reports/curves/sft_baseline/loss.tsv" in plots["data"]


def test_lm_eval_backend_on_the_demo_model(workspace, tmp_path):
    pytest.importorskip("lm_eval")
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["evaluate"]["backend"] = "lm_eval"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run([sys.executable, "stages/evaluate.py", "--params", str(tmp_path / "params.yaml"), "--lock", "models.lock",
         "--data", "data/eval.parquet", "--out", str(tmp_path / "eval")], workspace)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    domains = set(metrics["models"]["merged"])
    assert set(metrics["lm_eval"]["merged"]) == {f"fusecli_heldout_{d}" for d in domains}
    for scores in metrics["lm_eval"]["merged"].values():
        assert 0.0 <= scores["exact_match"] <= 1.0


def test_changing_the_default_merge_method_reruns_only_evaluate_and_report(workspace):
    params_path = workspace / "params.yaml"
    original = params_path.read_text()
    params = yaml.safe_load(original)
    params["merge"]["method"] = "ties"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        assert ran_stages(run(["dvc", "repro"], workspace)) == {"evaluate", "report"}
        metrics = json.loads((workspace / "eval" / "metrics.json").read_text())
        assert metrics["models"]["merged"] == metrics["models"]["merged:ties"]
    finally:
        params_path.write_text(original)
    assert ran_stages(run(["dvc", "repro"], workspace)) == {"evaluate", "report"}


def test_noop_repro_runs_nothing(workspace):
    assert ran_stages(run(["dvc", "repro"], workspace)) == set()


def test_speed_only_keys_and_lambda_leave_what_they_cannot_change_up_to_date(workspace):
    """align.workers and fuse.save_steps change no output; fuse.lam changes fuse@ but not sft_baseline."""
    path = workspace / "params.yaml"
    original = path.read_text()
    params = yaml.safe_load(original)
    try:
        edited = deep_update(yaml.safe_load(original), {"align": {"workers": 2}, "fuse": {"save_steps": 2000}})
        path.write_text(yaml.safe_dump(edited, sort_keys=False))
        assert json.loads(run(["dvc", "status", "--json"], workspace).stdout or "{}") == {}
        path.write_text(yaml.safe_dump(deep_update(params, {"fuse": {"lam": 0.5}}), sort_keys=False))
        stale = set(json.loads(run(["dvc", "status", "--json"], workspace).stdout))
        assert {s for s in stale if s.startswith("fuse@")} and "sft_baseline" not in stale
    finally:
        path.write_text(original)


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
    third = "demo/models/llama-instruments"
    run(["fusecli", "add-source", third, "--name", "instruments"], workspace)
    ran = ran_stages(run(["dvc", "repro"], workspace))
    # demo_use reruns on every pin (a second); its answer is unchanged, so build_demo does not
    added = {"demo_use", "extract@instruments", "align@instruments", "fuse@instruments", "fisher@instruments",
             "fuse_all", "evaluate", "report", "sample@instruments", "score", "imf_sft", "imf_dpo"}
    assert ran == added | merge_stages(workspace)
    metrics = json.loads((workspace / "eval" / "metrics.json").read_text())
    assert {"source:instruments", "fused:instruments"} <= set(metrics["models"])
    teachers = json.loads((workspace / "reports" / "teachers.json").read_text())
    assert "instruments" in teachers and "instruments" in teachers["fuselm"]["share"]

    run(["fusecli", "remove-source", "instruments"], workspace)
    assert not (workspace / "fused" / "instruments").exists()
    ran = ran_stages(run(["dvc", "repro"], workspace))
    after = {"demo_use", "fuse_all", "evaluate", "report", "score", "imf_sft", "imf_dpo"}
    assert ran == after | merge_stages(workspace)
    metrics = json.loads((workspace / "eval" / "metrics.json").read_text())
    assert "fused:instruments" not in metrics["models"]
    assert "instruments" not in json.loads((workspace / "reports" / "teachers.json").read_text())["fuselm"]["share"]
    assert "fused:instruments" not in (workspace / "reports" / "index.md").read_text()


def test_clone_pulled_from_a_remote_reproduces_nothing(workspace, tmp_path):
    """What a teammate or CI gets: git clone + `dvc pull` is a complete, up-to-date workspace.

    Works on a copy, so the shared workspace keeps its config and git history whatever the test order.
    """
    origin, remote, clone = tmp_path / "origin", tmp_path / "remote", tmp_path / "clone"
    shutil.copytree(workspace, origin, symlinks=True)
    run(["dvc", "remote", "add", "-d", "storage", str(remote)], origin)
    git_commit(origin, "pipeline results")  # dvc.lock, the uncached metrics and report, the remote in .dvc/config
    run(["dvc", "push"], origin)
    assert any(remote.rglob("*")), "dvc push wrote nothing to the remote"

    run(["git", "clone", "-q", str(origin), str(clone)], tmp_path)
    assert "storage" in run(["dvc", "remote", "list"], clone).stdout  # the remote travels with git
    assert not (clone / "demo" / "models").exists(), "cached outputs must come from the remote, not from git"
    run(["dvc", "pull"], clone)
    assert ran_stages(run(["dvc", "repro"], clone)) == set()
    assert json.loads(run(["dvc", "status", "--json"], clone).stdout or "{}") == {}
    assert (clone / "eval" / "metrics.json").read_bytes() == (origin / "eval" / "metrics.json").read_bytes()
