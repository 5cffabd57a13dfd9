"""`evaluate.backend: judge`, the FuseChat paper's kind of evaluation (MT-Bench): every model answers an
MT-Bench question file, an LLM behind any OpenAI-compatible endpoint grades each answer 1-10 (and, with
`evaluate.judge.pairwise`, compares it with one model's, in both orders). The scores go into
eval/metrics.json beside the native ones; every judgment, raw reply included, into eval/judgments.jsonl.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusecli.errors import FusecliError
from fusecli.evaluate.judge.aggregate import pairwise_scores, single_scores
from fusecli.evaluate.judge.answers import all_answers
from fusecli.evaluate.judge.client import Judge
from fusecli.evaluate.judge.context import check_context, judge_tokenizer
from fusecli.evaluate.judge.grade import ask_all, pair_requests, single_requests
from fusecli.evaluate.judge.questions import Question, read_questions
from fusecli.evaluate.params import EvalParams
from fusecli.evaluate.run import EvalModel
from fusecli.io import atomic_write_text


@dataclass(frozen=True)
class JudgePlan:
    questions: list[Question]
    graded: list[EvalModel]  # graded 1-10 (and against `against`)
    against: EvalModel | None  # evaluate.judge.pairwise
    judge: Judge
    tokenizer: Any | None  # the judge's (evaluate.judge.tokenizer), to check each prompt fits evaluate.judge.context


def plan_judge(params: EvalParams, by_name: dict[str, EvalModel], aliases: dict[str, str]) -> JudgePlan:
    """Check the judge's settings before any model is scored: the question file, the model names, the key, the
    judge's tokenizer.
    `aliases`: names that repeat another model's scores (`merged`), graded only when named."""
    opts = params.judge
    questions = read_questions(opts.questions)
    names = list(opts.models) if opts.models is not None else [n for n in by_name if n not in aliases]
    for key, wanted in (("models", names), ("pairwise", [opts.pairwise] if opts.pairwise else [])):
        unknown = [n for n in wanted if n not in by_name]
        if unknown:
            raise FusecliError(f"evaluate.judge.{key} names {unknown[0]!r}, which is not evaluated: "
                               f"use one of {', '.join(by_name)}")
    against = by_name[opts.pairwise] if opts.pairwise else None
    if against is not None and not set(names) - {against.name}:
        raise FusecliError(f"evaluate.judge.pairwise = {against.name!r} leaves no other model to compare with it: "
                           "add models to evaluate.judge.models")
    return JudgePlan(questions, [by_name[n] for n in names], against, Judge(opts), judge_tokenizer(opts))


def run_judge(
    plan: JudgePlan, params: EvalParams, cache_dir: str | Path | None, judgments: str | Path | None,
    aliases: dict[str, str],
) -> dict[str, dict]:
    """Answer, grade, aggregate: `{"judge": ..., "judge_pairwise": ...}` (the latter with pairwise only);
    the judged records go to `judgments` (JSONL)."""
    answering = plan.graded + ([plan.against] if plan.against and plan.against not in plan.graded else [])
    answers = all_answers(answering, plan.questions, params, cache_dir)
    graded = {m.name: answers[m.name] for m in plan.graded}
    requests = single_requests(plan.questions, graded)
    if plan.against is not None:
        requests += pair_requests(plan.questions, {**graded, plan.against.name: answers[plan.against.name]},
                                  plan.against.name)
    check_context(requests, plan.tokenizer, params.judge)  # before the first request
    records = [{**r, "judge": params.judge.model}
               for r in ask_all(plan.judge.reply, requests, params.judge.concurrency)]
    if judgments is not None:
        atomic_write_text(judgments, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    out = {"judge": single_scores(records)}
    if plan.against is not None:
        out["judge_pairwise"] = pairwise_scores(records)
    for block in out.values():
        for alias, name in aliases.items():
            if name in block and alias not in block:
                block[alias] = block[name]
    return out
