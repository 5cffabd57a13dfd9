"""Top-K next-token log-probabilities and gold-token CE from final hidden states, chunk by chunk.

Full-vocabulary logits are only ever formed for `chunk` rows at a time (152K-vocabulary fp32 logits
for a whole batch of 2048-token sequences would be tens of GB); the log-normaliser is exact.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def topk_logprobs(
    hidden: torch.Tensor,
    lm_head: torch.nn.Module,
    gold: torch.Tensor,
    k: int,
    chunk: int = 4096,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden [N, H] at positions t-1, gold [N] = token t. Returns (ids [N,K], logp [N,K] fp32, ce [N] fp32).

    The log-softmax is taken in fp32 over the full vocabulary for each row chunk.
    """
    ids, logps, ces = [], [], []
    for s in range(0, hidden.shape[0], chunk):
        logits = lm_head(hidden[s : s + chunk]).float()
        if softcap is not None:
            logits = torch.tanh(logits / softcap) * softcap
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        top_val, top_id = torch.topk(logits, k, dim=-1)
        gold_logit = logits.gather(-1, gold[s : s + chunk, None])
        ids.append(top_id)
        logps.append(top_val - lse)
        ces.append((lse - gold_logit).squeeze(-1))
    return torch.cat(ids), torch.cat(logps), torch.cat(ces)


def final_hidden(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The decoder's last hidden states, without running the LM head over every position."""
    base = getattr(model, model.base_model_prefix)
    out = base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state


def softcap_of(model: torch.nn.Module) -> float | None:
    cfg = model.config
    return getattr(getattr(cfg, "text_config", None) or cfg, "final_logit_softcapping", None)
