"""A rehearsal dataset of long dialogues (issue 15): 512-2,048 tokens each, written offline as JSONL.

The dress rehearsal ran on the demo's 22-token dialogues, so its fusion stage measured DeepSpeed's
per-step cost (0.13 % MFU), not throughput. These dialogues have the lengths of real chat data: a user
turn quoting one paragraph of English, an assistant turn of further paragraphs, grown until the whole
dialogue, rendered with ChatML and tokenized with the pivot's tekken vocabulary, reaches a length drawn
uniformly from [--min-tokens, --max-tokens]. Two domains (`prose`, `reference`) by the paragraphs'
origin, no reference answers (evaluate then reports CE only). Needs the realvocab extra; the GPU
machine gets the file carried.

    .venv/bin/python -m benchmarks.rehearsal_data --out .rehearsal/long.jsonl --rows 2200
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks._common import english_paragraphs, load_tokenizer

CHATML = "<|im_start|>{role}\n{content}<|im_end|>\n"


def n_tokens(tok: object, messages: list[dict[str, str]]) -> int:
    text = "".join(CHATML.format(**m) for m in messages)
    return len(tok(text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]


def dialogues(paragraphs: list[str], tok: object, rows: int, lo: int, hi: int, seed: int) -> list[dict]:
    """`rows` dialogues whose rendered length is the first paragraph boundary at or past a uniform target."""
    rng = np.random.default_rng(seed)
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in paragraphs]  # type: ignore[operator]
    out = []
    for i in range(rows):
        target = int(rng.integers(lo, hi + 1))
        start = int(rng.integers(len(paragraphs)))
        user = {"role": "user", "content": f"Explain this passage in detail:\n\n{paragraphs[start]}"}
        parts, total, j = [], lengths[start] + 16, start + 1
        while total < target:
            p = paragraphs[j % len(paragraphs)]
            parts.append(p)
            total += lengths[j % len(paragraphs)] + 2
            j += 1
        messages = [user, {"role": "assistant", "content": "\n\n".join(parts)}]
        while len(parts) > 1 and n_tokens(tok, messages) > hi:  # the estimate ran over: trim to the range
            parts.pop()
            messages[1]["content"] = "\n\n".join(parts)
        domain = "prose" if start % 2 == 0 else "reference"
        out.append({"id": f"long-{i:05d}", "domain": domain, "messages": messages})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(".rehearsal/long.jsonl"))
    ap.add_argument("--rows", type=int, default=2200)
    ap.add_argument("--min-tokens", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    source, paragraphs = english_paragraphs()
    tok = load_tokenizer("tekken")
    rows = dialogues(paragraphs, tok, args.rows, args.min_tokens, args.max_tokens, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    measured = np.array([n_tokens(tok, r["messages"]) for r in rows])
    print(f"{len(rows)} dialogues from {source}, {len(paragraphs)} paragraphs -> {args.out}")
    print(f"tekken tokens per dialogue: min {measured.min()}, median {int(np.median(measured))}, "
          f"max {measured.max()}, total {measured.sum():,}")


if __name__ == "__main__":
    main()
