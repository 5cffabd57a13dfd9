"""Render a dialogue with a chat template and mark which tokens are response (assistant) tokens.

Each model reads the dialogue in its own chat template, so no model reads another's markup as text
(docs/method.md, notation). A token is a response token when its first character lies inside an
assistant turn's span; the span covers the assistant content and the template's end-of-turn marker,
so the model also learns to stop. Inside the span, the turn's *content* (the message text, stripped
of surrounding whitespace, which some templates trim) is the text every model shares: the align stage
pairs positions of two models' renderings through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fusecli.errors import FusecliError

Message = dict[str, str]


@dataclass(frozen=True)
class Rendered:
    text: str
    spans: tuple[tuple[int, int], ...]  # [start, end) character spans of assistant turns
    content: tuple[tuple[int, int], ...]  # per turn, [start, end) of its stripped content; (-1, -1): not found

    @property
    def turns(self) -> np.ndarray:
        """int32 [n_turns, 4]: span start, content start, content end, span end (what stores keep)."""
        rows = [(a, c, d, b) for (a, b), (c, d) in zip(self.spans, self.content, strict=True)]
        return np.asarray(rows, dtype=np.int32).reshape(-1, 4)


@dataclass(frozen=True)
class Tokenized:
    input_ids: np.ndarray  # int64 [T]
    offsets: np.ndarray  # int32 [T, 2] character offsets into the rendered text
    label_mask: np.ndarray  # bool [T]: token t is a response token (predicted from position t-1)
    turns: np.ndarray | None = None  # int32 [n_turns, 4], Rendered.turns
    cut: int = 0  # response tokens past max_length, dropped (the reply's end, and its end-of-turn, not learned)


def _template(tokenizer: object, messages: Sequence[Message], add_generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "the tokenizer")
        raise FusecliError(
            f"{name} has no chat template: set tokenizer.chat_template in its tokenizer_config.json"
        )
    return tokenizer.apply_chat_template(  # type: ignore[attr-defined]
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def render(tokenizer: object, messages: Sequence[Message]) -> Rendered:
    """Render `messages`; assistant spans are found by rendering each prefix with a generation prompt."""
    if not any(m["role"] == "assistant" for m in messages):
        raise FusecliError("dialogue has no assistant turn: every row needs at least one assistant message")
    text = _template(tokenizer, messages, add_generation_prompt=False)
    spans, content = [], []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = _template(tokenizer, messages[:k], add_generation_prompt=True)
        upto = _template(tokenizer, messages[: k + 1], add_generation_prompt=False)
        if not (text.startswith(prefix) and text.startswith(upto)):
            raise FusecliError("chat template is not prefix-stable: cannot locate assistant turns")
        spans.append((len(prefix), len(upto)))
        at = _content_start(tokenizer, messages, k, len(prefix), len(upto))
        content.append(content_span(text, at, len(upto), str(message.get("content") or "")))
    return Rendered(text=text, spans=tuple(spans), content=tuple(content))


_SENTINEL = "\x00fusecli-content\x00"


def _content_start(tokenizer: object, messages: Sequence[Message], k: int, start: int, end: int) -> int:
    """Where the template starts writing message k's content: after any markup it puts inside the span (a
    template with no generation prompt writes its `ASSISTANT:` header there, and an answer `A` would be found
    in it). Found by rendering the message with a sentinel as its content; the span start if not found."""
    probe = _template(tokenizer, [*messages[:k], {**messages[k], "content": _SENTINEL}], add_generation_prompt=False)
    at = probe.find(_SENTINEL, start)
    return at if start <= at <= end else start


def content_span(text: str, start: int, end: int, content: str) -> tuple[int, int]:
    """Where the stripped `content` lies in text[start:end], first occurrence; (-1, -1) if the template
    rewrote it (then that turn's positions are not paired with other models')."""
    core = content.strip()
    at = text.find(core, start, end)
    return (at, at + len(core)) if at >= 0 else (-1, -1)


def prompt_text(tokenizer: object, messages: Sequence[Message]) -> str:
    """The prompt for generation: every message up to the last assistant turn, plus the generation prompt."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return _template(tokenizer, messages[:last], add_generation_prompt=True)


def tokenize(tokenizer: object, rendered: Rendered, max_length: int | None = None) -> Tokenized:
    """Tokenize rendered text (no extra special tokens: the template has them) with character offsets."""
    enc = tokenizer(  # type: ignore[operator]
        rendered.text, add_special_tokens=False, return_offsets_mapping=True
    )
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int32).reshape(-1, 2)
    starts = offsets[:, 0]
    mask = np.zeros(len(ids), dtype=bool)
    for a, b in rendered.spans:
        mask |= (starts >= a) & (starts < b)
    if len(mask):
        mask[0] = False  # the first token has no preceding position to predict it
    cut = 0
    if max_length is not None:
        cut = int(mask[max_length:].sum())
        ids, offsets, mask = ids[:max_length], offsets[:max_length], mask[:max_length]
    return Tokenized(input_ids=ids, offsets=offsets, label_mask=mask, turns=rendered.turns, cut=cut)
