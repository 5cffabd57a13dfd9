from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fusecli import hashing
from fusecli.cli import app
from fusecli.lock import read_lock

runner = CliRunner()


def fusecli(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env={"COLUMNS": "200", **(env or {})})


def ok(*args: str) -> str:
    result = fusecli(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


def fails(*args: str, match: str, lock: Path | None = None) -> None:
    """The command fails with one `error: ...` line on stderr, exit 1, and leaves models.lock byte-identical."""
    lock = lock or Path("models.lock")
    before = lock.read_bytes() if lock.exists() else None
    result = fusecli(*args)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert match in result.stderr, result.stderr
    assert (lock.read_bytes() if lock.exists() else None) == before


@pytest.fixture
def pinned(ws: Path) -> Path:
    """A workspace with pivot `qwen` and source `llama` pinned."""
    ok("set-pivot", "local/qwen")
    ok("add-source", "local/llama")
    return ws


def test_set_pivot_add_list_remove(ws: Path) -> None:
    assert "pinned pivot qwen: Qwen2ForCausalLM" in ok("set-pivot", "local/qwen")
    assert "pinned sources.llama: LlamaForCausalLM" in ok("add-source", "local/llama")
    shutil.copytree(ws / "local/llama", ws / "local/llama-two")
    ok("add-source", "local/llama-two", "--name", "second")
    lock = read_lock(ws / "models.lock")
    assert lock.pivot.name == "qwen" and list(lock.sources) == ["llama", "second"]
    assert lock.sources["second"].path == "local/llama-two"

    table = ok("list")
    for text in ("pivot", "qwen", "Qwen2ForCausalLM", "llama", "second", "local",
                 lock.pivot.content_hash[7:15], str(lock.sources["llama"].vocab_size)):
        assert text in table

    (ws / "fused/second").mkdir(parents=True)
    (ws / "fused/.gitignore").write_text("/second\n")
    out = ok("remove-source", "second")
    assert "removed sources.second" in out and "deleted fused/second" in out
    assert not (ws / "fused/second").exists() and list(read_lock(ws / "models.lock").sources) == ["llama"]


def test_set_pivot_replaces_the_pivot_and_keeps_sources(pinned: Path) -> None:
    shutil.copytree(pinned / "local/qwen", pinned / "local/qwen-b")
    ok("set-pivot", "local/qwen-b", "--name", "base")
    lock = read_lock(pinned / "models.lock")
    assert lock.pivot.name == "base" and lock.pivot.path == "local/qwen-b" and list(lock.sources) == ["llama"]


def test_errors_leave_the_lock_untouched(pinned: Path) -> None:
    fails("add-source", "local/llama", match="source 'llama' is already in models.lock: pass --name OTHER")
    fails("add-source", "local/qwen", match="'qwen' is the pivot's name")
    fails("add-source", "no-such-model", match="valid aliases are OpenChat-3.5-7B")
    fails("add-source", "./missing/model", match="model folder ./missing/model does not exist")
    fails("add-source", "local/llama", "--name", "Llama!", match="invalid slug 'Llama!'")
    fails("add-source", "InternLM2-Chat-20B", match="pass --trust-remote-code")
    (pinned / "local/llama/model.safetensors").unlink()
    fails("add-source", "local/llama", "--name", "x", match="has no safetensors weights")
    fails("remove-source", "absent", match="no source 'absent' in models.lock: pinned sources are llama")
    fails("remove-source", "qwen", match="'qwen' is the pivot: set another pivot")
    fails("set-pivot", "local/qwen", "--name", "llama", match="'llama' is already a source")
    fails("add-source", match="Missing argument 'ref'")


def test_add_source_needs_a_pivot_first(ws: Path) -> None:
    fails("add-source", "local/llama", match="models.lock not found")
    assert not (ws / "models.lock").exists()


def test_malformed_lock_is_reported_by_every_command(pinned: Path) -> None:
    lock = pinned / "models.lock"
    data = yaml.safe_load(lock.read_text())
    data["sources"]["llama"]["vocab_size"] = "lots"
    lock.write_text(yaml.safe_dump(data))
    for args in (["list"], ["status"], ["add-source", "local/qwen", "--name", "q2"], ["remove-source", "llama"],
                 ["set-pivot", "local/qwen"]):
        fails(*args, match="models.lock: sources.llama.vocab_size = 'lots' must be of type int")


def test_changed_weights_are_detected_and_replace_repins(pinned: Path) -> None:
    subprocess.run(["git", "init", "-q"], cwd=pinned, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=pinned, check=True)
    (pinned / "dvc.yaml").write_text(textwrap.dedent("""\
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
        """))
    out = ok("status")
    assert "valid (pivot qwen, 1 source(s))" in out and "pinned files: unchanged" in out
    assert "extract@llama" in out

    weights = pinned / "local/llama/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    fails("status", match="sources.llama: weights changed on disk after pinning")
    ok("add-source", "local/llama", "--replace")
    hashing.verify_entry(read_lock(pinned / "models.lock").sources["llama"], pinned)


def test_workspace_and_lock_options(pinned: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert "llama" in ok("--workspace", str(pinned), "list")
    ok("--workspace", str(pinned), "--lock", "other.lock", "set-pivot", str(pinned / "local/qwen"))
    assert list(read_lock(pinned / "other.lock").sources) == []
    fails("--workspace", str(tmp_path / "nope"), "list", match="is not a folder")


@pytest.mark.slow
def test_concurrent_add_source_processes_both_land(pinned: Path) -> None:
    for name in ("one", "two"):
        shutil.copytree(pinned / "local/llama", pinned / "local" / name)
    procs = [subprocess.Popen([sys.executable, "-m", "fusecli.cli", "add-source", f"local/{name}"], cwd=pinned,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name in ("one", "two")]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    assert sorted(read_lock(pinned / "models.lock").sources) == ["llama", "one", "two"]
    assert yaml.safe_load((pinned / "models.lock").read_text())["version"] == 1
