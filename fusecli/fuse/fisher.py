"""What each pair model's own knowledge depends on: its diagonal Fisher on the sequences its source taught.

A pair model (fuse@<slug>) learnt its source on the sequences the fusion function gave to the source
(MinCE: where the source's CE beat the pivot's) and only kept the pivot's behaviour elsewhere. The merge
method `fisher_gate` (fusecli/merge/methods/fisher_gate.py) needs to know, per parameter, how much that
new knowledge depends on it:

    F[p] = sum_s w_s (d/dp sum_t log q(y_t | x_<t))^2 / sum_s w_s

over the taught sequences s (w_s: the source's weight in the fused target of s, 1 under MinCE), at each
response position t, with y_t the pair model's own greedy token there (what it now says, members no
reference names included; the sequence's reference token would measure only what the references say).
One backward pass per sequence, at most `fisher.sequences` sequences (a seeded draw). The output is a
folder shaped like the model's (config.json, model.safetensors with the same tensor names), so the merge
reads it block by block exactly as it reads the weights.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fusecli.errors import FusecliError
from fusecli.fuse.data import Example
from fusecli.io import atomic_dir, atomic_write_json
from fusecli.models import load_model, resolve_device, resolve_dtype
from fusecli.progress import progress_bar

WEIGHTS = "model.safetensors"
SUMMARY = "fisher.json"


@dataclass(frozen=True)
class FisherParams:
    """params.yaml `fisher`: the statistics stage fisher@<slug> (read by merge methods that weigh by them)."""

    sequences: int  # at most this many taught sequences per pair model (a seeded draw when there are more)
    seed: int
    device: str  # auto | cpu | cuda

    def validate(self) -> None:
        if self.sequences < 1:
            raise FusecliError(f"fisher.sequences = {self.sequences} must be >= 1: the sequences per pair model")


def taught(examples: list[Example], seed: int, limit: int) -> tuple[list[int], np.ndarray]:
    """Indices of the examples a source taught (its weight in the fused target > 0) and their weights, at most
    `limit` of them, drawn with `seed` when there are more."""
    weights = np.array([ex.source_weight for ex in examples], dtype=np.float64)
    chosen = np.flatnonzero(weights > 0)
    if len(chosen) > limit:
        chosen = np.sort(np.random.default_rng(seed).choice(chosen, size=limit, replace=False))
    return chosen.tolist(), weights[chosen]


def own_token_logprob(model: torch.nn.Module, ex: Example, device: torch.device) -> torch.Tensor:
    """sum_t log q(y_t | x_<t) at the response positions, y_t the model's own greedy token."""
    ids = torch.as_tensor(ex.input_ids, device=device)[None]
    pos = torch.as_tensor(ex.positions, device=device)
    logits = model(input_ids=ids).logits[0, pos - 1].float()
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(-1, logp.argmax(-1, keepdim=True).detach()).sum()


def diag_fisher(
    model: torch.nn.Module, examples: list[Example], weights: np.ndarray, device: torch.device
) -> dict[str, torch.Tensor]:
    """The weighted mean over `examples` of each parameter's squared gradient of `own_token_logprob`,
    keyed by parameter name (float32, on the CPU)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    total = float(weights.sum())
    if total <= 0:
        raise FusecliError("no taught sequence has a positive weight: nothing to measure")
    with progress_bar("seq") as bar:
        task = bar.add_task("fisher", total=len(examples))
        for ex, w in zip(examples, weights, strict=True):
            model.zero_grad(set_to_none=True)
            own_token_logprob(model, ex, device).backward()
            for n, p in params.items():
                if p.grad is not None:
                    fisher[n].add_(p.grad.float().square(), alpha=float(w) / total)
            bar.advance(task)
    return {n: f.cpu() for n, f in fisher.items()}


def stored_names(folder: Path) -> list[str]:
    """The tensor names in the model folder's safetensors (a tied lm_head is stored once, as the embedding)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return sorted(json.loads(index.read_text())["weight_map"])
    with safe_open(str(folder / WEIGHTS), framework="pt") as f:
        return sorted(f.keys())


def write_fisher(out: str | Path, model_folder: Path, model: torch.nn.Module, fisher: dict[str, torch.Tensor],
                 summary: dict, dtype: torch.dtype = torch.float32) -> None:  # fmt: skip
    """`out` as a model-shaped folder: config.json and the Fisher under each stored tensor's own name, in
    `dtype` (bfloat16 keeps float32's range, so no value underflows to 0 as it would in float16)."""
    by_name = dict(model.state_dict(keep_vars=True))
    ids = {id(p): n for n, p in model.named_parameters()}
    tensors = {}
    for name in stored_names(model_folder):
        param = by_name.get(name)
        if param is None or id(param) not in ids:
            raise FusecliError(f"{model_folder}: stored tensor {name!r} is no parameter of the loaded model")
        tensors[name] = fisher[ids[id(param)]].to(dtype).contiguous()
    with atomic_dir(out) as tmp:
        shutil.copy2(model_folder / "config.json", tmp / "config.json")
        save_file(tensors, str(tmp / WEIGHTS), {"format": "pt", "content": "diagonal fisher"})
        atomic_write_json(tmp / SUMMARY, summary)


def run(model_folder: str | Path, examples: list[Example], params: FisherParams, out: str | Path,
        trust_remote_code: bool = False) -> dict:  # fmt: skip
    """Measure the pair model at `model_folder` on the sequences its source taught; write `out`."""
    index, weights = taught(examples, params.seed, params.sequences)
    device = resolve_device(params.device)
    dtype = resolve_dtype("auto", device)  # float32 on CPU, bfloat16 on GPUs (a 7B model, its gradients fit)
    model = load_model(model_folder, device, dtype, trust_remote_code).eval()
    if index:
        fisher = diag_fisher(model, [examples[i] for i in index], weights, device)
    else:  # nothing new to keep: a zero importance, so fisher_gate adds this pair's change only where no pair
        # needs the parameter (the fuse log and the report already warn that the source taught nothing)
        fisher = {n: torch.zeros_like(p, dtype=torch.float32, device="cpu") for n, p in model.named_parameters()}
    summary = {
        "sequences": len(index),
        "taught": int(sum(ex.source_weight > 0 for ex in examples)),
        "of": len(examples),
        "response_tokens": int(sum(len(examples[i].positions) for i in index)),
        "labels": "the model's own greedy token",
        "seed": params.seed,
    }
    stored = torch.float32 if dtype == torch.float32 else torch.bfloat16
    write_fisher(out, Path(model_folder), model, fisher, summary, stored)
    return summary
