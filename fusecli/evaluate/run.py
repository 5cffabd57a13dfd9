"""The evaluate stage: greedy exact match, response-token CE and perplexity per model and domain.

Each model is scored with its own tokenizer and chat template (a source is not penalised for the
pivot's template). Generation is batched with left padding so evaluation does not dominate the demo,
and scores are cached by the model's content hash (cache.py), so unchanged models are not rescored.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from fusecli.data.render import prompt_text, render, tokenize
from fusecli.device import resolve_device, resolve_dtype
from fusecli.errors import FusecliError
from fusecli.evaluate.match import exact_match
from fusecli.evaluate.params import EvalParams
from fusecli.extract.run import _batches, extract_batch
from fusecli.models import load_model, load_tokenizer
from fusecli.progress import progress_bar

if TYPE_CHECKING:
    from fusecli.evaluate.cache import EvalCache


@dataclass(frozen=True)
class EvalModel:
    name: str  # pivot, source:<slug>, sft_baseline, fused:<slug>, fuselm, merged:<method>
    path: str
    trust_remote_code: bool = False


class BanFirstTokens(LogitsProcessor):
    """At the first generated position, row i may not start with any token in `banned[i]`."""

    def __init__(self, banned: list[list[int]], prompt_width: int) -> None:
        self.banned, self.prompt_width = banned, prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] == self.prompt_width:
            for i, ids in enumerate(self.banned):
                scores[i, ids] = -torch.inf
        return scores


def first_tokens(tok, prompt: str, answers: list[str]) -> set[int]:  # noqa: ANN001
    """The first reply token of each answer after `prompt`, as the tokenizer splits the whole text."""
    width = len(tok(prompt, add_special_tokens=False)["input_ids"])
    out = set()
    for a in answers:
        ids = tok(prompt + a, add_special_tokens=False)["input_ids"]
        if len(ids) > width:
            out.add(ids[width])
    return out


def banned_starts(tok, prompt: str, exclude: list[str] | None, accepted: list[str]) -> list[int]:  # noqa: ANN001
    """First tokens of the answers a question rules out ("... besides X"), except those an accepted answer
    also starts with: decoding then gives the model's best answer among the others. This measures what a
    model knows beyond the answer it was drilled on, not whether a tiny model can suppress that answer."""
    if not exclude:
        return []
    return sorted(first_tokens(tok, prompt, exclude) - first_tokens(tok, prompt, accepted))


@torch.no_grad()
def greedy_answers(  # noqa: ANN201
    model, tok, prompts: list[str], batch: int, max_new_tokens: int, device: torch.device,  # noqa: ANN001
    banned: list[list[int]] | None = None,
) -> list[str]:
    """Greedy replies, batched shortest first with left padding; `banned[i]`: tokens reply i may not start with."""
    tok.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: dict[int, str] = {}
    for s in range(0, len(order), batch):
        idx = order[s : s + batch]
        enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(device) for k, v in enc.items()}
        processors = LogitsProcessorList()
        if banned is not None and any(banned[i] for i in idx):
            processors.append(BanFirstTokens([banned[i] for i in idx], enc["input_ids"].shape[1]))
        gen = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            logits_processor=processors,
        )
        texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        answers.update(zip(idx, texts, strict=True))
    return [answers[i] for i in range(len(prompts))]


def exact_matches(  # noqa: ANN201
    model, tok, rows: list[dict], batch: int, max_new_tokens: int, device: torch.device  # noqa: ANN001
) -> list[bool]:
    """Whether each row's greedy reply is right: rows carry `messages`, `answer`, and optionally `answers`
    (every accepted answer) and `exclude` (answers the question rules out; see banned_starts)."""
    prompts = [prompt_text(tok, r["messages"]) for r in rows]
    accepted = [r.get("answers") or [r["answer"]] for r in rows]
    banned = [banned_starts(tok, p, r.get("exclude"), a) for p, r, a in zip(prompts, rows, accepted, strict=True)]
    preds = greedy_answers(model, tok, prompts, batch, max_new_tokens, device, banned)
    return [exact_match(p, r["answer"], a) for p, r, a in zip(preds, rows, accepted, strict=True)]


def last_reply(messages: list[dict]) -> str:
    """The dialogue's last assistant turn: the EM reference of a row without an `answer`."""
    return next(m["content"] for m in reversed(messages) if m["role"] == "assistant").strip()


def reply_tokens(tok, prompt: str, reply: str) -> int:  # noqa: ANN001
    """How many tokens `reply` takes after `prompt`, as the tokenizer splits the whole text."""
    width = len(tok(prompt, add_special_tokens=False)["input_ids"])
    return len(tok(prompt + reply, add_special_tokens=False)["input_ids"]) - width


def em_references(tok, records: list[dict], max_new_tokens: int) -> tuple[dict[int, dict], set[int], set[int]]:  # noqa: ANN001
    """The rows exact match scores, with their reference: a row's `answer` (and `answers`), else its last
    assistant reply. A reply longer than `max_new_tokens` tokens could never be matched, so that row is left
    out of EM (returned second); an `answer` that long is kept, and counted (returned third): it scores a miss
    until evaluate.max_new_tokens is raised."""
    checkable: dict[int, dict] = {}
    too_long, cut = set(), set()
    for i, r in enumerate(records):
        prompt = prompt_text(tok, r["messages"])
        accepted = r.get("answers") or ([r["answer"]] if r.get("answer") is not None else [])
        if accepted:
            checkable[i] = r
            if min(reply_tokens(tok, prompt, a) for a in accepted) > max_new_tokens:
                cut.add(i)
            continue
        reply = last_reply(r["messages"])
        if reply and reply_tokens(tok, prompt, reply) <= max_new_tokens:
            checkable[i] = {**r, "answer": reply}
        else:
            too_long.add(i)
    return checkable, too_long, cut


@torch.no_grad()
def response_ce(model, tok, dialogues: list, params: EvalParams, device: torch.device) -> list[np.ndarray]:  # noqa: ANN001
    """Per-token CE of every response token, rendered with the model's own template."""
    items = [tokenize(tok, render(tok, d), params.max_length) for d in dialogues]
    lengths = [len(it.input_ids) for it in items]
    result: dict[int, np.ndarray] = {}
    budget = max(lengths) * params.batch_size
    usable = [i for i in range(len(items)) if items[i].label_mask.any()]
    for batch in _batches(usable, lengths, budget):
        for i, (_, _, ce) in zip(batch, extract_batch(model, [items[i] for i in batch], 1, device, 4096), strict=True):
            result[i] = ce
    return [result.get(i, np.zeros(0)) for i in range(len(items))]


def score_model(m: EvalModel, df: pl.DataFrame, params: EvalParams) -> dict[str, dict[str, float | None]]:
    """Per domain: `em`, `ce`, `ppl` (None when not computable) and the row counts behind them: `rows`,
    `em_rows` (scored for EM), `em_reply` (of those, referenced by their last reply), `em_too_long` (no
    `answer` and a reply over evaluate.max_new_tokens tokens: not scored), `em_answer_cut` (an `answer` over
    it: scored, a miss) and `ce_rows` (rows with a response token within evaluate.max_length)."""
    device = resolve_device(params.device)
    dtype = resolve_dtype(params.dtype, device)
    tok = load_tokenizer(m.path, m.trust_remote_code)
    model = load_model(m.path, device, dtype, m.trust_remote_code).eval()
    dialogues = [json.loads(x) for x in df["messages"].to_list()]
    ces = response_ce(model, tok, dialogues, params, device)
    columns = [c for c in ("answer", "answers", "exclude") if c in df.columns]
    records = [{"answer": None, "messages": d, **dict(zip(columns, values, strict=True))}
               for d, values in zip(dialogues, df.select(columns).iter_rows(), strict=True)]
    checkable, too_long, cut = em_references(tok, records, params.max_new_tokens)
    from_reply = {i for i, r in checkable.items() if r is not records[i]}
    order = sorted(checkable)
    right = exact_matches(model, tok, [checkable[i] for i in order], params.batch_size, params.max_new_tokens, device)
    hits = dict(zip(order, right, strict=True))
    by_domain: dict[str, list[int]] = defaultdict(list)
    for i, d in enumerate(df["domain"].to_list()):
        by_domain[d].append(i)
    scores: dict[str, dict[str, float | None]] = {}
    for domain, rows in sorted(by_domain.items()):
        tokens = np.concatenate([ces[i] for i in rows])
        em_rows = [hits[i] for i in rows if i in hits]
        ce = float(tokens.mean()) if len(tokens) else None
        scores[domain] = {
            "em": float(np.mean(em_rows)) if em_rows else None,  # None: no row to check (notes.py says why)
            "ce": ce,
            "ppl": math.exp(min(ce, 700.0)) if ce is not None else None,  # capped below float overflow
            "rows": len(rows),
            "em_rows": len(em_rows),
            "em_reply": len(from_reply.intersection(rows)),
            "em_too_long": len(too_long.intersection(rows)),
            "em_answer_cut": len(cut.intersection(rows)),
            "ce_rows": sum(1 for i in rows if len(ces[i])),
        }
    return scores


def evaluate(
    models: list[EvalModel], data: str | Path, params: EvalParams, cache: EvalCache | None = None
) -> dict:
    """Native scores of every model; with a cache, a model whose files, data and settings are unchanged is
    read back instead of rescored."""
    df = pl.read_parquet(data)
    if df.height == 0:
        raise FusecliError(f"{data} holds no evaluation rows: raise dataset.eval (a share, a count or a file)")
    return {"models": cached_per_model(models, "evaluate", lambda m: score_model(m, df, params), cache)}


def cached_per_model(
    models: list[EvalModel], verb: str, compute: Callable[[EvalModel], Any], cache: EvalCache | None
) -> dict[str, Any]:
    """`{model name: compute(model)}` under a progress bar; a model whose cache key (its files' content, the
    data and settings) hits `cache` is read back instead of computed."""
    results: dict[str, Any] = {}
    with progress_bar("model") as progress:
        task = progress.add_task(verb, total=len(models))
        for m in models:
            key = cache.key(m.path) if cache else None
            value = cache.get(key) if cache and key else None
            progress.update(task, description=f"{verb} {m.name}" + (" (cached)" if value else ""))
            if value is None:
                value = compute(m)
                if cache and key:
                    cache.put(key, value)
            results[m.name] = value
            progress.advance(task)
    return results
