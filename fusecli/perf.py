"""Throughput accounting: FLOPs per token and MFU (achieved FLOP/s over the card's dense bf16 peak)."""

from __future__ import annotations

import torch

# Dense bf16 tensor-core peaks (no sparsity), FLOP/s.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def peak_flops(device: torch.device) -> float | None:
    """The card's dense bf16 peak, or None where it is unknown (CPU): MFU is then not reported."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16.items():
        if key in name:
            return peak
    return None


def flops_per_token(n_params: int, n_layers: int, hidden: int, context: int, training: bool) -> float:
    """PaLM appendix B / nanoGPT: 2N per token forward plus attention 2*L*H*T (x3 with backward)."""
    forward = 2 * n_params + 2 * n_layers * hidden * context
    return 3 * forward if training else forward


def model_flops_per_token(model: torch.nn.Module, n_params: int, context: int, training: bool) -> float:
    cfg = model.config
    text = getattr(cfg, "text_config", None) or cfg
    return flops_per_token(n_params, text.num_hidden_layers, text.hidden_size, context, training)


def mfu(tokens_per_s: float, flops_per_tok: float, device: torch.device, n_devices: int = 1) -> float | None:
    peak = peak_flops(device)
    if peak is None:
        return None
    return tokens_per_s * flops_per_tok / (peak * n_devices)


# Qwen2 shapes (the released config.json files) for benchmarks with random weights; "smoke" is a toy
# model with the real vocabulary, to check a benchmark script on a CPU.
QWEN2 = {
    "smoke": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=151_936,
        tie_word_embeddings=True,
    ),
    "0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151_936,
        tie_word_embeddings=True,
    ),
    "1.5b": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151_936,
        tie_word_embeddings=True,
    ),
    "7b": dict(
        hidden_size=3584,
        intermediate_size=18_944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152_064,
        tie_word_embeddings=False,
    ),
}


def random_qwen2(size: str | dict, dtype: torch.dtype, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """A Qwen2 causal LM of a size named in QWEN2 (or given shapes) with random weights, built on `device`."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    shape = QWEN2[size] if isinstance(size, str) else size
    cfg = Qwen2Config(**shape, max_position_embeddings=32_768, rope_theta=1e6)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(cfg, dtype=dtype)
