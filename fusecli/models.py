"""Load models and tokenizers safely: safetensors only, remote code only when the user allowed it."""

from __future__ import annotations

from pathlib import Path

import torch

from fusecli.dtypes import LOADABLE
from fusecli.errors import FusecliError
from fusecli.tokenizer import load_tokenizer as load_tokenizer  # the stages load both from here

DTYPES = {name: getattr(torch, name) for name in LOADABLE}


def resolve_device(device: str) -> torch.device:
    """`auto` picks cuda when present; an explicit cuda request without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FusecliError(f"device {device!r} requested but no GPU is visible: set device: cpu or auto")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is bf16 on GPU (the release's precision) and fp32 on CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise FusecliError(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def check_model_dir(path: str | Path, allow_pickle: bool = False) -> Path:
    path = Path(path)
    if not (path / "config.json").exists():
        raise FusecliError(f"{path} is not a model folder (no config.json): check the path in models.lock")
    has_st = any(path.glob("*.safetensors"))
    if not has_st and not allow_pickle:
        raise FusecliError(
            f"{path} has no safetensors weights: convert it to safetensors or re-add it with --allow-pickle"
        )
    return path


def load_model(
    path: str | Path,
    device: torch.device,
    dtype: torch.dtype,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
):  # noqa: ANN201
    """A causal LM from a local folder, weights from safetensors only (unless pickle was allowed per model)."""
    from transformers import AutoModelForCausalLM

    check_model_dir(path, allow_pickle)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dtype, use_safetensors=not allow_pickle, trust_remote_code=trust_remote_code
    )
    return model.to(device)


def n_params(model: torch.nn.Module, exclude_embeddings: bool = True) -> int:
    """Parameters that cost FLOPs per token (embedding lookups cost none), for MFU."""
    total = sum(p.numel() for p in model.parameters())
    if exclude_embeddings:
        emb = model.get_input_embeddings()
        if emb is not None:
            total -= emb.weight.numel()
        out = model.get_output_embeddings()
        tied = out is not None and emb is not None and out.weight is emb.weight
        if tied and out is not None:
            total += out.weight.numel()  # the output projection is a real matmul
    return total


def compile_layers(model: torch.nn.Module) -> None:
    """Compile each decoder layer in place (dynamic shapes): one graph serves every layer and fuses the
    norms, rotary embedding and activations (extraction: +9 % tokens/s on the 7B config; compiling the whole
    decoder at once took minutes per new batch shape)."""
    for layer in getattr(getattr(model, model.base_model_prefix), "layers", []):
        if getattr(layer, "_compiled_call_impl", None) is None:
            layer.compile(dynamic=True)
