"""Shared fixtures: tiny Hugging Face model folders (tests/tiny.py), built once per session (no downloads)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Never reach the hub from tests; set before anything imports huggingface_hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Pristine tiny model folders: `qwen` (Qwen2) and `llama` (Llama). Copy before changing them."""
    from tests.tiny import write_model

    root = tmp_path_factory.mktemp("tiny-models")
    return {"qwen": write_model(root / "qwen", "qwen2", 270), "llama": write_model(root / "llama", "llama", 285)}


@pytest.fixture
def ws(tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh workspace (the cwd) with copies of the tiny models under `local/`."""
    root = tmp_path / "ws"
    for name, folder in tiny_models.items():
        shutil.copytree(folder, root / "local" / name)
    monkeypatch.chdir(root)
    return root
