from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from fusecli import workspace
from fusecli.errors import FusecliError

DVC_LOCK = textwrap.dedent("""\
    schema: '2.0'
    stages:
      extract@a:
        cmd: python stages/extract.py a
        params:
          models.lock:
            sources.a:
              path: local/a
        outs:
        - path: extract/sources/a
          hash: md5
          md5: f4463fce9fb43a29114393ccd514b379.dir
          size: 2
          nfiles: 1
      extract@b:
        cmd: python stages/extract.py b
        outs:
        - path: extract/sources/b
          hash: md5
          md5: 5884cc1414052b38b99c6291a86e3bcb.dir
          size: 2
          nfiles: 1
      fuse@a:
        cmd: python stages/fuse.py a
        outs:
        - path: fused/a
          hash: md5
          md5: f4463fce9fb43a29114393ccd514b379.dir
        - path: reports/a.json
          hash: md5
          md5: 505379e63cb2cd14cdaadfbbb37f6e4c
        - path: ../outside
          hash: md5
          md5: 505379e63cb2cd14cdaadfbbb37f6e4c
      merge:
        cmd: python stages/merge.py
    """)


def _outputs(root: Path, slug: str) -> None:
    for out in workspace.source_outputs(slug):
        (root / out).mkdir(parents=True, exist_ok=True)
        (root / out / "data").write_text(slug)
        with open(root / out / ".." / ".gitignore", "a") as f:
            f.write(f"/{Path(out).name}\n")


def test_clean_source_on_fake_dvc_files(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    _outputs(root, "a")
    _outputs(root, "b")
    (root / "reports").mkdir()
    (root / "reports/a.json").write_text("{}")
    (root / "reports/.gitignore").write_text("/a.json\n")
    (root / "dvc.lock").write_text(DVC_LOCK)
    (tmp_path / "outside").write_text("never touched")

    removed = workspace.clean_source(root, "a")

    assert set(removed) == {"extract/sources/a", "align/a", "fused/a", "logs/fuse/a", "fisher/a",
                            "imf/samples/a.parquet", "reports/a.json", "dvc.lock:extract@a", "dvc.lock:fuse@a"}
    for out, kept in zip(workspace.source_outputs("a"), workspace.source_outputs("b"), strict=True):
        assert not (root / out).exists()
        assert (root / out).parent.joinpath(".gitignore").read_text() == f"/{Path(kept).name}\n"
    for out in workspace.source_outputs("b"):
        assert (root / out / "data").read_text() == "b"
    assert not (root / "reports/.gitignore").exists()  # emptied: deleted, as DVC does
    assert (tmp_path / "outside").read_text() == "never touched"
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert list(lock["stages"]) == ["extract@b", "merge"]
    block = DVC_LOCK[DVC_LOCK.index("  extract@b:"):DVC_LOCK.index("  fuse@a:")]
    assert block in (root / "dvc.lock").read_text()  # DVC's formatting of the rest is kept
    assert workspace.clean_source(root, "a") == []  # idempotent


def _git_dvc_workspace(root: Path) -> None:
    root.mkdir()
    (root / "models.lock").write_text("sources:\n  a: {path: x}\n  b: {path: y}\n")
    (root / "dvc.yaml").write_text(textwrap.dedent("""\
        vars:
          - models.lock
        stages:
          extract:
            foreach: ${sources}
            do:
              cmd: mkdir -p extract/sources/${key} && echo ${item.path} > extract/sources/${key}/f
              params:
                - models.lock:
                    - sources.${key}
              outs:
                - extract/sources/${key}
          fuse:
            foreach: ${sources}
            do:
              cmd: mkdir -p fused/${key} && cp extract/sources/${key}/f fused/${key}/f
              deps:
                - extract/sources/${key}
              outs:
                - fused/${key}
          merge:
            cmd: cat fused/*/f > merged.txt
            deps:
              - fused
            outs:
              - merged.txt
        """))
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                [sys.executable, "-m", "dvc", "repro", "-q"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)


@pytest.mark.slow
def test_stale_stages_and_clean_source_with_real_dvc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "ws"
    _git_dvc_workspace(root)
    assert workspace.stale_stages(root) == {}

    (root / "models.lock").write_text("sources:\n  a: {path: x}\n  b: {path: z}\n")
    stale = workspace.stale_stages(root)
    assert list(stale) == ["extract@b", "fuse@b", "merge"]
    assert "changed deps" in stale["extract@b"] and stale["fuse@b"] == "after extract@b"

    # Remove source a the way remove-source does: clean up, then drop it from models.lock.
    (root / "models.lock").write_text("sources:\n  b: {path: y}\n")
    workspace.clean_source(root, "a")
    assert not (root / "fused/a").exists() and (root / "fused/.gitignore").read_text() == "/b\n"
    assert list(workspace.stale_stages(root)) == ["merge"]

    import dvc.lock
    from dvc.repo import Repo

    monkeypatch.setattr(dvc.lock, "DEFAULT_TIMEOUT", 0.1)  # DVC retries for 3 s before giving up
    with Repo(str(root)).lock, pytest.raises(FusecliError, match="DVC is running"):
        workspace.clean_source(root, "b")
    assert (root / "fused/b").exists()


def test_stale_stages_needs_a_dvc_workspace(tmp_path: Path) -> None:
    with pytest.raises(FusecliError, match="not a DVC workspace: run `git init && dvc init`"):
        workspace.stale_stages(tmp_path)


@pytest.mark.slow
def test_outputs_a_failed_repro_left_unignored_are_found_by_status_and_repaired_by_recover(ws: Path) -> None:
    """DVC takes back the .gitignore lines of a run whose later stage failed; `git add -A` would commit them."""
    from typer.testing import CliRunner

    from fusecli.cli import app

    assert CliRunner().invoke(app, ["set-pivot", "local/qwen"]).exit_code == 0
    (ws / "dvc.yaml").write_text(textwrap.dedent("""\
        stages:
          first:
            cmd: mkdir -p out/a && echo x > out/a/f && echo 1 > m.json
            outs: [out/a]
            metrics:
              - m.json:
                  cache: false
          second:
            cmd: exit 1
            deps: [out/a]
            outs: [out/b]
        """))
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=ws, check=True, capture_output=True)
    failed = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=ws, capture_output=True, text=True)
    assert failed.returncode != 0 and (ws / "out/a/f").is_file()
    assert workspace.unignored_outputs(ws) == ["out/a"]  # m.json is meant for git: not listed

    status = CliRunner().invoke(app, ["status"], env={"COLUMNS": "300"})
    assert "not ignored by git" in status.stdout and "out/a: run `fusecli recover`" in status.stdout, status.stdout
    recovered = CliRunner().invoke(app, ["recover"], env={"COLUMNS": "300"})
    assert recovered.exit_code == 0 and ".gitignore: 1 output(s)" in recovered.stdout, recovered.stdout
    assert workspace.unignored_outputs(ws) == []
    assert (ws / "out/.gitignore").read_text() == "/a\n"
    assert subprocess.run(["git", "check-ignore", "-q", "out/a/f"], cwd=ws).returncode == 0
    assert "not ignored by git" not in CliRunner().invoke(app, ["status"]).stdout


def _git_status(root: Path) -> str:
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=root, check=True,
                          capture_output=True, text=True).stdout


def test_pinned_model_folders_inside_the_workspace_are_git_ignored(ws: Path, tiny_models, tmp_path: Path):
    """`git add -A` in a workspace committed a 1.6 GB model folder: pinning now ignores it as DVC would."""
    import shutil

    from typer.testing import CliRunner

    from fusecli.cli import app

    subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
    assert "local/qwen/config.json" in _git_status(ws)
    result = CliRunner().invoke(app, ["set-pivot", "local/qwen"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "git-ignored local/qwen" in result.output
    assert (ws / "local" / ".gitignore").read_text() == "/qwen\n"
    assert "local/qwen/" not in _git_status(ws) and "local/llama/config.json" in _git_status(ws)

    result = CliRunner().invoke(app, ["add-source", "local/llama"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "git-ignored local/llama" in result.output
    assert (ws / "local" / ".gitignore").read_text() == "/qwen\n/llama\n"
    assert all(line.startswith("?? ") and "local/qwen/" not in line and "local/llama/" not in line
               for line in _git_status(ws).splitlines())
    result = CliRunner().invoke(app, ["add-source", "local/llama", "--name", "again"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "git-ignored" not in result.output  # already ignored: nothing added
    assert (ws / "local" / ".gitignore").read_text() == "/qwen\n/llama\n"

    outside = tmp_path / "elsewhere" / "m"
    shutil.copytree(tiny_models["llama"], outside)
    result = CliRunner().invoke(app, ["add-source", str(outside), "--name", "out"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "git-ignored" not in result.output
    assert not (outside.parent / ".gitignore").exists()


def test_a_model_folder_git_tracks_is_left_tracked(ws: Path):
    subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
    subprocess.run(["git", "add", "local/qwen"], cwd=ws, check=True)
    assert workspace.ignore_model_folder(ws, "local/qwen") is None
    assert not (ws / "local" / ".gitignore").exists()
    assert workspace.ignore_model_folder(ws, "local/llama") == "local/llama"
