"""Deterministic supervised fine-tuning of a tiny causal LM on chat rows, loss on response tokens only.

The demo experts are trained from scratch on their own relations; the data order, the initialisation
and every update depend only on the seed, so a rebuild gives the same weights on the same machine.

A row with several accepted `answers` (a set-valued question) is trained toward all of them at once:
its first response token's target is uniform over the answers' first tokens (they differ: the demo's
pools differ in first letter), the rest follows the row's own answer. One row then teaches the whole
set, which a tiny model learns in a third of the steps that one row per member would take.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fusecli.data.render import render, tokenize


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int
    weight_decay: float
    seed: int


@dataclass
class Encoded:
    ids: torch.Tensor  # [N, T] right-padded
    labels: torch.Tensor  # [N, T]: token id where token t is a response token, else -100
    lengths: torch.Tensor  # [N]
    first: torch.Tensor  # [N]: position of the first response token
    first_ids: torch.Tensor  # [N, M]: first token of every accepted answer (-1: padding)


def first_token(tokenizer: object, messages: list[dict], answer: str) -> int:
    """The first response token of `messages` with its last reply replaced by `answer`."""
    other = [*messages[:-1], {**messages[-1], "content": answer}]
    t = tokenize(tokenizer, render(tokenizer, other))
    return int(t.input_ids[int(np.argmax(t.label_mask))])


def encode_rows(tokenizer: object, rows: Sequence[dict]) -> Encoded:
    """Right-padded tokens and labels of all rows, with the first-token targets of set-valued rows."""
    encoded = [tokenize(tokenizer, render(tokenizer, r["messages"])) for r in rows]
    width = max(len(e.input_ids) for e in encoded)
    pad = tokenizer.pad_token_id  # type: ignore[attr-defined]
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    lengths = torch.tensor([len(e.input_ids) for e in encoded])
    firsts, answer_ids = [], []
    for i, (row, e) in enumerate(zip(rows, encoded, strict=True)):
        n = len(e.input_ids)
        ids[i, :n] = torch.from_numpy(e.input_ids)
        # labels[t] = token t where t is a response token; the model shifts, so position t-1 predicts it
        labels[i, :n] = torch.where(torch.from_numpy(e.label_mask), ids[i, :n], -100)
        firsts.append(int(np.argmax(e.label_mask)))
        answers = row.get("answers") or [row["messages"][-1]["content"]]
        answer_ids.append(sorted({first_token(tokenizer, row["messages"], a) for a in answers}))
    m = max(len(a) for a in answer_ids)
    first_ids = torch.tensor([a + [-1] * (m - len(a)) for a in answer_ids], dtype=torch.long)
    return Encoded(ids, labels, lengths, torch.tensor(firsts), first_ids)


def response_loss(model: torch.nn.Module, enc: Encoded, batch: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over response tokens; at each row's first response token the target is uniform
    over its accepted answers' first tokens. The head runs only where a label exists.

    Rows are right-padded and attention is causal, so no real token ever attends to padding and no
    attention mask is needed. Skipping the head on prompt positions saves most of its cost.
    """
    width = int(enc.lengths[batch].max())  # crop the padding this batch does not need
    ids, labels, first = enc.ids[batch, :width], enc.labels[batch, :width].clone(), enc.first[batch]
    rows = torch.arange(len(batch))
    labels[rows, first] = -100  # the first response token gets the soft target below
    hidden = model.base_model(input_ids=ids).last_hidden_state  # type: ignore[attr-defined]
    head = model.get_output_embeddings()  # type: ignore[attr-defined]
    targets = labels[:, 1:]
    keep = targets != -100
    logp = F.log_softmax(head(torch.cat([hidden[:, :-1][keep], hidden[rows, first - 1]])), dim=-1)
    n_rest = int(keep.sum())
    rest = -logp[:n_rest].gather(-1, targets[keep][:, None]).squeeze(-1)
    choice = enc.first_ids[batch]
    valid = choice >= 0
    soft = -(logp[n_rest:].gather(-1, choice.clamp_min(0)) * valid).sum(-1) / valid.sum(-1)
    return torch.cat([rest, soft]).mean()


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(
    model: torch.nn.Module,
    tokenizer: object,
    rows: Sequence[dict],
    cfg: TrainConfig,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Train `model` in place; returns the final mean loss, steps/s and wall time."""
    enc = encode_rows(tokenizer, rows)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    model.train()
    order = torch.empty(0, dtype=torch.long)
    recent: list[float] = []
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        if len(order) < cfg.batch_size:  # a fresh permutation per epoch, drawn from the seeded generator
            order = torch.cat([order, torch.randperm(len(rows), generator=gen)])
        batch, order = order[: cfg.batch_size], order[cfg.batch_size :]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = response_loss(model, enc, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent = (recent + [loss.item()])[-50:]
        if (step + 1) % max(1, cfg.steps // 5) == 0 or step + 1 == cfg.steps:
            rate = (step + 1) / (time.perf_counter() - t0)
            log(f"step {step + 1}/{cfg.steps} loss {sum(recent) / len(recent):.4f} ({rate:.1f} steps/s)")
    seconds = time.perf_counter() - t0
    model.eval()
    return {"loss": sum(recent) / len(recent), "seconds": seconds, "steps_per_s": cfg.steps / seconds}
