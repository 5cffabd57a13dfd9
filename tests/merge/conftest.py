"""Tiny random Qwen2 models on disk, built once per session (hidden 32, 2 layers, vocab 96).

base: the pivot. m1..m3: base + small random task vectors (m1 leaves the norms untouched, so some
task vectors are exactly zero). Variants: m1 sharded, m3 with a grown vocabulary, m2 with tied
embeddings (no lm_head stored), a base with tied embeddings.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from tests.tiny import tiny_config

VOCAB = 96


@dataclass(frozen=True)
class Tiny:
    base: Path
    m1: Path
    m2: Path
    m3: Path
    m1_sharded: Path
    m3_grown: Path
    m2_tied: Path
    base_tied: Path

    @property
    def models(self) -> list[tuple[str, Path]]:
        return [("m1", self.m1), ("m2", self.m2), ("m3", self.m3)]


def load_tensors(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of a model folder, as float32 NumPy arrays (reference side of the tests)."""
    out: dict[str, np.ndarray] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def rewrite(src: Path, dst: Path, *, drop: tuple[str, ...] = (), config: dict | None = None) -> Path:
    """Copy a single-file model folder, dropping tensors and updating config.json."""
    shutil.copytree(src, dst)
    tensors = {k: v for k, v in load_tensors(src).items() if k not in drop}
    (dst / "model.safetensors").unlink()
    save_file({k: torch.from_numpy(v) for k, v in tensors.items()}, dst / "model.safetensors", {"format": "pt"})
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(config or {})
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    config = tiny_config("qwen2", VOCAB, max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
    base = AutoModelForCausalLM.from_config(config).to(torch.float32)
    base.save_pretrained(root / "base")
    (root / "base" / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    (root / "base" / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    (root / "base" / "training_args.bin").write_bytes(b"not copied")
    paths = {}
    for i, name in enumerate(("m1", "m2", "m3"), start=1):
        model = AutoModelForCausalLM.from_config(config).to(torch.float32)
        model.load_state_dict(base.state_dict())
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if i == 1 and "norm" in pname:
                    continue
                p.add_(torch.randn_like(p) * 0.01 * i)
        model.save_pretrained(root / name)
        paths[name] = root / name
        if name == "m1":
            model.save_pretrained(root / "m1_sharded", max_shard_size="20KB")
        if name == "m3":
            model.resize_token_embeddings(VOCAB + 8)
            model.save_pretrained(root / "m3_grown")
    m2_tied = rewrite(paths["m2"], root / "m2_tied", drop=("lm_head.weight",), config={"tie_word_embeddings": True})
    base_tied = rewrite(
        root / "base", root / "base_tied", drop=("lm_head.weight",), config={"tie_word_embeddings": True}
    )
    return Tiny(
        base=root / "base",
        m1=paths["m1"],
        m2=paths["m2"],
        m3=paths["m3"],
        m1_sharded=root / "m1_sharded",
        m3_grown=root / "m3_grown",
        m2_tied=m2_tied,
        base_tied=base_tied,
    )


@dataclass(frozen=True)
class Inputs:
    base: dict[str, np.ndarray]
    models: list[dict[str, np.ndarray]]


@pytest.fixture(scope="session")
def inputs(tiny: Tiny) -> Inputs:
    return Inputs(load_tensors(tiny.base), [load_tensors(path) for _, path in tiny.models])


@pytest.fixture
def run_merge(tiny: Tiny, tmp_path: Path):
    """Merge the three tiny models onto the base with the given MergeParams fields."""
    from fusecli.merge import merge_models, merge_params

    def run(out: str = "merged", **params) -> tuple[dict[str, np.ndarray], dict]:
        result = merge_models(tiny.base, tiny.models, merge_params(**params), tmp_path / out)
        return load_tensors(result.out), result.report

    return run
