"""`fusecli pull-models` offline: HF_HUB_CACHE points at a prepared snapshot standing in for the hub."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fusecli import hashing, sources
from fusecli.lock import Lock, dump_lock, read_lock
from tests.tiny import write_model

ROOT = Path(__file__).resolve().parents[1]
SHA = "0123456789abcdef0123456789abcdef01234567"
REPO = "tiny-org/tiny-chat"


@pytest.fixture
def fresh_clone(tmp_path: Path) -> tuple[Path, Path]:
    """A workspace whose models.lock pins a hub pivot it does not have, and a hub cache holding that commit."""
    cache = tmp_path / "hub-cache"
    snapshot = cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / SHA
    write_model(snapshot, "qwen2", 300)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(SHA)
    ws = tmp_path / "ws"
    ws.mkdir()
    entry = sources.describe_folder(snapshot, "tiny", ws, origin="hub", repo=REPO, revision=SHA)
    entry = dataclasses.replace(entry, path="models/tiny")
    (ws / "models.lock").write_text(dump_lock(Lock(pivot=entry, sources={})))
    return ws, cache


def pull(ws: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "COLUMNS": "300"}
    return subprocess.run([sys.executable, "-m", "fusecli.cli", "pull-models"], cwd=ws, env=env,
                          capture_output=True, text=True)


def test_pull_fetches_the_pinned_snapshot_then_does_nothing(fresh_clone):
    ws, cache = fresh_clone
    first = pull(ws, cache)
    assert first.returncode == 0, first.stderr
    assert "pivot: fetched, content hash verified" in first.stdout
    folder = ws / "models" / "tiny"
    assert hashing.content_hash(folder) == read_lock(ws / "models.lock").pivot.content_hash
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    second = pull(ws, cache)
    assert second.returncode == 0 and "pivot: up to date" in second.stdout, second.stdout + second.stderr
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps  # idempotent: nothing rewritten


def test_a_damaged_local_copy_is_fetched_again(fresh_clone):
    ws, cache = fresh_clone
    assert pull(ws, cache).returncode == 0
    config = ws / "models" / "tiny" / "config.json"
    config.unlink()  # a cut or edited copy (a hard link: never write through it into the cache)
    config.write_text("{}")
    again = pull(ws, cache)
    assert again.returncode == 0 and "fetched" in again.stdout, again.stderr
    assert config.read_text() != "{}"


def test_a_snapshot_whose_hash_differs_is_refused_in_one_line(fresh_clone):
    ws, cache = fresh_clone
    snapshot = next(cache.glob(f"models--*/snapshots/{SHA}"))
    target = snapshot / "generation_config.json"
    target.write_text(target.read_text().replace("}", ', "temperature": 0.1}', 1))
    result = pull(ws, cache)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 1 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{REPO}@01234567 hashes to sha256:" in errors[0] and "not the pinned" in errors[0]
    assert "re-pin with fusecli set-pivot" in errors[0]
    assert not (ws / "models" / "tiny").exists()  # nothing half-made


def test_a_commit_missing_from_an_offline_cache_is_one_line(fresh_clone):
    ws, cache = fresh_clone
    shutil.rmtree(cache)
    result = pull(ws, cache)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 1 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "HF_HUB_OFFLINE is set" in errors[0] or "hub request" in errors[0]
