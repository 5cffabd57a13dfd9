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


def test_saved_weights_in_an_atomic_dir_get_the_usual_mode(tmp_path, umask):
    """safetensors' save_file (under save_pretrained and the Trainer's save_model) writes 0600: the fused,
    fuse_all and sft_baseline weights were unreadable to teammates on a shared disk."""
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "probe.safetensors"))
    assert mode(tmp_path / "probe.safetensors") == 0o600  # the library's own mode, which the fix must override
    with atomic_dir(tmp_path / "model") as d:
        save_file({"w": torch.zeros(2)}, str(d / "model.safetensors"))
        (d / "sub").mkdir(mode=0o700)
        (d / "sub" / "run.sh").write_text("#!/bin/sh\n")
        os.chmod(d / "sub" / "run.sh", 0o700)
    assert mode(tmp_path / "model" / "model.safetensors") == 0o666 & ~umask
    assert mode(tmp_path / "model" / "sub") == 0o777 & ~umask
    assert mode(tmp_path / "model" / "sub" / "run.sh") == 0o766 & ~umask  # its execute bit kept


def test_fused_model_weights_have_the_usual_mode_under_umask_022(tmp_path):
    """save_pretrained (which the Trainer's save_model calls) into atomic_dir, as the fuse stage saves."""
    from tests.tiny import write_model

    old = os.umask(0o022)
    try:
        from transformers import AutoModelForCausalLM

        write_model(tmp_path / "pivot")
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "pivot")
        with atomic_dir(tmp_path / "fused") as d:
            model.save_pretrained(d)
        assert {p.name: mode(p) for p in (tmp_path / "fused").iterdir()} == {
            p.name: 0o644 for p in (tmp_path / "fused").iterdir()}
        assert mode(tmp_path / "fused" / "model.safetensors") == 0o644
    finally:
        os.umask(old)
