"""Greedy exact match, defined once: `evaluate` scores with it, and so does the demo's own check."""

from __future__ import annotations


def normalise(text: str) -> str:
    """Case and whitespace do not count: `Paris.` and ` paris.` differ, `Paris` and ` paris ` do not."""
    return " ".join(text.strip().split()).lower()


def exact_match(prediction: str, answer: str, answers: list[str] | None = None) -> bool:
    """Equal after normalising; a question with several right `answers` (set-valued) accepts any of them."""
    return normalise(prediction) in {normalise(a) for a in (answers or [answer])}
