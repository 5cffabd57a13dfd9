"""Loading a tokenizer: one way for every stage and command (no torch, so `fusecli` commands stay fast)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fusecli.errors import FusecliError


def load_tokenizer(path: str | Path, trust_remote_code: bool = False) -> Any:
    """AutoTokenizer from a local folder, with pad = eos when it has no pad token (batched generation
    needs one); every failure becomes a one-line FusecliError."""
    path = Path(path)
    if not path.is_dir():
        raise FusecliError(f"tokenizer folder {path} not found: pass a local model or tokenizer folder")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises many types for a bad folder: each becomes one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FusecliError(
            f"cannot load a tokenizer from {path} ({first}): it needs tokenizer.json or tokenizer_config.json "
            "(allow remote code only for code you trust)"
        ) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok
