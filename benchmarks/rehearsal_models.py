"""Write the dress rehearsal's models (issue 9): real architectures at real sizes, random weights, bf16
safetensors, each with a real tokenizer (benchmarks/rehearsal_tokenizers.py), as local model folders.

    python -m benchmarks.rehearsal_models --tokenizers .rehearsal/tokenizers --out models

Vocabularies are padded to a multiple of 128 rows, as real checkpoints pad them (Qwen2's 151,936
embedding rows for 151,646 tokens), so the pipeline meets embedding matrices larger than the tokenizer.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, MistralConfig, Qwen2Config

from fusecli.perf import QWEN2

CONFIGS = {"qwen2": Qwen2Config, "llama": LlamaConfig, "mistral": MistralConfig}


def shapes(size: str) -> dict:
    """fusecli.perf.QWEN2's shapes of `size`; the vocabulary comes from each model's own tokenizer."""
    return {k: v for k, v in QWEN2[size].items() if k != "vocab_size"}


# Config shapes by name (vocabulary sizes come from the tokenizers)
SIZES: dict[str, dict] = {
    "qwen2-0.5b": {**shapes("0.5b"), "rope_theta": 1e6},
    # Llama-3.2-1B
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, tie_word_embeddings=True, rope_theta=5e5),
    # Mistral's architecture (sliding window) at 1.2B: Mistral ships nothing smaller than 7B
    "mistral-1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=18, num_attention_heads=16,
                       num_key_value_heads=8, sliding_window=4096, tie_word_embeddings=False),
    # TinyLlama-1.1B's shape, for the source added last
    "llama-1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                       num_key_value_heads=4, tie_word_embeddings=False),
}  # fmt: skip


@dataclass(frozen=True)
class Spec:
    name: str
    arch: str
    tokenizer: str
    size: str


MODELS = (
    Spec("qwen2-tekken", "qwen2", "tekken", "qwen2-0.5b"),  # the pivot
    Spec("llama-spm", "llama", "mistral", "llama-1b"),
    Spec("mistral-gpt2", "mistral", "gpt2", "mistral-1b"),
    Spec("llama-tekken", "llama", "tekken", "llama-1.1b"),  # added after the first full run
)


TINY = {k: v for k, v in shapes("smoke").items() if k != "tie_word_embeddings"}


def write_model(spec: Spec, tokenizers: Path, out: Path, seed: int, tiny: bool = False) -> None:
    tok = AutoTokenizer.from_pretrained(str(tokenizers / spec.tokenizer))
    config = CONFIGS[spec.arch](
        vocab_size=-(-len(tok) // 128) * 128,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **{**SIZES[spec.size], **(TINY if tiny else {})},
    )
    config.dtype = "bfloat16"
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config.pad_token_id = tok.pad_token_id
    folder = out / spec.name
    model.save_pretrained(str(folder))  # safetensors
    tok.save_pretrained(str(folder))
    n = sum(p.numel() for p in model.parameters())
    print(f"{spec.name}: {spec.arch}, {n / 1e9:.2f}B parameters, vocabulary {len(tok):,} ({config.vocab_size:,} rows)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizers", type=Path, default=Path(".rehearsal/tokenizers"))
    ap.add_argument("--out", type=Path, default=Path("models"))
    ap.add_argument("--only", nargs="*", help="model names (default: all)")
    ap.add_argument("--tiny", action="store_true", help="the same models at toy size, for a CPU smoke run")
    args = ap.parse_args()
    t0 = time.perf_counter()
    for i, spec in enumerate(MODELS):
        if not args.only or spec.name in args.only:
            write_model(spec, args.tokenizers, args.out, seed=i, tiny=args.tiny)
    print(f"models written in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
