"""The `imf` section of params.yaml: `sample` and `train` (docs/imf.md); `score` lives beside the rewards it
names (fusecli/imf/rewards.py), so sampling and training do not depend on the reward code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from fusecli.config import from_dict, read_yaml
from fusecli.errors import FusecliError

T = TypeVar("T")


def load_imf(cls: type[T], key: str, params: str | Path = "params.yaml") -> T:
    """`imf.<key>` of params.yaml as `cls` (every key required: params.yaml holds the values)."""
    data = read_yaml(params)
    if not isinstance(data.get("imf"), dict) or key not in data["imf"]:
        raise FusecliError(f"{params} has no imf.{key} section: add it (see params.yaml in the repository)")
    return from_dict(cls, data["imf"][key], f"imf.{key}", complete=True)

BACKENDS = ("transformers", "vllm")  # vllm: GPU only, where installed


@dataclass(frozen=True)
class SampleParams:
    """sample@<slug>: `n` seeded responses per training prompt from one source, in its own chat template."""

    n: int  # responses per prompt and source (FuseChat-3.0: 5)
    temperature: float
    top_p: float
    max_new_tokens: int
    batch_size: int  # prompts per generate call
    seed: int
    backend: str  # transformers | vllm
    device: str
    dtype: str

    def validate(self) -> None:
        if self.n < 2:
            raise FusecliError(f"imf.sample.n = {self.n} must be >= 2: the preference stage pairs a source's best "
                               "and worst responses")
        if self.temperature <= 0:
            raise FusecliError(f"imf.sample.temperature = {self.temperature} must be > 0 (sampling, not greedy)")
        if not 0 < self.top_p <= 1:
            raise FusecliError(f"imf.sample.top_p = {self.top_p} must be within (0, 1]")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise FusecliError("imf.sample.max_new_tokens and imf.sample.batch_size must be >= 1")
        if self.backend not in BACKENDS:
            raise FusecliError(f"imf.sample.backend = {self.backend!r} is unknown: use one of {list(BACKENDS)}")


@dataclass(frozen=True)
class TrainParams:
    """imf_sft reads `max_length`; imf_dpo every key: TRL's DPOTrainer from imf_sft on best/worst pairs of one source.

    A pair is kept when its reward gap lies in [gap_min, gap_max] (FuseChat-3.0's window: too small a gap is
    noise, too large an easy pair; the bounds depend on the reward's scale). Batch, seed and the optimizer
    settings are fuse's, so SFT and DPO share one budget's shape.
    """

    max_length: int  # tokens of prompt and response the pivot trains on
    loss_type: str  # TRL's; sigmoid_norm: the length-normalised DPO loss FuseChat-3.0 trains with
    beta: float
    gap_min: float
    gap_max: float | None  # null: no upper bound
    learning_rate: float
    epochs: float
    max_steps: int

    def validate(self) -> None:
        if self.max_length < 8:
            raise FusecliError(f"imf.train.max_length = {self.max_length} must be >= 8 tokens")
        if self.loss_type not in LOSS_TYPES:
            raise FusecliError(f"imf.train.loss_type = {self.loss_type!r} is unknown: use one of {sorted(LOSS_TYPES)}")
        if self.beta <= 0:
            raise FusecliError(f"imf.train.beta = {self.beta} must be > 0")
        if self.gap_min < 0 or (self.gap_max is not None and self.gap_max < self.gap_min):
            raise FusecliError(f"imf.train gap window [{self.gap_min}, {self.gap_max}] is empty or negative: "
                               "set 0 <= gap_min <= gap_max (or gap_max: null)")
        if self.learning_rate <= 0:
            raise FusecliError(f"imf.train.learning_rate = {self.learning_rate} must be > 0")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise FusecliError("imf.train.epochs or imf.train.max_steps must be > 0")


# TRL 1.16's DPOConfig.loss_type values (trl/trainer/dpo_config.py)
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
