"""Deterministic supervised fine-tuning of a tiny causal LM on chat rows, loss on response tokens only.

The demo experts are trained from scratch on their own relation; the data order, the initialisation
and every update depend only on the seed, so a rebuild gives the same weights on the same machine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


def encode_rows(tokenizer: object, rows: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input_ids, labels (-100 outside assistant turns) and lengths for all rows."""
    encoded = [tokenize(tokenizer, render(tokenizer, r["messages"])) for r in rows]
    width = max(len(e.input_ids) for e in encoded)
    pad = tokenizer.pad_token_id  # type: ignore[attr-defined]
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    lengths = torch.tensor([len(e.input_ids) for e in encoded])
    for i, e in enumerate(encoded):
        n = len(e.input_ids)
        ids[i, :n] = torch.from_numpy(e.input_ids)
        # labels[t] = token t where t is a response token; the model shifts, so position t-1 predicts it
        labels[i, :n] = torch.where(torch.from_numpy(e.label_mask), ids[i, :n], -100)
    return ids, labels, lengths


def response_loss(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over response tokens, the output head applied only where a label exists.

    Rows are right-padded and attention is causal, so no real token ever attends to padding and no
    attention mask is needed. Skipping the head on prompt positions saves most of its cost.
    """
    hidden = model.base_model(input_ids=ids).last_hidden_state  # type: ignore[attr-defined]
    targets = labels[:, 1:]
    keep = targets != -100
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])  # type: ignore[attr-defined]
    return F.cross_entropy(logits, targets[keep])


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
    ids, labels, lengths = encode_rows(tokenizer, rows)
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
        width = int(lengths[batch].max())  # crop the padding this batch does not need
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = response_loss(model, ids[batch, :width], labels[batch, :width])
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
