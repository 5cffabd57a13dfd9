"""Atomic writes give their files and folders the mode a plain open() or mkdir() would: the umask's."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fusecli.cli import app
from fusecli.io import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text
from tests.tiny import write_model


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_atomic_files_and_folders_respect_the_umask(tmp_path, umask):
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    atomic_write_text(tmp_path / "b.txt", "x")
    atomic_write_json(tmp_path / "c.json", {})
    atomic_write_bytes(tmp_path / "a.bin", b"y")  # replacing a file too
    with atomic_dir(tmp_path / "d") as d:
        atomic_write_bytes(d / "model.safetensors", b"z")
        (d / "plain.txt").write_text("p")
    for name in ("a.bin", "b.txt", "c.json", "d/model.safetensors", "d/plain.txt"):
        assert mode(tmp_path / name) == 0o666 & ~umask, name
    assert mode(tmp_path / "d") == 0o777 & ~umask


def test_models_lock_written_by_the_cli_has_the_usual_mode(tmp_path, monkeypatch):
    old = os.umask(0o022)
    try:
        monkeypatch.chdir(tmp_path)
        write_model(tmp_path / "pivot")
        assert CliRunner().invoke(app, ["set-pivot", "pivot"]).exit_code == 0
        assert mode(tmp_path / "models.lock") == 0o644
    finally:
        os.umask(old)
