"""The stage table (fusecli/pipeline.py) writes dvc.yaml's stages, and each stage reruns exactly when
something that can change its result changes: real `dvc status` on placeholder outputs (tests/dvcws.py)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fusecli.cli import app
from fusecli.closure import ROOT, closure
from fusecli.config import load_section
from fusecli.data.build import DatasetParams
from fusecli.data.deps import sync_declared
from fusecli.dvc_yaml import code_deps, sync
from fusecli.fuse.train import FuseParams, sft_only
from fusecli.pipeline import FUSE_SPEED_ONLY, STAGES, stage
from tests.dvcws import committed_workspace, stale, stale_after
from tests.params import section


def covered(path: Path, deps: list[str]) -> bool:
    return any(path == Path(d) or Path(d) in path.parents for d in deps)


def test_the_repository_dvc_yaml_is_the_one_the_table_writes():
    assert sync(ROOT / "dvc.yaml", ROOT / "params.yaml", check=True) is None


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    for name in ("dvc.yaml", "params.yaml", "models.lock"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def drop_after(text: str, anchor: str, line: str) -> str:
    """`text` without the first `line` after `anchor` (one stage's entry)."""
    head, tail = text.split(anchor, 1)
    return head + anchor + tail.replace(line, "", 1)


@pytest.mark.parametrize(("edit", "names"), [
    (lambda t: drop_after(t, "  extract_pivot:", "      - fusecli/lock.py\n"), "extract_pivot"),  # a code dep
    (lambda t: t.replace("      - fuse.learning_rate\n", "", 1), "fuse"),  # a hashed key dropped
    (lambda t: t.replace("      - ${evaluate.judge.questions}\n", "", 1), "evaluate"),  # a data dep dropped
])
def test_check_fails_on_a_hand_edit_and_sync_writes_it_back(workspace, edit, names):
    dvc_yaml = workspace / "dvc.yaml"
    original = dvc_yaml.read_text()
    dvc_yaml.write_text(edit(original))
    assert dvc_yaml.read_text() != original
    code, out = run("--workspace", str(workspace), "sync-dvc", "--check")
    assert code == 1 and "stage table" in out and names in out
    assert dvc_yaml.read_text() == edit(original)  # --check changes nothing
    code, out = run("--workspace", str(workspace), "sync-dvc")
    assert code == 0 and f"rewrote {names}" in out
    assert dvc_yaml.read_text() == original  # the header, vars and plots kept as written
    assert run("--workspace", str(workspace), "sync-dvc", "--check")[0] == 0


def test_dataset_deps_and_sync_write_the_same_build_dataset(workspace):
    """Either command puts the dataset files params.yaml names into build_dataset's deps; the check
    compares stages, not layout (`dataset-deps` writes its paths as JSON strings)."""
    params = workspace / "params.yaml"
    params.write_text(params.read_text().replace("path: demo", "path: my data/chats.jsonl", 1))
    sync_declared(load_section(DatasetParams, "dataset", params), workspace / "dvc.yaml")
    assert sync(workspace / "dvc.yaml", params, check=True) == []
    assert sync(workspace / "dvc.yaml", params, check=False) == []  # the layout only
    deps = yaml.safe_load((workspace / "dvc.yaml").read_text())["stages"]["build_dataset"]["deps"]
    assert "my data/chats.jsonl" in deps and "demo/dialogues.jsonl" not in deps


def test_code_deps_cover_the_closure_and_name_a_folder_only_when_the_stage_runs_all_of_it():
    for s in STAGES:
        deps = code_deps(s.entry)
        assert all(covered(p, deps) for p in closure(s.entry) if str(p) != s.entry), s.name
    assert "fusecli/extract" in code_deps("stages/build_demo.py")
    align = code_deps("stages/align.py")
    assert "fusecli/align/stage.py" in align and "fusecli/align" not in align  # inspect.py is the CLI's only


def test_only_the_merge_records_the_version():
    for s in STAGES:
        assert covered(Path("fusecli/version.py"), code_deps(s.entry)) == (s.name == "merge"), s.name


def test_sft_only_fixes_every_key_the_sft_baseline_does_not_hash():
    base = section(FuseParams, "fuse")
    other = {"lam": 0.3, "temperature": 2.0, "fusion_fn": "avgce", "teacher": "reference", "gate": 1.5}
    assert set(other) == set(stage("sft_baseline").unhashed) - set(FUSE_SPEED_ONLY)
    for key, value in other.items():
        assert sft_only(dataclasses.replace(base, **{key: value})) == sft_only(base), key
    assert sft_only(dataclasses.replace(base, learning_rate=0.1)) != sft_only(base)


@pytest.fixture
def committed(tmp_path: Path) -> Path:
    return committed_workspace(tmp_path)


@pytest.mark.slow
def test_fusion_only_and_speed_only_keys_rerun_nothing_they_cannot_change(committed):
    after_temperature = stale_after(committed, lambda p: p["fuse"].update(temperature=2.0))
    assert "sft_baseline" not in after_temperature and {"fuse_all", "evaluate", "report"} <= after_temperature
    assert any(s.startswith("fuse@") for s in after_temperature)
    assert stale_after(committed, lambda p: p["fuse"].update(temperature=1.0)) == set()  # back as committed
    assert stale_after(committed, lambda p: (p["align"].update(workers=3), p["fuse"].update(save_steps=400))) == set()
    after_rate = stale_after(committed, lambda p: p["fuse"].update(learning_rate=0.1))
    assert "sft_baseline" in after_rate and not any(s.startswith(("align@", "extract")) for s in after_rate)


@pytest.mark.slow
def test_a_version_bump_reruns_only_the_merges_that_record_it(committed):
    version = committed / "fusecli/version.py"
    version.write_text(version.read_text().replace('"0.1.0"', '"0.1.1"'))
    rerun = stale(committed)
    assert rerun and {s for s in rerun if not s.startswith("merge@")} == {"evaluate", "report"}
