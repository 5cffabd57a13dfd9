"""Greedy exact match, defined once: `evaluate` scores with it, and the demo's own check is to use it too."""

from __future__ import annotations


def normalise(text: str) -> str:
    """Case and whitespace do not count: `Paris.` and ` paris.` differ, `Paris` and ` paris ` do not."""
    return " ".join(text.strip().split()).lower()


def exact_match(prediction: str, answer: str) -> bool:
    return normalise(prediction) == normalise(answer)
