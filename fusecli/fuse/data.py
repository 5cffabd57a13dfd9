"""Training examples for pair fusion: the pivot's tokens plus one sparse fused target per response token.

The per-sequence teacher choice (MinCE, AvgCE, ...) is decided once here from the stored sequence CEs,
so the trainer only sees (ids, probs) targets; selection statistics come out of the same pass.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fusecli.errors import FusecliError
from fusecli.fuse.functions import FUSION_FUNCTIONS, fuse_targets, teacher_probs
from fusecli.store import iter_records, read_manifest


@dataclass
class Example:
    input_ids: np.ndarray  # int64 [T]
    positions: np.ndarray  # int64 [R]: response token positions t (predicted from t-1)
    target_ids: np.ndarray  # int64 [R, M]
    target_probs: np.ndarray  # float32 [R, M]


def build_examples(
    pivot_extract: str | Path,
    align_dir: str | Path | None,
    data: str | Path,
    fusion_fn: str,
    temperature: float,
    vocab_size: int,
) -> tuple[list[Example], dict]:
    """Join the pivot's store with the aligned source store on seq_index and fuse per sequence.

    With `align_dir` None (the SFT baseline), targets are the pivot's own distribution; the loss then
    uses lambda = 1 and ignores them.
    """
    if fusion_fn not in FUSION_FUNCTIONS:
        raise FusecliError(f"fuse.fusion_fn = {fusion_fn!r} is unknown: use one of {sorted(FUSION_FUNCTIONS)}")
    import polars as pl  # here, so the GPU benchmark needs no polars

    domains = pl.read_parquet(data, columns=["domain"])["domain"].to_list()
    aligned = {}
    if align_dir is not None:
        read_manifest(align_dir)
        aligned = {r["seq_index"]: r for r in iter_records(align_dir)}
    fn = FUSION_FUNCTIONS[fusion_fn]
    examples: list[Example] = []
    chosen: dict[str, list[float]] = defaultdict(list)
    for rec in iter_records(pivot_extract):
        i = int(rec["seq_index"])
        positions = np.nonzero(rec["label_mask"])[0].astype(np.int64)
        ids = [rec["topk_ids"].astype(np.int64)]
        probs = [teacher_probs(rec["topk_logprobs"], temperature)]
        ces = [float(rec["seq_ce"])]
        if i in aligned:
            src = aligned[i]
            if len(src["topk_ids"]) != len(positions):
                raise FusecliError(f"aligned targets of row {i} do not match the pivot's tokens: rerun align")
            ids.append(src["topk_ids"].astype(np.int64))
            probs.append(np.where(src["topk_ids"] >= 0, teacher_probs(src["topk_logprobs"], temperature), 0.0))
            ces.append(float(src["seq_ce"]))
        elif align_dir is not None:
            ids.append(np.full_like(ids[0], -1))
            probs.append(np.zeros_like(probs[0]))
            ces.append(float("inf"))
        w = fn(np.asarray(ces))
        if len(w) > 1:
            chosen[domains[i]].append(float(w[1]))
        t_ids, t_probs = fuse_targets(w, ids, probs)
        if t_ids.max(initial=-1) >= vocab_size:
            raise FusecliError(
                f"target id {int(t_ids.max())} is outside the pivot's vocabulary ({vocab_size}): "
                "the aligned targets were made for another pivot; rerun extract and align"
            )
        examples.append(
            Example(
                input_ids=rec["input_ids"].astype(np.int64),
                positions=positions,
                target_ids=t_ids,
                target_probs=t_probs.astype(np.float32),
            )
        )
    if not examples:
        raise FusecliError(f"{pivot_extract} holds no training sequences: check the dataset")
    stats = {
        "fusion_fn": fusion_fn,
        "source_share": {d: float(np.mean(v)) for d, v in sorted(chosen.items())},
        "sequences": {d: len(v) for d, v in sorted(chosen.items())},
    }
    return examples, stats


class FusionDataset(torch.utils.data.Dataset):
    def __init__(self, examples: list[Example]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        e = self.examples[i]
        return {"input_ids": e.input_ids, "positions": e.positions, "ids": e.target_ids, "probs": e.target_probs}


def collate(batch: list[dict], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad tokens; flatten response rows to (batch, position) pairs with padded sparse targets."""
    width = max(len(b["input_ids"]) for b in batch)
    m = max(b["ids"].shape[1] for b in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    rows_b, rows_t, ids, probs = [], [], [], []
    for j, b in enumerate(batch):
        n = len(b["input_ids"])
        input_ids[j, :n] = torch.from_numpy(b["input_ids"])
        attention[j, :n] = 1
        r = len(b["positions"])
        rows_b.append(torch.full((r,), j, dtype=torch.long))
        rows_t.append(torch.from_numpy(b["positions"]))
        pad = m - b["ids"].shape[1]
        ids.append(torch.nn.functional.pad(torch.from_numpy(b["ids"]), (0, pad), value=-1))
        probs.append(torch.nn.functional.pad(torch.from_numpy(b["probs"]), (0, pad), value=0.0))
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "row_batch": torch.cat(rows_b),
        "row_pos": torch.cat(rows_t),
        "target_ids": torch.cat(ids),
        "target_probs": torch.cat(probs),
    }
