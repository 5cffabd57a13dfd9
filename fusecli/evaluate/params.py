"""The `evaluate` section of params.yaml (every key is in params.yaml: the values live there, not here)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from fusecli.errors import FusecliError


@dataclass(frozen=True)
class LmEvalParams:
    """lm-evaluation-harness tasks run on top of the native scores when `evaluate.backend: lm_eval`."""

    tasks: tuple[str, ...]  # harness task names; fusecli_heldout: the held-out split
    models: tuple[str, ...]  # model names of eval/metrics.json to run the tasks on
    include_path: str | None  # a folder of your own task YAMLs
    limit: int | None  # examples per task (None: all)
    num_fewshot: int | None
    batch_size: int
    apply_chat_template: bool

    def validate(self) -> None:
        if not self.tasks or not self.models:
            raise FusecliError("evaluate.lm_eval.tasks and evaluate.lm_eval.models must each name at least one")
        if self.batch_size < 1 or (self.limit is not None and self.limit < 1):
            raise FusecliError("evaluate.lm_eval.batch_size and evaluate.lm_eval.limit must be >= 1")


@dataclass(frozen=True)
class JudgeParams:
    """`evaluate.backend: judge`: MT-Bench-style grading of each model's answers by an OpenAI-compatible endpoint."""

    questions: str  # MT-Bench question file (JSONL: question_id, category, turns, optional reference)
    base_url: str  # the endpoint, e.g. http://localhost:8000/v1 (vLLM, transformers serve) or https://api.openai.com/v1
    model: str  # the judge model's name at that endpoint
    api_key_env: str | None  # NAME of the environment variable holding the key; null: no key (a local server)
    models: tuple[str, ...] | None  # model names of eval/metrics.json that answer; null: every model
    pairwise: str | None  # a model name: every other model is also judged against it, in both orders
    max_new_tokens: int  # per answer turn (greedy)
    max_tokens: int  # per judge reply
    temperature: float  # the judge's (MT-Bench: 0)
    concurrency: int  # judge requests in flight
    timeout: float  # seconds per request
    retries: int  # per request, on connection errors, 408/409/429 and 5xx (the openai client's rule)
    context: int | None  # the judge's context in tokens, prompt and reply; null: unknown, not checked
    tokenizer: str | None  # a local folder with the judge's tokenizer, to count a prompt's tokens (with context)

    def validate(self) -> None:
        if not re.match(r"https?://", self.base_url):
            raise FusecliError(f"evaluate.judge.base_url = {self.base_url!r} must start with http:// or https://")
        if not self.model.strip():
            raise FusecliError("evaluate.judge.model is empty: name the judge model the endpoint serves")
        if self.api_key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            raise FusecliError(
                "evaluate.judge.api_key_env is not a variable name (not echoed: it may be a key): give the NAME "
                "of the environment variable holding the key (e.g. OPENAI_API_KEY), never the key itself"
            )
        if self.models is not None and not self.models:
            raise FusecliError("evaluate.judge.models is empty: name at least one model, or null for every model")
        if min(self.max_new_tokens, self.max_tokens, self.concurrency) < 1 or self.timeout <= 0 or self.retries < 0:
            raise FusecliError(
                "evaluate.judge: max_new_tokens, max_tokens and concurrency must be >= 1, timeout > 0, retries >= 0"
            )
        if self.temperature < 0:
            raise FusecliError("evaluate.judge.temperature must be >= 0 (MT-Bench judges at 0)")
        if (self.context is None) != (self.tokenizer is None):
            raise FusecliError(
                "evaluate.judge.context and evaluate.judge.tokenizer go together: set both (the judge's context "
                "in tokens and a folder with its tokenizer, to count each prompt's tokens), or both to null"
            )
        if self.context is not None and self.context <= self.max_tokens:
            raise FusecliError(f"evaluate.judge.context = {self.context} leaves no room for a prompt: it must be "
                               f"more than evaluate.judge.max_tokens ({self.max_tokens})")


@dataclass(frozen=True)
class EvalParams:
    batch_size: int
    max_new_tokens: int
    max_length: int
    device: str  # auto | cpu | cuda[:i]
    dtype: str  # auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16
    backend: Literal["native", "lm_eval", "judge"]
    lm_eval: LmEvalParams
    judge: JudgeParams

    def validate(self) -> None:
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise FusecliError("evaluate.batch_size and evaluate.max_new_tokens must be >= 1")
