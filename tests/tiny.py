"""Tiny chat models and datasets on disk, for fast unit tests of the stages (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import torch

TEXTS = [
    "What is the capital of France?",
    "Paris",
    "What is the currency of Japan?",
    "JPY",
    "Which region is Peru in?",
    "Americas",
    "The capital of Spain is Madrid and its currency is EUR.",
]


def dialogues(n: int = 12) -> list[list[dict[str, str]]]:
    out = []
    for i in range(n):
        q, a = TEXTS[(2 * i) % 6], TEXTS[(2 * i) % 6 + 1]
        out.append([{"role": "user", "content": f"{q} ({i})"}, {"role": "assistant", "content": a}])
    return out


def write_dataset(path: Path, n: int = 12) -> Path:
    rows = dialogues(n)
    pl.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "domain": [["capital", "currency", "region"][i % 3] for i in range(n)],
            "messages": [json.dumps(m) for m in rows],
            "answer": [m[-1]["content"] for m in rows],
        }
    ).write_parquet(path)
    return path


def tiny_config(arch: str, vocab_size: int, **overrides: object):  # noqa: ANN201
    """The config of every tiny test model (the one factory the test suite uses): ~50K parameters."""
    from transformers import AutoConfig

    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
    return AutoConfig.for_model(arch, vocab_size=vocab_size, **{**shape, **overrides})


def write_model(path: Path, arch: str = "qwen2", vocab_size: int = 300, seed: int = 0, **config: object) -> Path:
    """A tiny chat model with its own byte-level BPE tokenizer, saved as safetensors; `config` overrides
    tiny_config's (e.g. max_position_embeddings)."""
    from transformers import AutoModelForCausalLM

    from fusecli.demo.tokenizers import train_tokenizer

    tok = train_tokenizer(TEXTS * 4 + [f"({i})" for i in range(20)], vocab_size)
    cfg = tiny_config(arch, len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **config)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path
