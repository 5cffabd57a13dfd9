"""The `imf` section of params.yaml: sampling, scoring and the preference stage (docs/imf.md)."""

from __future__ import annotations

from dataclasses import dataclass

from fusecli.errors import FusecliError

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
class ScoreParams:
    """score: the reward every response gets; `reward_model` is read only by reward: reward_model."""

    reward: str  # a name in rewards.REWARDS: rule | judge | reward_model
    reward_model: str | None  # a local sequence-classification model folder
    batch_size: int
    device: str
    dtype: str

    def validate(self) -> None:
        from fusecli.imf.rewards import REWARDS

        if self.reward not in REWARDS:
            raise FusecliError(f"imf.score.reward = {self.reward!r} is unknown: use one of {sorted(REWARDS)}")
        if self.reward == "reward_model" and not self.reward_model:
            raise FusecliError("imf.score.reward is reward_model but imf.score.reward_model is null: "
                               "give the folder of a sequence-classification reward model")
        if self.batch_size < 1:
            raise FusecliError(f"imf.score.batch_size = {self.batch_size} must be >= 1")


@dataclass(frozen=True)
class DpoParams:
    """imf_dpo: TRL's DPOTrainer from imf_sft on best/worst pairs of the same source.

    A pair is kept when its reward gap lies in [gap_min, gap_max] (FuseChat-3.0's window: too small a gap is
    noise, too large an easy pair; the bounds depend on the reward's scale). Batch, seed and the optimizer
    settings are fuse's, so SFT and DPO share one budget's shape.
    """

    loss_type: str  # TRL's; sigmoid_norm: the length-normalised DPO loss FuseChat-3.0 trains with
    beta: float
    gap_min: float
    gap_max: float | None  # null: no upper bound
    learning_rate: float
    epochs: float
    max_steps: int

    def validate(self) -> None:
        if self.loss_type not in LOSS_TYPES:
            raise FusecliError(f"imf.dpo.loss_type = {self.loss_type!r} is unknown: use one of {sorted(LOSS_TYPES)}")
        if self.beta <= 0:
            raise FusecliError(f"imf.dpo.beta = {self.beta} must be > 0")
        if self.gap_min < 0 or (self.gap_max is not None and self.gap_max < self.gap_min):
            raise FusecliError(f"imf.dpo gap window [{self.gap_min}, {self.gap_max}] is empty or negative: "
                               "set 0 <= gap_min <= gap_max (or gap_max: null)")
        if self.learning_rate <= 0:
            raise FusecliError(f"imf.dpo.learning_rate = {self.learning_rate} must be > 0")
        if self.epochs <= 0 and self.max_steps <= 0:
            raise FusecliError("imf.dpo.epochs or imf.dpo.max_steps must be > 0")


@dataclass(frozen=True)
class ImfParams:
    """The whole `imf` section; each stage lists in dvc.yaml only the keys it reads."""

    sample: SampleParams
    score: ScoreParams
    max_length: int  # tokens of prompt and response the pivot trains on (imf_sft and imf_dpo)
    dpo: DpoParams

    def validate(self) -> None:
        if self.max_length < 8:
            raise FusecliError(f"imf.max_length = {self.max_length} must be >= 8 tokens")


# TRL 1.16's DPOConfig.loss_type values (trl/trainer/dpo_config.py)
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
