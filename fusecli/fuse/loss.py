"""The pair-fusion loss, computed sparsely: L = lambda * L_SFT + (1 - lambda) * L_fuse (docs/method.md, stage 4).

L_fuse = sum_t m_t * (-sum_v q_t,v log p(v | x_<t)) / sum_t m_t, where the target q_t has at most M
non-zero entries (the teachers' top-K ids). log p is gathered at those ids from row chunks of logits
(recomputed in backward), so neither dense |V|-sized targets nor fp32 logits for the whole batch
ever exist.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint


def _chunk_sums(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    gold: torch.Tensor,
    target_ids: torch.Tensor,
    target_probs: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(hidden).float()
    lse = torch.logsumexp(logits, dim=-1)
    sft = (lse - logits.gather(-1, gold[:, None]).squeeze(-1)).sum()
    logp = logits.gather(-1, target_ids.clamp_min(0)) - lse[:, None]
    fuse = -(target_probs * logp).sum()
    return sft, fuse


def sparse_losses(
    hidden: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    gold: torch.Tensor,
    target_ids: torch.Tensor,
    target_probs: torch.Tensor,
    chunk: int = 2048,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean SFT CE and mean fusion CE over N response rows.

    hidden [N, H] at position t-1; head: the LM head module (called, so ZeRO-3 can gather it);
    gold [N] = token t; target_ids [N, M] (-1 = padding); target_probs [N, M] (rows sum to 1, 0 at padding).
    """
    n = hidden.shape[0]
    sft = hidden.new_zeros((), dtype=torch.float32)
    fuse = hidden.new_zeros((), dtype=torch.float32)
    for s in range(0, n, chunk):
        e = s + chunk
        args = (hidden[s:e], head, gold[s:e], target_ids[s:e], target_probs[s:e])
        if torch.is_grad_enabled() and hidden.requires_grad:
            a, b = checkpoint(_chunk_sums, *args, use_reentrant=False)
        else:
            a, b = _chunk_sums(*args)
        sft, fuse = sft + a, fuse + b
    denom = max(n, 1)
    return sft / denom, fuse / denom


def combine(sft: torch.Tensor, fuse: torch.Tensor, lam: float) -> torch.Tensor:
    """lambda weighs the SFT term; lambda = 1 is plain SFT (the sft_baseline)."""
    if lam == 1.0:
        return sft
    return lam * sft + (1.0 - lam) * fuse
