"""Tiny byte-level BPE tokenizers with a ChatML template, one per demo model.

Each tokenizer is trained on the demo text weighted toward its own model's relation, with its own
vocabulary size (and, for the Qwen2 pivot, Qwen2's pre-tokenization), so the pivot and the sources
split the same string differently and the alignment stage has real work to do (docs/method.md, stage 3).
Built with `tokenizers` and wrapped in `PreTrainedTokenizerFast` (docs/architecture.md: building
GPT2TokenizerFast from files gave an empty vocabulary).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from fusecli.demo.qa import RELATIONS, Fact, teacher_rows

Style = Literal["gpt2", "qwen2"]

# Qwen2's own pre-tokenization (transformers' Qwen2Tokenizer): digits split one by one, NFC first.
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD, IM_START, IM_END)

# ChatML without a default system prompt. Prefix-stable: rendering messages[:k] with a generation prompt
# is a prefix of rendering messages[:k+1], which render() in fusecli/data/render.py relies on.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def corpus(focus: str, facts: Sequence[Fact], focus_weight: int = 3) -> list[str]:
    """Training text: every question and answer a model of the world is trained on, the `focus`
    relation's `focus_weight` times, plus one line per fact naming its members. BPE counts words, so the
    weighting (not the order) shapes the merges.

    Answers are left to split as BPE splits them (often a first letter, then the rest): tiny models
    trained with one rare token per answer learnt new answers several times slower (README, "Demo")."""
    lines = []
    for fact in facts:
        weight = focus_weight if fact.domain == focus else 1
        for row in teacher_rows(fact):
            # Role names as the template writes them, so each is a whole token as in real chat vocabularies.
            lines.extend([f"{m['role']}\n{m['content']}" for m in row["messages"]] * weight)
        lines.append(" ".join([fact.country, RELATIONS[fact.domain].noun, *fact.members]))
    return lines


def train_tokenizer(lines: list[str], vocab_size: int, style: Style = "gpt2") -> PreTrainedTokenizerFast:
    """Byte-level BPE on `lines`; ids 0-2 are the special tokens, eos is `<|im_end|>`, pad `<|endoftext|>`.

    `style` picks the pre-tokenization. A Qwen2 folder must use Qwen2's: transformers 5 loads any folder
    whose config says `qwen2` with its own Qwen2Tokenizer, which rebuilds the pipeline that way, so a
    different one would tokenize differently after a save/load round trip.
    """
    tok = Tokenizer(models.BPE())
    if style == "qwen2":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        # No offset trimming: offsets must cover every byte so masks and alignment see exact spans.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
        clean_up_tokenization_spaces=False,
    )


def build_tokenizer(
    focus: str, vocab_size: int, style: Style, facts: Sequence[Fact]
) -> PreTrainedTokenizerFast:
    """The demo tokenizer of the model that knows relation `focus`."""
    return train_tokenizer(corpus(focus, facts), vocab_size, style)
