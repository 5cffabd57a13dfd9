"""The `evaluate` section of params.yaml (every key is in params.yaml: the values live there, not here)."""

from __future__ import annotations

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
class EvalParams:
    batch_size: int
    max_new_tokens: int
    max_length: int
    device: str  # auto | cpu | cuda[:i]
    dtype: str  # auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16
    backend: Literal["native", "lm_eval"]
    lm_eval: LmEvalParams

    def validate(self) -> None:
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise FusecliError("evaluate.batch_size and evaluate.max_new_tokens must be >= 1")
