"""Rewards for the score stage, one registry: `imf.score.reward` names one.

A reward rates responses to prompts. `config()` is everything besides the response that decides a score (the
cache key, with `reads(item)`: the parts of the item it looks at); `score(items)` returns one float per item,
or None where it cannot rate one (counted and reported; never chosen).
- `rule`: data with checkable answers: 1 if the response is an accepted answer (fusecli/evaluate/match.py,
  the membership check of the demo's set-valued questions), else 0.
- `judge`: an LLM behind the OpenAI-compatible endpoint of `evaluate.judge`, MT-Bench's 1-10 rating.
- `reward_model`: a local sequence-classification model's score of the dialogue in its own chat template.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from fusecli.errors import FusecliError
from fusecli.evaluate.match import exact_match


@dataclass(frozen=True)
class ScoreParams:
    """score: the reward every response gets; `reward_model` is read only by reward: reward_model."""

    reward: str  # a name in rewards.REWARDS: rule | judge | reward_model
    reward_model: str | None  # a local sequence-classification model folder
    batch_size: int
    device: str
    dtype: str

    def validate(self) -> None:
        if self.reward not in REWARDS:
            raise FusecliError(f"imf.score.reward = {self.reward!r} is unknown: use one of {sorted(REWARDS)}")
        if self.reward == "reward_model" and not self.reward_model:
            raise FusecliError("imf.score.reward is reward_model but imf.score.reward_model is null: "
                               "give the folder of a sequence-classification reward model")
        if self.batch_size < 1:
            raise FusecliError(f"imf.score.batch_size = {self.batch_size} must be >= 1")


@dataclass(frozen=True)
class Item:
    prompt: list[dict[str, str]]  # the messages before the response
    response: str
    answer: str | None  # the row's checkable answer, if any
    answers: list[str] | None  # every accepted answer


class Reward(Protocol):
    def config(self) -> dict[str, Any]: ...
    def reads(self, item: Item) -> dict[str, Any]: ...
    def score(self, items: list[Item]) -> list[float | None]: ...


REWARDS: dict[str, Callable[[ScoreParams, str], Reward]] = {}  # name -> factory(score params, params.yaml path)


def register(name: str) -> Callable:
    def wrap(factory: Callable[[ScoreParams, str], Reward]) -> Callable[[ScoreParams, str], Reward]:
        REWARDS[name] = factory
        return factory

    return wrap


@register("rule")
class RuleReward:
    """1.0 for an accepted answer, 0.0 otherwise; None for a row with no checkable answer."""

    def __init__(self, params: ScoreParams, params_file: str) -> None:
        pass

    def config(self) -> dict[str, Any]:
        return {"reward": "rule"}

    def reads(self, item: Item) -> dict[str, Any]:
        return {"prompt": item.prompt, "response": item.response, "answer": item.answer, "answers": item.answers}

    def score(self, items: list[Item]) -> list[float | None]:
        return [None if it.answer is None else float(exact_match(it.response, it.answer, it.answers))
                for it in items]


@register("judge")
class JudgeReward:
    """MT-Bench's single-answer rating (1-10) by the judge of `evaluate.judge`; a reply without one is None."""

    def __init__(self, params: ScoreParams, params_file: str) -> None:
        from fusecli.config import load_section
        from fusecli.evaluate.params import EvalParams

        self.judge = load_section(EvalParams, "evaluate", params_file).judge

    def config(self) -> dict[str, Any]:
        j = self.judge
        return {"reward": "judge", "base_url": j.base_url, "model": j.model, "max_tokens": j.max_tokens,
                "temperature": j.temperature}

    def reads(self, item: Item) -> dict[str, Any]:
        return {"prompt": item.prompt, "response": item.response}

    def score(self, items: list[Item]) -> list[float | None]:
        from fusecli.evaluate.judge.client import Judge
        from fusecli.evaluate.judge.grade import parse_rating
        from fusecli.evaluate.judge.prompts import single_messages
        from fusecli.evaluate.judge.questions import Question

        client = Judge(self.judge)

        def rate(it: Item) -> float | None:
            users = [m["content"] for m in it.prompt if m["role"] == "user"]
            earlier = [m["content"] for m in it.prompt if m["role"] == "assistant"]
            q = Question(question_id="imf", category="imf", turns=tuple(users), reference=None)
            return parse_rating(client.reply(single_messages(q, [*earlier, it.response], len(users) - 1)))

        with ThreadPoolExecutor(self.judge.concurrency) as pool:
            return list(pool.map(rate, items))


@register("reward_model")
class ModelReward:
    """The first logit of a sequence-classification reward model (Skywork-Reward, ArmoRM's score head)."""

    def __init__(self, params: ScoreParams, params_file: str) -> None:
        self.params = params

    def config(self) -> dict[str, Any]:
        from pathlib import Path

        from fusecli.hashing import content_hash

        path = Path(self.params.reward_model or "")
        if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
            raise FusecliError(f"imf.score.reward_model = {str(path)!r} is not a model folder with safetensors "
                               "weights: give the local folder of a sequence-classification reward model")
        return {"reward": "reward_model", "model": content_hash(path), "dtype": self.params.dtype}

    def reads(self, item: Item) -> dict[str, Any]:
        return {"prompt": item.prompt, "response": item.response}

    def score(self, items: list[Item]) -> list[float | None]:
        import torch
        from transformers import AutoModelForSequenceClassification

        from fusecli.device import resolve_device, resolve_dtype
        from fusecli.tokenizer import load_tokenizer

        p = self.params
        device = resolve_device(p.device, "imf.score.device")
        tok = load_tokenizer(p.reward_model, False)
        model = AutoModelForSequenceClassification.from_pretrained(
            p.reward_model, dtype=resolve_dtype(p.dtype, device), use_safetensors=True).to(device).eval()
        tok.padding_side = "right"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        model.config.pad_token_id = tok.pad_token_id
        texts = [tok.apply_chat_template([*it.prompt, {"role": "assistant", "content": it.response}],
                                         tokenize=False) for it in items]
        out: list[float | None] = []
        with torch.no_grad():
            for s in range(0, len(texts), p.batch_size):
                enc = tok(texts[s : s + p.batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
                logits = model(**{k: v.to(device) for k, v in enc.items()}).logits
                out += [float(x) for x in logits[:, 0].float().cpu()]
        return out
