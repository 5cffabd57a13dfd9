"""imf_sft and imf_dpo: the pivot trained on what the reward chose (FuseChat-3.0's two stages).

imf_sft is sft_baseline's training (fusecli/fuse/train.py, lambda = 1 on the reference one-hot, the same
`fuse` settings: same steps, batch, schedule) with the best sampled response per prompt as the reference,
rendered in the pivot's own template. imf_dpo continues from imf_sft with TRL's DPOTrainer on the
same-source best/worst pairs (fusecli/imf/pairs.py); the pivot's copy at the start is the reference model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from fusecli.data.render import render, tokenize
from fusecli.device import resolve_device, resolve_dtype
from fusecli.errors import FusecliError
from fusecli.fuse.data import Example
from fusecli.fuse.functions import reference_targets
from fusecli.fuse.train import (
    FuseParams,
    dvclive_callback,
    fit,
    run_key,
    sft_only,
    shared_args,
)
from fusecli.imf.pairs import Choice
from fusecli.imf.params import TrainParams
from fusecli.io import atomic_dir, atomic_write_json, remove_tree
from fusecli.models import load_model, load_tokenizer


def sft_examples(tokenizer: object, picked: list[Choice], max_length: int) -> list[Example]:
    """The pivot's tokens of each prompt with its chosen response, trained on every response token."""
    examples = []
    for c in picked:
        dialogue = [*json.loads(c.prompt), {"role": "assistant", "content": c.chosen}]
        tok = tokenize(tokenizer, render(tokenizer, dialogue), max_length)
        positions = np.nonzero(tok.label_mask)[0].astype(np.int64)
        if not len(positions):
            continue  # the prompt alone fills max_length
        ids, probs = reference_targets(tok.input_ids[positions])
        examples.append(Example(tok.input_ids.astype(np.int64), positions, ids, probs.astype(np.float32)))
    if not examples:
        raise FusecliError("no prompt has a scored response that fits imf.train.max_length: check the score stage's "
                           "output (every score null?) or raise imf.train.max_length")
    return examples


def choice_key(picked: list[Choice], fields: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for c in picked:
        h.update(json.dumps([getattr(c, f) for f in fields]).encode())
    return h.hexdigest()


def train_sft(pivot: str, picked: list[Choice], out: str, logs: str, params: FuseParams, max_length: int,
              stats: dict, trust_remote_code: bool = False) -> dict:
    """sft_baseline's training on the chosen responses; writes the HF model folder `out`."""
    params = sft_only(params)  # sft_baseline's fixed keys: the stage table hashes none of them
    device = resolve_device(params.device)
    tokenizer = load_tokenizer(pivot, trust_remote_code)
    model = load_model(pivot, torch.device("cpu"), torch.float32, trust_remote_code)
    examples = sft_examples(tokenizer, picked, max_length)
    key = run_key([], params, {"pivot": pivot, "imf_sft": choice_key(picked, ("prompt", "chosen")),
                               "max_length": max_length})
    return fit(model, tokenizer, examples, stats, key, out, logs, params, device)


NO_PAIRS = ("no preference pair lies in the reward-gap window: imf is imf_sft (lower imf.train.gap_min, raise "
            "imf.train.gap_max, or sample more with imf.sample.n)")


def keep_sft(start: str, out: str, logs: str, stats: dict) -> dict:
    """`out` = a copy of the SFT model `start` (not links: DVC may have linked `start` to its cache), with the
    warning recorded."""
    import shutil

    print(f"warning: imf_dpo: {NO_PAIRS}", file=sys.stderr)
    with atomic_dir(out) as tmp:
        shutil.copytree(start, tmp, dirs_exist_ok=True)
    summary = {**stats, "warning": NO_PAIRS, "steps": 0}
    atomic_write_json(Path(logs) / "selection.json", summary)
    return summary


def train_dpo(start: str, picked: list[Choice], out: str, logs: str, fuse: FuseParams, dpo: TrainParams,
              stats: dict, trust_remote_code: bool = False) -> dict:
    """TRL's DPOTrainer from `start` (imf_sft) on the pairs of `picked`; writes the HF model folder `out`."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    pairs = [c for c in picked if c.rejected is not None]
    if not pairs:  # nothing to prefer: imf is imf_sft, said in the log and in selection.json (the report's input)
        return keep_sft(start, out, logs, stats)
    rows = [{"prompt": json.loads(c.prompt), "chosen": [{"role": "assistant", "content": c.chosen}],
             "rejected": [{"role": "assistant", "content": c.rejected}]} for c in pairs]
    device = resolve_device(fuse.device)
    dtype = resolve_dtype(fuse.dtype, device)
    tokenizer = load_tokenizer(start, trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = load_model(start, torch.device("cpu"), torch.float32, trust_remote_code)
    pair_key = choice_key(pairs, ("prompt", "chosen", "rejected"))
    key = run_key([Path(start)], fuse, {"dpo": dataclasses.asdict(dpo), "pairs": pair_key})
    scratch = Path(fuse.scratch) / f"dpo-{key}"
    args = DPOConfig(
        output_dir=str(scratch),
        **shared_args(fuse, device, dtype),
        learning_rate=dpo.learning_rate,
        num_train_epochs=dpo.epochs,
        max_steps=dpo.max_steps,
        beta=dpo.beta,
        loss_type=[dpo.loss_type],
        max_length=dpo.max_length,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer)
    trainer.add_callback(dvclive_callback(logs))
    result = trainer.train()
    if not trainer.is_world_process_zero():
        return {}
    with atomic_dir(out) as tmp:
        trainer.save_model(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle: never ship one
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    summary = {**stats, "train_loss": float(np.mean(losses)) if losses else None, "steps": trainer.state.global_step,
               "train_runtime_s": result.metrics.get("train_runtime", 0.0)}
    atomic_write_json(Path(logs) / "selection.json", summary)
    remove_tree(scratch)
    return summary
