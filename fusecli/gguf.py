"""GGUF file -> safetensors model folder: how a llama.cpp-style model becomes a pinnable source or pivot.

The stages read Hugging Face folders, so `add-source model.gguf` converts once, into the workspace
(models/<slug>), and pins the GGUF's sha256 beside the folder's content hash. transformers reads the
GGUF (config, tokenizer with its chat template, de-quantized weights) but refuses to `save_pretrained` a
model loaded that way ("quantized with gguf"), so the weights are moved into a plain model built from
the same config and saved from there. The same GGUF, dtype, template and library versions give the same
bytes, so re-converting reproduces the pinned folder hash.
"""

from __future__ import annotations

from pathlib import Path

from fusecli.dtypes import LOADABLE
from fusecli.errors import FusecliError

MAGIC = b"GGUF"
# float32 computes exactly what the GGUF computes (tested: equal logits); bfloat16 halves the disk and rounds
# the de-quantized weights (logits move by ~1%): the user picks it with --dtype.
DEFAULT_DTYPE = "float32"
TEMPLATE_KEY = "tokenizer.chat_template"


def is_gguf(path: Path) -> bool:
    """A file that starts with the GGUF magic (the suffix alone says nothing about a renamed file)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


def chat_template(path: Path) -> str | None:
    """The chat template in the GGUF's metadata, None if it has none (base models usually do not)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise FusecliError("reading GGUF files needs the gguf package: pip install gguf") from None
    try:
        field = GGUFReader(path).fields.get(TEMPLATE_KEY)
    except Exception as exc:  # a cut or corrupt file fails in numpy's memmap or the header parser
        raise FusecliError(f"{path} is not a readable GGUF file ({exc}): download or copy it again") from None
    return None if field is None else str(field.contents())


def check_dtype(dtype: str) -> str:
    if dtype not in LOADABLE:
        raise FusecliError(f"--dtype {dtype!r} is not one of {', '.join(LOADABLE)}: pick one")
    return dtype


def convert(path: Path, out: Path, dtype: str, template: str | None) -> None:
    """Write the de-quantized model, its config and its tokenizer (with `template` if given) into `out`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    torch_dtype = getattr(torch, check_dtype(dtype))
    try:
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        # float32 is transformers' exact de-quantization; the cast to `dtype` is then the one rounding
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, config=config, dtype=torch.float32)
    except Exception as exc:  # unsupported architecture or quantization type, corrupt tensors
        text = " ".join(str(exc).split())[:300]
        raise FusecliError(f"transformers cannot load {path}: {text}: pass the same model as a Hugging Face "
                           "folder or hub repo instead (transformers reads only some GGUF architectures)") from None
    with torch.device("meta"):  # no second copy of the weights: the loaded tensors are moved in
        plain = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    plain.load_state_dict({k: v.to(torch_dtype) for k, v in loaded.state_dict().items()}, assign=True)
    plain.tie_weights()  # tied embeddings were cast one key at a time: share one tensor again
    plain.generation_config = loaded.generation_config
    if template is not None:
        tokenizer.chat_template = template
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
