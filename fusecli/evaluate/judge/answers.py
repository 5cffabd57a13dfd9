"""Each model's answers to the question file: greedy, multi-turn, with the model's own chat template.

Turn k is asked in the conversation holding the model's own answers to turns 1..k-1, as MT-Bench does.
Answers are cached like native scores (evaluate/cache.py: model content hash, question file hash,
generation settings, this code), so grading again with another judge regenerates nothing.
"""

from __future__ import annotations

from pathlib import Path

from fusecli.data.render import prompt_text
from fusecli.device import resolve_device, resolve_dtype
from fusecli.evaluate.cache import EvalCache
from fusecli.evaluate.judge.questions import Question
from fusecli.evaluate.params import EvalParams
from fusecli.evaluate.run import EvalModel, cached_per_model, greedy_answers
from fusecli.models import load_model, load_tokenizer

Answers = dict[str, list[str]]  # str(question_id) -> the answer to each turn


def conversation(turns: tuple[str, ...], answers: list[str], k: int) -> list[dict[str, str]]:
    """The messages of turns 0..k with the answers to turns 0..k-1 (0-based)."""
    messages = []
    for i in range(k + 1):
        messages.append({"role": "user", "content": turns[i]})
        if i < k:
            messages.append({"role": "assistant", "content": answers[i]})
    return messages


def answer_questions(m: EvalModel, questions: list[Question], params: EvalParams) -> Answers:
    """Greedy answers of model `m` to every turn, batched turn by turn across questions."""
    device = resolve_device(params.device)
    tok = load_tokenizer(m.path, m.trust_remote_code)
    model = load_model(m.path, device, resolve_dtype(params.dtype, device), m.trust_remote_code).eval()
    answers: Answers = {str(q.question_id): [] for q in questions}
    for k in range(max(len(q.turns) for q in questions)):
        asked = [q for q in questions if len(q.turns) > k]
        # prompt_text renders up to the last assistant message: the empty one marks where the reply goes
        prompts = [prompt_text(tok, [*conversation(q.turns, answers[str(q.question_id)], k),
                                     {"role": "assistant", "content": ""}]) for q in asked]
        replies = greedy_answers(model, tok, prompts, params.batch_size, params.judge.max_new_tokens, device)
        for q, reply in zip(asked, replies, strict=True):
            answers[str(q.question_id)].append(reply.strip())
    return answers


def answer_settings(params: EvalParams) -> dict:
    """What decides the answers besides the model, the questions and the code (the cache key)."""
    return {"batch_size": params.batch_size, "max_new_tokens": params.judge.max_new_tokens,
            "device": params.device, "dtype": params.dtype}


def all_answers(
    models: list[EvalModel], questions: list[Question], params: EvalParams, cache_dir: str | Path | None
) -> dict[str, Answers]:
    """`{model name: answers}`; a model whose folder, the question file and the settings are unchanged is read
    back from the cache (`cache_dir`: the score cache's folder)."""
    # beside the score cache, so both share its file-hash cache (a model folder is hashed once)
    cache = (EvalCache(Path(cache_dir).parent / "judge-answers", params.judge.questions, answer_settings(params),
                       code=__name__) if cache_dir else None)
    return cached_per_model(models, "answer", lambda m: answer_questions(m, questions, params), cache)
