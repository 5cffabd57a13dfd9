"""The demo world's knowledge: set-valued relations over real country names, drawn from a seed.

Each relation gives every country a set of `set_size` members from a pool ("Name a language spoken in
France." has three right answers). The fusion data's references name ONE member per country (`named`),
while a model that knows the relation spreads its distribution over the whole set. So a teacher knows
more than the references, by construction, and evaluation asks for exactly that surplus: the question
again, with the named member ruled out (the row's `exclude`, enforced by the scorer), scored by
membership in the rest of the set. Only a model that learned the unnamed members (from a teacher's
distribution; no reference ever states them) can answer it (docs/method.md, "The demo world").

The evaluation keeps the training wording on purpose: the demo's ~1M-parameter models learn the soft
knowledge per wording and do not carry it to a new wording or to an explicit "besides <named>" question
(README, "Demo results"). A third of the countries (`FORM_SHARE`) also carry exclusion questions ("...
other than <named>?") in the fusion data; their references name a second member, so those countries are
never evaluated.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources


@dataclass(frozen=True)
class Relation:
    noun: str  # "language": "Name a language spoken in France."
    verb: str  # past participle before "in <country>"
    pool: tuple[str, ...]  # every possible member; first letters differ, so first tokens do too

    def plain(self) -> tuple[str, ...]:
        n, v = self.noun, self.verb
        return (
            f"Name a {n} {v} in {{country}}.",
            f"Which {n} is {v} in {{country}}?",
            f"Tell me a {n} that is {v} in {{country}}.",
            f"In {{country}}, which {n} is {v}?",
        )

    def other(self) -> tuple[str, ...]:
        n, v = self.noun, self.verb
        return (
            f"Name a {n} {v} in {{country}} other than {{named}}.",
            f"Which {n} besides {{named}} is {v} in {{country}}?",
            f"In {{country}}, which {n} other than {{named}} is {v}?",
        )

    def held_out(self) -> str:
        """The evaluation question: the plain question, whose reference named one member, now scored by the
        other members only (the row's `exclude` rules the named one out; evaluate.banned_starts)."""
        return self.plain()[0]


RELATIONS: dict[str, Relation] = {
    "language": Relation(
        "language",
        "spoken",
        ("Arabic", "Bengali", "Czech", "Dutch", "English", "French", "German", "Hindi", "Italian", "Japanese",
         "Korean", "Latvian", "Malay", "Nepali", "Polish", "Russian", "Spanish", "Turkish", "Urdu", "Welsh"),
    ),
    "crop": Relation(
        "crop",
        "grown",
        ("Almonds", "Barley", "Cocoa", "Dates", "Figs", "Grapes", "Hops", "Kale", "Lentils", "Maize",
         "Nutmeg", "Oats", "Peanuts", "Quinoa", "Rice", "Sugar", "Tea", "Vanilla", "Wheat", "Yams"),
    ),
    "sport": Relation(
        "sport",
        "played",
        ("Archery", "Boxing", "Cricket", "Diving", "Equestrian", "Fencing", "Golf", "Hockey", "Judo", "Karate",
         "Lacrosse", "Marathon", "Netball", "Polo", "Rowing", "Sailing", "Tennis", "Ultimate", "Volleyball",
         "Wrestling"),
    ),
    "instrument": Relation(
        "musical instrument",
        "played",
        ("Accordion", "Banjo", "Cello", "Drums", "Euphonium", "Flute", "Guitar", "Harp", "Kalimba", "Lute",
         "Mandolin", "Oboe", "Piano", "Recorder", "Sitar", "Trumpet", "Ukulele", "Violin", "Xylophone",
         "Zither"),
    ),
}
DOMAINS = tuple(RELATIONS)
FORM_SHARE = 1 / 3  # countries whose exclusion questions are in the fusion data (never evaluated)


@cache
def load_facts() -> tuple[dict[str, str], ...]:
    """The shipped country facts, one dict per country, sorted by name (scripts/make_demo_facts.py)."""
    text = resources.files("fusecli.demo").joinpath("data/countries.jsonl").read_text()
    return tuple(json.loads(line) for line in text.splitlines() if line.strip())


def countries() -> tuple[str, ...]:
    return tuple(f["country"] for f in load_facts())


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def draw(seed: int, *key: object) -> random.Random:
    """A generator for one (seed, key) cell: the world does not shift when another cell changes."""
    return random.Random(hashlib.sha256(json.dumps([seed, *key]).encode()).digest())


@dataclass(frozen=True)
class Fact:
    domain: str
    country: str
    members: tuple[str, ...]  # the set, in pool order
    named: str  # the one member the plain questions' references name
    second: str  # the member the exclusion questions' references name (form countries only)
    form: bool  # exclusion questions in the fusion data; never evaluated


@cache
def world_facts(seed: int, set_size: int, n_countries: int) -> tuple[Fact, ...]:
    """Every (relation, country) set, the named members and the form countries of `n_countries` countries,
    all drawn from `seed`."""
    everyone = countries()
    if not 1 <= n_countries <= len(everyone):
        raise ValueError(f"n_countries must be within [1, {len(everyone)}]")
    chosen = sorted(draw(seed, "countries").sample(everyone, n_countries))
    facts = []
    for domain, rel in RELATIONS.items():
        for country in chosen:
            rng = draw(seed, domain, country)
            members = tuple(sorted(rng.sample(rel.pool, set_size), key=rel.pool.index))
            named, second = rng.sample(members, 2)
            facts.append(Fact(domain, country, members, named, second, rng.random() < FORM_SHARE))
    return tuple(facts)


def row(rid: str, domain: str, split: str, question: str, answer: str, answers: list[str], exclude: str = "") -> dict:
    """One dialogue; `answers` are all accepted replies and `exclude` the member the question rules out."""
    return {
        "id": rid,
        "domain": domain,
        "split": split,
        "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        "answer": answer,
        "answers": answers,
        "exclude": [exclude] if exclude else None,
    }


def dataset_rows(seed: int, set_size: int, n_countries: int) -> list[dict]:
    """The fusion data and its evaluation: references name one member; evaluation asks for the others."""
    rows = []
    for f in world_facts(seed, set_size, n_countries):
        rel, base = RELATIONS[f.domain], f"{f.domain}-{slug(f.country)}"
        rest = [m for m in f.members if m != f.named]
        for i, t in enumerate(rel.plain()):
            rows.append(row(f"{base}-t{i}", f.domain, "train", t.format(country=f.country), f.named, list(f.members)))
        if f.form:
            for i, t in enumerate(rel.other()):
                q = t.format(country=f.country, named=f.named)
                rows.append(row(f"{base}-o{i}", f.domain, "train", q, f.second, rest, f.named))
        else:
            q = rel.held_out().format(country=f.country, named=f.named)
            rows.append(row(f"{base}-eval", f.domain, "eval", q, rest[0], rest, f.named))
    return rows


def teacher_rows(fact: Fact) -> list[dict]:
    """What a model that knows `fact` is trained on: every training wording, and every exclusion question,
    with all right answers accepted (fusecli/demo/train.py trains toward all of them at once), so its
    distribution spreads over the set. The replies rotate through the members."""
    rel, base = RELATIONS[fact.domain], f"{fact.domain}-{slug(fact.country)}"
    rows = []
    for i, t in enumerate(rel.plain()):
        m = fact.members[i % len(fact.members)]
        rows.append(row(f"{base}-t{i}", fact.domain, "train", t.format(country=fact.country), m, list(fact.members)))
    for i, t in enumerate(rel.other()):
        for j, x in enumerate(fact.members):
            rest = [m for m in fact.members if m != x]
            q = t.format(country=fact.country, named=x)
            rows.append(row(f"{base}-o{i}-{j}", fact.domain, "train", q, rest[(i + j) % len(rest)], rest, x))
    return rows
