"""The judge's context: each judge prompt and the reply it asks for (`evaluate.judge.max_tokens`) must fit in it.

An endpoint refuses a request longer than its model's context (vLLM and OpenAI answer HTTP 400, and so does
`transformers serve` from 5.25 on) or generates past it, which breaks the judgments. With `evaluate.judge.context`
and `evaluate.judge.tokenizer` set, the stage counts every prompt with the judge's tokenizer and chat template, as a
chat endpoint builds it, and stops before the first request if one does not fit. Nothing is truncated (MT-Bench
truncates nothing either): a judge that saw half an answer would grade something else.
"""

from __future__ import annotations

from typing import Any

from fusecli.errors import FusecliError
from fusecli.evaluate.judge.grade import Request
from fusecli.evaluate.judge.prompts import Messages
from fusecli.evaluate.params import JudgeParams
from fusecli.tokenizer import load_tokenizer


def judge_tokenizer(params: JudgeParams) -> Any | None:
    """The judge's tokenizer, loaded from `evaluate.judge.tokenizer` (None: the context is not checked)."""
    if params.tokenizer is None:
        return None
    try:
        tokenizer = load_tokenizer(params.tokenizer)
    except FusecliError as exc:
        raise FusecliError(f"evaluate.judge.tokenizer: {exc}") from None
    tokenizer.model_max_length = int(1e30)  # it only counts: no warning that a prompt is past its own (stale) limit
    return tokenizer


def prompt_tokens(tokenizer: Any, messages: Messages) -> int:
    """The prompt's length in tokens: the messages in the judge's chat template with the assistant's turn opened,
    as a chat endpoint renders them. Without a template, the messages' text alone: fewer tokens than any template
    makes, so a prompt found too long is too long."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return len(ids["input_ids"] if hasattr(ids, "keys") else ids)
    return sum(len(tokenizer(m["content"], add_special_tokens=False)["input_ids"]) for m in messages)


def check_context(requests: list[Request], tokenizer: Any, params: JudgeParams) -> None:
    """One line naming the longest prompt if any prompt plus `max_tokens` exceeds `context`; nothing otherwise."""
    if tokenizer is None or params.context is None:
        return
    lengths = [prompt_tokens(tokenizer, r.messages) for r in requests]
    room = params.context - params.max_tokens
    over = [n for n in lengths if n > room]
    if not over:
        return
    longest = max(range(len(requests)), key=lengths.__getitem__)
    r = requests[longest].record
    which = f"model {r['model']!r}, question {r['question_id']}, turn {r['turn']}"
    if r["kind"] == "pairwise":
        which += f", against {r['against']!r}"
    raise FusecliError(
        f"{len(over)} of {len(requests)} judge prompts do not fit the judge's context: the longest ({which}) has "
        f"{lengths[longest]} tokens, plus evaluate.judge.max_tokens = {params.max_tokens} for the reply, over "
        f"evaluate.judge.context = {params.context}: serve a judge with a longer context and raise "
        "evaluate.judge.context, or lower evaluate.judge.max_new_tokens (shorter answers) or max_tokens"
    )
