"""Top-K next-token log-probabilities and gold-token CE from final hidden states, chunk by chunk.

Full-vocabulary logits are only ever formed for `chunk` rows at a time (152K-vocabulary fp32 logits
for a whole batch of 2048-token sequences would be tens of GB); the log-normaliser is exact (fp32
accumulation over the logits as the LM head produced them: bf16 on GPU).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from fusecli.extract.onepass import onepass_row_stats


def row_stats(logits: torch.Tensor, gold: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top-K ids, their log-probabilities, CE of `gold`) of logits [N, V], in fp32.

    Top-K runs on the logits' own dtype (upcasting bf16 to fp32 changes no value or order).
    """
    lse = torch.logsumexp(logits.float(), dim=-1, keepdim=True)
    top_val, top_id = torch.topk(logits, k, dim=-1)
    gold_logit = logits.gather(-1, gold[:, None]).float()
    return top_id, top_val.float() - lse, (lse - gold_logit).squeeze(-1)


@functools.cache
def compiled_row_stats() -> Callable:
    """`row_stats` compiled: the upcast, max and sum-exp become one fused pass over the bf16 logits
    instead of ~6 eager passes over an fp32 copy; at 152K vocabulary that traffic otherwise rivals a
    0.5B model's whole forward."""
    return torch.compile(row_stats, dynamic=True)


# How the head's per-row statistics are computed: eager (CPU, tests), compiled (the torch pass on CUDA),
# onepass (one read of the logits, Triton on CUDA: fusecli/extract/onepass.py).
HEADS: dict[str, Callable[[], Callable]] = {
    "eager": lambda: row_stats,
    "compiled": compiled_row_stats,
    "onepass": lambda: onepass_row_stats,
}


@torch.no_grad()
def topk_logprobs(
    hidden: torch.Tensor,
    lm_head: torch.nn.Module,
    gold: torch.Tensor,
    k: int,
    chunk: int = 4096,
    softcap: float | None = None,
    head: str = "eager",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden [N, H] at positions t-1, gold [N] = token t. Returns (ids [N,K], logp [N,K] fp32, ce [N] fp32).

    `head` names the row statistics in HEADS."""
    stats = HEADS[head]()
    ids, logps, ces = [], [], []
    for s in range(0, hidden.shape[0], chunk):
        logits = lm_head(hidden[s : s + chunk])
        if softcap is not None:
            logits = torch.tanh(logits.float() / softcap) * softcap
        top_id, top_lp, ce = stats(logits, gold[s : s + chunk].to(logits.device), k)
        ids.append(top_id)
        logps.append(top_lp)
        ces.append(ce)
    return torch.cat(ids), torch.cat(logps), torch.cat(ces)


def final_hidden(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The decoder's last hidden states, without running the LM head over every position.

    Pass no mask for right-padded batches of causal models: real tokens never attend to the padding
    after them, and the unmasked call keeps the fused causal attention kernels.
    """
    base = getattr(model, model.base_model_prefix)
    out = base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state


def softcap_of(model: torch.nn.Module) -> float | None:
    cfg = model.config
    return getattr(getattr(cfg, "text_config", None) or cfg, "final_logit_softcapping", None)
