"""Templated single-turn Q&A from the shipped country facts: one relation (domain) per expert.

Each relation has a few training paraphrases of the question and one held-out paraphrase used only
for evaluation, so exact match on the eval split measures recall of a fact under an unseen wording,
not memorised text. Every word of the held-out wording occurs in some training wording: a ~1M-parameter
model cannot embed a word it never saw, and the demo is about fusing knowledge, not about zero-shot
language. Answers are the bare value, checkable by exact match.
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources

# domain -> (fact field holding the answer, train templates, held-out eval template)
RELATIONS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "capital": (
        "capital",
        (
            "What is the capital of {country}?",
            "Which city is the capital of {country}?",
            "Tell me which city is the capital of {country}.",
            "{country}: what is its capital?",
        ),
        "Tell me the capital of {country}.",
    ),
    "currency": (
        "currency",
        (
            "What is the currency of {country}?",
            "Which currency does {country} use?",
            "Tell me which currency is used in {country}.",
            "{country}: what is its currency?",
        ),
        "Tell me the currency of {country}.",
    ),
    "region": (
        "subregion",
        (
            "What is the region of {country}?",
            "Which region is {country} in?",
            "Tell me which region {country} belongs to.",
            "{country}: what is its region?",
        ),
        "Tell me the region of {country}.",
    ),
    "demonym": (
        "demonym",
        (
            "What is the demonym of {country}?",
            "What are people from {country} called?",
            "Tell me what people from {country} are called.",
            "{country}: what is its demonym?",
        ),
        "Tell me the demonym of {country}.",
    ),
}
DOMAINS = tuple(RELATIONS)


@cache
def load_facts() -> tuple[dict[str, str], ...]:
    """The shipped facts, one dict per country, sorted by name (scripts/make_demo_facts.py)."""
    text = resources.files("fusecli.demo").joinpath("data/countries.jsonl").read_text()
    return tuple(json.loads(line) for line in text.splitlines() if line.strip())


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def qa_rows(domains: tuple[str, ...] = DOMAINS) -> list[dict]:
    """All demo dialogues, ordered by domain, country, template; ids are stable across runs."""
    rows = []
    for domain in domains:
        field, train_templates, eval_template = RELATIONS[domain]
        templates = [(f"t{i}", "train", t) for i, t in enumerate(train_templates)]
        templates.append(("eval", "eval", eval_template))
        for fact in load_facts():
            answer = fact[field]
            for tag, split, template in templates:
                question = template.format(country=fact["country"])
                rows.append(
                    {
                        "id": f"{domain}-{slug(fact['country'])}-{tag}",
                        "domain": domain,
                        "split": split,
                        "messages": [
                            {"role": "user", "content": question},
                            {"role": "assistant", "content": answer},
                        ],
                        "answer": answer,
                    }
                )
    return rows
