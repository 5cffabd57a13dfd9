"""MT-Bench question files: one JSON object per line, `question_id`, `category`, `turns` (the user's messages,
asked one after the other in one conversation) and optionally `reference` (a reference answer per turn, ""
for none, for reference-guided grading of math, reasoning and coding as MT-Bench does). Other keys are ignored.

The public set is not shipped (bring it: FastChat's `mt_bench/question.jsonl`); a tiny demo file is, in
data/demo_questions.jsonl.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fusecli.errors import FusecliError

RESERVED = ("overall",)  # the aggregate's key beside the categories
FORMAT = 'one JSON object per line: {"question_id", "category", "turns": [...], "reference": [...] (optional)}'


@dataclass(frozen=True)
class Question:
    question_id: int | str
    category: str
    turns: tuple[str, ...]
    reference: tuple[str, ...] | None  # one per turn, "" where a turn has none


def _turns(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError("turns must be a non-empty list of non-empty strings")
    return tuple(value)


def _reference(value: object, n: int) -> tuple[str, ...]:
    """One string per turn; "" means no reference for that turn (the public set has some)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("reference must be a list of strings, one per turn")
    if len(value) != n:
        raise ValueError(f"reference has {len(value)} entries, turns has {n}: give one per turn")
    return tuple(value)


def parse_question(obj: object) -> Question:
    """One line's object -> Question; ValueError names the field at fault."""
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    missing = [k for k in ("question_id", "category", "turns") if k not in obj]
    if missing:
        raise ValueError(f"{missing[0]} is missing")
    qid, category = obj["question_id"], obj["category"]
    if isinstance(qid, bool) or not isinstance(qid, int | str) or qid == "":
        raise ValueError("question_id must be a number or a non-empty string")
    if not isinstance(category, str) or not category.strip() or category in RESERVED:
        raise ValueError(f"category must be a non-empty string other than {', '.join(RESERVED)}")
    turns = _turns(obj["turns"])
    reference = obj.get("reference")
    return Question(qid, category, turns, None if reference is None else _reference(reference, len(turns)))


def read_questions(path: str | Path) -> list[Question]:
    """Every question of an MT-Bench JSONL file; a bad line is an error naming its number."""
    path = Path(path)
    if not path.is_file():
        raise FusecliError(f"{path} not found: set evaluate.judge.questions to an MT-Bench question file (JSONL)")
    out: list[Question] = []
    seen: set[str] = set()  # 1 and "1" are one id: answers are keyed by the id's text
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            q = parse_question(json.loads(line))
            if str(q.question_id) in seen:
                raise ValueError(f"question_id {q.question_id!r} repeats an earlier line")
        except ValueError as exc:  # json.JSONDecodeError is one
            raise FusecliError(f"{path} line {n}: {exc}: fix the line ({FORMAT})") from None
        seen.add(str(q.question_id))
        out.append(q)
    if not out:
        raise FusecliError(f"{path} holds no question: {FORMAT}")
    return out
