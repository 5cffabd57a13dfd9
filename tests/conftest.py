"""Shared fixtures: tiny Hugging Face model folders, built once per session (no downloads)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Never reach the hub from tests; set before anything imports huggingface_hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["the capital of france is paris", "the currency of japan is the yen"] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>")
    fast.chat_template = CHATML
    return fast


def _save_model(folder: Path, arch: str, vocab_size: int) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    tok = _tokenizer(vocab_size)
    cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch]
    config = cls(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1, vocab_size=len(tok), max_position_embeddings=64)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Pristine tiny model folders: `qwen` (Qwen2) and `llama` (Llama). Copy before changing them."""
    import torch

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny-models")
    folders = {"qwen": root / "qwen", "llama": root / "llama"}
    _save_model(folders["qwen"], "qwen2", 270)
    _save_model(folders["llama"], "llama", 285)
    return folders


@pytest.fixture
def ws(tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh workspace (the cwd) with copies of the tiny models under `local/`."""
    root = tmp_path / "ws"
    for name, folder in tiny_models.items():
        shutil.copytree(folder, root / "local" / name)
    monkeypatch.chdir(root)
    return root
