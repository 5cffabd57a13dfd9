"""Judgments: the requests of MT-Bench's protocol, sent to the judge, and its replies parsed.

A reply with no rating in 1..10 (or no verdict) is MISSING: recorded with `rating: null`, counted and
reported, left out of every mean, never scored 0.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fusecli.evaluate.judge.answers import Answers
from fusecli.evaluate.judge.prompts import Messages, pair_messages, single_messages
from fusecli.evaluate.judge.questions import Question
from fusecli.progress import progress_bar

RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")  # MT-Bench's format: "[[7]]", "[[7.5]]"
RATING_FALLBACK = re.compile(r"\[(\d+\.?\d*)\]")  # and its fallback when the judge writes "[7]"
VERDICTS = {"[[A]]": "A", "[[B]]": "B", "[[C]]": "tie"}  # looked for in this order, as MT-Bench does


def parse_rating(reply: str) -> float | None:
    """The first "[[x]]" in the reply, else the first "[x]"; None when there is none or x is not in 1..10."""
    for pattern in (RATING, RATING_FALLBACK):
        found = pattern.search(reply)
        if found:
            value = float(found.group(1))
            return value if 1 <= value <= 10 else None
    return None


def parse_verdict(reply: str) -> str | None:
    """"A", "B" or "tie" from a pairwise reply; None when it holds no verdict."""
    return next((v for mark, v in VERDICTS.items() if mark in reply), None)


@dataclass(frozen=True)
class Request:
    record: dict  # what identifies the judgment in eval/judgments.jsonl
    messages: Messages


def single_requests(questions: list[Question], answers: dict[str, Answers]) -> list[Request]:
    """One request per model, question and turn."""
    return [Request({"kind": "single", "model": name, "question_id": q.question_id, "category": q.category,
                     "turn": t + 1, "answer": ans[str(q.question_id)][t]},
                    single_messages(q, ans[str(q.question_id)], t))
            for name, ans in answers.items() for q in questions for t in range(len(q.turns))]


def pair_requests(questions: list[Question], answers: dict[str, Answers], against: str) -> list[Request]:
    """Per model other than `against`, question and turn: two requests, the model shown first (as A) then second."""
    ref = answers[against]
    out = []
    for name, ans in answers.items():
        if name == against:
            continue
        for q in questions:
            mine, theirs = ans[str(q.question_id)], ref[str(q.question_id)]
            for t in range(len(q.turns)):
                base = {"kind": "pairwise", "model": name, "against": against, "question_id": q.question_id,
                        "category": q.category, "turn": t + 1}
                out.append(Request({**base, "model_is": "A", "answer_a": mine[t], "answer_b": theirs[t]},
                                   pair_messages(q, mine, theirs, t)))
                out.append(Request({**base, "model_is": "B", "answer_a": theirs[t], "answer_b": mine[t]},
                                   pair_messages(q, theirs, mine, t)))
    return out


def judged(record: dict, reply: str) -> dict:
    """The request's record with the judge's reply and what it parses to."""
    if record["kind"] == "single":
        return {**record, "reply": reply, "rating": parse_rating(reply)}
    return {**record, "reply": reply, "verdict": parse_verdict(reply)}


def ask_all(reply: Callable[[Messages], str], requests: list[Request], concurrency: int) -> list[dict]:
    """Every request's judged record, in order; the first alone, so a bad endpoint fails once, at once."""
    if not requests:
        return []
    with progress_bar("judgment") as progress, ThreadPoolExecutor(concurrency) as pool:
        task = progress.add_task("judge", total=len(requests))

        def one(r: Request) -> dict:
            out = judged(r.record, reply(r.messages))
            progress.advance(task)
            return out

        first = one(requests[0])
        try:
            rest: Iterator[dict] = pool.map(one, requests[1:])
            return [first, *rest]
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # one failure ends the run: send nothing more
            raise
