"""Tiny tokenizers on disk, built once per session with `tokenizers` (no downloads):
- `byte`: byte-level BPE (`Ġ`, `Ċ`), ChatML specials, eos `<|im_end|>`, no bos or unk (as the demo's);
- `meta`: sentencepiece style (Metaspace `▁`, byte fallback `<0xNN>`), `<unk>`, `<s>`, `</s>` + ChatML;
- `byte_small`: another byte-level BPE with a smaller vocabulary;
- models whose chat templates differ from the pivot's ChatML (each model reads its own template):
  `gemma`: sentencepiece style, Gemma's `<start_of_turn>model\n...<end_of_turn>\n` with those two special tokens;
  `llama3`: byte-level, Llama 3's header tokens and `<|eot_id|>`;
  `alpaca`: byte-level with no chat special tokens: its markup is text (`### Response:`), and its
  generation prompt is empty, so the markup lies inside the assistant span (the source's response rows).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from fusecli.align.tokens import TokenTable
from fusecli.tokenizer import load_tokenizer

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHATML = ["<|im_start|>", "<|im_end|>"]
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
GEMMA = ["<start_of_turn>", "<end_of_turn>"]
LLAMA3_TEMPLATE = (
    "<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
LLAMA3 = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
ALPACA_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}### Instruction:\n{{ m['content'] }}\n\n"
    "{% else %}### Response:\n{{ m['content'] }}\n\n{% endif %}{% endfor %}"
)

CORPUS = [
    "The capital of France is Paris, and its currency is the euro.",
    "What is the capital of Japan?\nTokyo is the capital of Japan.",
    "def add(a, b):\n\treturn a + b  # adds two numbers",
    "Le café est très bon à Paris; naïve résumé.",
    "Numbers: 3.14159, 2,718 and 1,000,000 dollars.",
    "In 2024 the model answered 42 questions correctly.",
    "Tabs\tand  double  spaces   matter for alignment.",
    "Peru is in the Americas. Spain is in Europe.",
    "The quick brown fox jumps over the lazy dog!",
    "Knowledge fusion maps one vocabulary onto another.",
]
RARE = "你好, 世界 🤗"  # rare characters: byte-level pieces / byte fallback in the sentencepiece vocabulary


def byte_level_tokenizer(
    vocab_size: int, specials: tuple[str, ...] = tuple(CHATML), template: str = CHAT_TEMPLATE, **names: str
) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", *specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 3 + [RARE], trainer=trainer)
    names = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", **names}
    return PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=template, **names)


def _metaspace_split() -> pre_tokenizers.PreTokenizer:
    """Words after `▁`, with punctuation and control characters on their own (as real sentencepiece
    vocabularies mostly have them)."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
            pre_tokenizers.Punctuation("isolated"),
            pre_tokenizers.Split(Regex(r"[\n\t]"), "isolated"),
        ]
    )


def metaspace_tokenizer(
    vocab_size: int, specials: tuple[str, ...] = tuple(CHATML), template: str = CHAT_TEMPLATE, **names: str
) -> PreTrainedTokenizerFast:
    """Trained without byte fallback, then rebuilt with `<0xNN>` tokens at ids 3-258 (Llama's layout)."""
    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.pre_tokenizer = _metaspace_split()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, limit_alphabet=70, show_progress=False)
    trained.train_from_iterator(CORPUS * 3, trainer=trainer)
    spec = json.loads(trained.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for token in sorted(spec["vocab"], key=spec["vocab"].get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = _metaspace_split()
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ["<unk>", "<s>", "</s>"]])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    names = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", **names}
    return PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=template, **names)


@pytest.fixture(scope="session")
def tokenizer_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    built = {
        "byte": byte_level_tokenizer(400),
        "meta": metaspace_tokenizer(420),
        "byte_small": byte_level_tokenizer(300),
        "gemma": metaspace_tokenizer(380, tuple(GEMMA), GEMMA_TEMPLATE),
        "llama3": byte_level_tokenizer(
            360, tuple(LLAMA3), LLAMA3_TEMPLATE, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"
        ),
        "alpaca": byte_level_tokenizer(340, (), ALPACA_TEMPLATE, eos_token="<|endoftext|>"),
    }
    dirs = {}
    for name, tok in built.items():
        tok.save_pretrained(root / name)
        dirs[name] = root / name
    return dirs


@pytest.fixture(scope="session")
def tokenizers(tokenizer_dirs: dict[str, Path]) -> dict:
    return {name: load_tokenizer(path) for name, path in tokenizer_dirs.items()}


@pytest.fixture(scope="session")
def tables(tokenizers: dict) -> dict[str, TokenTable]:
    return {name: TokenTable.from_tokenizer(tok) for name, tok in tokenizers.items()}
