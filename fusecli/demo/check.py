"""Batched greedy exact match, the demo world's own check that each model knows its relation.

The evaluate stage has its own scorer; this one only verifies the demo models as they are built.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch

from fusecli.data.render import prompt_text


@torch.inference_mode()
def greedy_answers(
    model: torch.nn.Module,
    tokenizer: object,
    dialogues: Sequence[Sequence[dict[str, str]]],
    max_new_tokens: int = 32,
    batch_size: int = 64,
) -> list[str]:
    """The model's greedy reply to each dialogue's prompt (everything before its last assistant turn)."""
    model.eval()
    side = tokenizer.padding_side  # type: ignore[attr-defined]
    tokenizer.padding_side = "left"  # type: ignore[attr-defined]  # new tokens must follow every prompt
    prompts = [prompt_text(tokenizer, d) for d in dialogues]
    # Longest first: similar lengths share a batch, so less padding is computed.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    replies: list[str] = [""] * len(prompts)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer(  # type: ignore[operator]
                [prompts[i] for i in idx], add_special_tokens=False, padding=True, return_tensors="pt"
            )
            out = model.generate(  # type: ignore[attr-defined]
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,  # type: ignore[attr-defined]
                pad_token_id=tokenizer.pad_token_id,  # type: ignore[attr-defined]
            )
            new = out[:, enc["input_ids"].shape[1] :]
            for i, ids in zip(idx, new, strict=True):
                replies[i] = tokenizer.decode(ids, skip_special_tokens=True).strip()  # type: ignore[attr-defined]
    finally:
        tokenizer.padding_side = side  # type: ignore[attr-defined]
    return replies


def exact_match(
    model: torch.nn.Module, tokenizer: object, rows: Sequence[dict], batch_size: int = 64
) -> dict[str, float]:
    """Fraction of rows per domain whose greedy reply equals `answer` exactly (after stripping)."""
    replies = greedy_answers(model, tokenizer, [r["messages"] for r in rows], batch_size=batch_size)
    hits: dict[str, list[bool]] = defaultdict(list)
    for row, reply in zip(rows, replies, strict=True):
        hits[row["domain"]].append(reply == row["answer"].strip())
    return {d: sum(h) / len(h) for d, h in sorted(hits.items())}
