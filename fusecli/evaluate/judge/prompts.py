"""The judge's prompts: MT-Bench's protocol (single-answer 1-10 rating in "[[rating]]", pairwise verdict in
"[[A]]"/"[[B]]"/"[[C]]", reference-guided when the question has a reference), in this project's own words.

From turn 2 on the judge sees the whole conversation and grades the answer to the last question.
"""

from __future__ import annotations

from fusecli.evaluate.judge.questions import Question

Messages = list[dict[str, str]]

CRITERIA = ("Judge how helpful, relevant, accurate, deep, creative and detailed the response is. "
            "Be as objective as possible.")
REFERENCE = ("A reference answer is given: compare the response with it, and point out and correct its "
             "mistakes before judging. ")
LAST_TURN = "Several turns are shown: judge only the assistant's reply to the user's last question. "

SINGLE = ("You are an impartial judge of an AI assistant's reply to a user. {last}{reference}{criteria} "
          "Write a short explanation first. Then give a rating from 1 to 10, written exactly as "
          "\"[[rating]]\", for example: \"Rating: [[6]]\".")

PAIR = ("You are an impartial judge comparing the replies of two AI assistants, A and B, to the same user. "
        "{last}{reference}{criteria} The order in which the replies are shown must not influence you, nor "
        "their length, nor the assistants' names. Write a short explanation first. Then give your verdict, "
        "written exactly as \"[[A]]\" if assistant A is better, \"[[B]]\" if assistant B is better, or "
        "\"[[C]]\" for a tie.")


def _references(q: Question, turn: int) -> list[tuple[int, str]]:
    """(turn, reference) of turns 0..turn that have one."""
    return [(i, r) for i, r in enumerate((q.reference or ())[: turn + 1]) if r.strip()]


def _system(template: str, q: Question, turn: int) -> str:
    return template.format(last=LAST_TURN if turn > 0 else "", reference=REFERENCE if _references(q, turn) else "",
                           criteria=CRITERIA)


def _dialogue(q: Question, answers: list[str], turn: int, who: str) -> str:
    """Turns 0..turn of the conversation, the assistant called `who`."""
    parts = []
    for i in range(turn + 1):
        parts += [f"### User:\n{q.turns[i]}", f"### {who}:\n{answers[i]}"]
    return "\n\n".join(parts)


def _reference(q: Question, turn: int) -> str:
    refs = _references(q, turn)
    if not refs:
        return ""
    shown = "\n\n".join(f"### Reference answer to question {i + 1}:\n{r}" for i, r in refs)
    return f"[Reference]\n{shown}\n[End of reference]\n\n"


def single_messages(q: Question, answers: list[str], turn: int) -> Messages:
    """The judge's request for one model's reply to turn `turn` (0-based)."""
    user = (f"{_reference(q, turn)}[Conversation]\n{_dialogue(q, answers, turn, 'Assistant')}\n"
            "[End of conversation]")
    return [{"role": "system", "content": _system(SINGLE, q, turn)}, {"role": "user", "content": user}]


def pair_messages(q: Question, answers_a: list[str], answers_b: list[str], turn: int) -> Messages:
    """The judge's request comparing assistant A's and B's replies to turn `turn` (0-based)."""
    user = (f"{_reference(q, turn)}[Conversation with assistant A]\n{_dialogue(q, answers_a, turn, 'Assistant A')}\n"
            f"[End of conversation with assistant A]\n\n[Conversation with assistant B]\n"
            f"{_dialogue(q, answers_b, turn, 'Assistant B')}\n[End of conversation with assistant B]")
    return [{"role": "system", "content": _system(PAIR, q, turn)}, {"role": "user", "content": user}]
