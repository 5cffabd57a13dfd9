"""The prefix-consistent source -> pivot map: each source token to the pivot's first piece of the same text.

A source token at a row means "the text goes on with this token's text". The pivot token that says the
same is the one the pivot itself would write first for that text: its own first piece (`Archery` ->
`A`, not the contained `rchery`; `▁mutable` -> `▁mut`, not `able`). The pivot's tokenizer model (BPE,
Unigram) is run on the text directly, without the normalizer and pre-tokenizer, because those add a
word-boundary prefix (sentencepiece's dummy `▁`) to a piece that does not start a word. Only the text up
to the next word boundary is split, as the pre-tokenizer would have split it. The result is checked: its
canonical string must be a prefix of the source token's; otherwise (a tokenizer with no such model, or a
normalizer that rewrites the text) the longest pivot vocabulary entry that is a prefix is used instead.

Special tokens map only to a pivot special token of the same content (ChatML to ChatML); the stage adds
each source's own end-of-turn token mapped to the pivot's, learnt from where both templates end a turn.
Everything else that has no prefix-consistent pivot token is dropped from the rows (-1), never sent to unk.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from fusecli.align.tokens import BYTE_DECODER, MARKER, TokenTable

PIECE_RULES = ("exact", "first_piece", "longest_prefix", "special", "none")
_ESCAPE = re.compile(r"<0x([0-9A-F]{2})>")
_BYTE_ENCODER = {b: c for c, b in BYTE_DECODER.items()}


def canon_bytes(canon: str) -> bytes:
    """The bytes a canonical string stands for: `▁` a space, `<0xNN>` one byte, the rest UTF-8."""
    out, pos = bytearray(), 0
    for m in _ESCAPE.finditer(canon):
        out += canon[pos : m.start()].replace(MARKER, " ").encode()
        out.append(int(m.group(1), 16))
        pos = m.end()
    out += canon[pos:].replace(MARKER, " ").encode()
    return bytes(out)


_WORD = re.compile(f"{MARKER}*[^{MARKER}]*")


def first_word(canon: str) -> str:
    """The canonical string up to the next word boundary: leading `▁`s (a run of spaces is one piece),
    then everything up to the next `▁`."""
    return _WORD.match(canon).group(0)


def _model_input(canon: str, kind: str) -> str | None:
    """`canon` in the alphabet the pivot's tokenizer model reads, or None where it cannot be written.

    A sentencepiece-style model spells a partial UTF-8 character only with its byte tokens: the text before
    the first `<0xNN>` is split, or, when there is none, the longest-prefix rule finds the byte token."""
    if kind == "byte_level":
        return "".join(_BYTE_ENCODER[b] for b in canon_bytes(canon))
    if kind == "metaspace":
        m = _ESCAPE.search(canon)
        return canon if m is None else canon[: m.start()]
    return None


class FirstPiece:
    """The pivot's first piece of a canonical string, by its own tokenizer model; see the module docstring.

    Prefixes are compared as bytes, so a byte piece of a character (`<0xD0>`) starts the character's text
    (`д`), and `▁<` (the text " <") does not start `▁<0xD0>`."""

    def __init__(self, pivot: TokenTable, tokenizer: Any):
        self.pivot = pivot
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self.model = getattr(backend, "model", None)
        self.by_bytes: dict[bytes, int] = {}
        for c, p in pivot.lookup.items():
            if p not in pivot.special:
                self.by_bytes.setdefault(canon_bytes(c), p)
        self.max_len = max(map(len, self.by_bytes), default=0)

    def __call__(self, canon: str) -> tuple[int | None, str]:
        """(pivot id, rule): `first_piece` from the tokenizer model, else `longest_prefix`, else (None, none)."""
        text = canon_bytes(canon)
        raw = _model_input(first_word(canon), self.pivot.kind) if self.model is not None else None
        if raw:
            tokens = self.model.tokenize(raw)
            if tokens:
                p = int(tokens[0].id)
                if 0 <= p < self.pivot.size and self._prefix(p, text):
                    return p, "first_piece"
        p = self.longest_prefix(text)
        return (p, "longest_prefix") if p is not None else (None, "none")

    def _prefix(self, p: int, text: bytes) -> bool:
        c = self.pivot.canon[p]
        return bool(c) and p not in self.pivot.special and text.startswith(canon_bytes(c))

    def longest_prefix(self, text: bytes) -> int | None:
        for n in range(min(len(text), self.max_len), 0, -1):
            p = self.by_bytes.get(text[:n])
            if p is not None:
                return p
        return None


def prefix_map(source: TokenTable, pivot: TokenTable, tokenizer: Any) -> tuple[np.ndarray, np.ndarray]:
    """(map int32 [V_s] to pivot ids, -1 where none; rule int8 [V_s], index into PIECE_RULES)."""
    first = FirstPiece(pivot, tokenizer)
    mapping = np.full(source.size, -1, dtype=np.int32)
    rule = np.full(source.size, PIECE_RULES.index("none"), dtype=np.int8)
    for s, c in enumerate(source.canon):
        if not c:
            continue
        if s in source.special:
            p = pivot.lookup.get(c)
            if p is not None and p in pivot.special:
                mapping[s], rule[s] = p, PIECE_RULES.index("special")
            continue
        p = pivot.lookup.get(c)
        if p is not None and p not in pivot.special:
            mapping[s], rule[s] = p, PIECE_RULES.index("exact")
            continue
        p, how = first(c)
        if p is not None:
            mapping[s], rule[s] = p, PIECE_RULES.index(how)
    return mapping, rule


def is_prefix_consistent(source: TokenTable, pivot: TokenTable, s: int, p: int) -> bool:
    """Whether pivot token p starts the text of source token s (special tokens: the same content)."""
    if p < 0 or not source.canon[s] or not pivot.canon[p]:
        return False
    if s in source.special or p in pivot.special:
        return s in source.special and p in pivot.special
    return canon_bytes(source.canon[s]).startswith(canon_bytes(pivot.canon[p]))
