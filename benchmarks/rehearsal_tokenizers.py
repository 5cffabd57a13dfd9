"""Write the dress rehearsal's tokenizers (issue 9): real vocabularies, available offline, each with a chat
template, as Hugging Face tokenizer folders the GPU machine can read without the `realvocab` extra.

    .venv/bin/python -m benchmarks.rehearsal_tokenizers --out .rehearsal/tokenizers

- `tekken`: Mistral's 131,072-token byte-level vocabulary (the pivot's, as large as Qwen's 152K), ChatML.
- `mistral`: Mistral 7B v0.1's SentencePiece (32,000 tokens, byte fallback), `[INST]` template.
- `gpt2`: GPT-2's byte-level BPE (50,257 tokens), ChatML.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks._common import load_tokenizer

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Mistral-Instruct's format; prefix-stable, so fusecli can find the assistant turns.
INST = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
)
TEMPLATES = {"tekken": "chatml", "mistral": "inst", "gpt2": "chatml"}


def with_template(name: str):
    """The real tokenizer `name` with its chat template (and ChatML's two special tokens where it uses it)."""
    tok = load_tokenizer(name)
    if TEMPLATES[name] == "chatml":
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tok.eos_token = "<|im_end|>"
        tok.chat_template = CHATML
    else:
        tok.chat_template = INST
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(".rehearsal/tokenizers"))
    args = ap.parse_args()
    for name in TEMPLATES:
        tok = with_template(name)
        tok.save_pretrained(str(args.out / name))
        print(f"{name}: {len(tok):,} tokens -> {args.out / name}")


if __name__ == "__main__":
    main()
