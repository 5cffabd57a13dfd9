"""Training examples for fusion: the pivot's tokens plus one sparse fused target per response token.

The per-sequence teacher choice (MinCE, AvgCE, ...) is decided once here from the stored sequence CEs,
so the trainer only sees (ids, probs) targets; selection statistics come out of the same pass. The
teachers are the pivot and one aligned store per source: one for a pair model (fuse@<slug>), all of them
for the FuseLLM-style row (fuse_all), none for the SFT baseline.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fusecli.errors import FusecliError
from fusecli.fuse.functions import (
    FUSION_FUNCTIONS,
    apply_gate,
    fuse_targets,
    pivot_only,
    reference_targets,
    teacher_probs,
)
from fusecli.store import iter_records, read_manifest

# fuse.teacher: the teachers' distributions; or a control: the reference one-hot (what the teachers add beyond the
# references), or the pivot's own distribution, the sources dropped (what the sources add beyond self-distillation)
TEACHERS = ("model", "reference", "pivot")


@dataclass
class Example:
    input_ids: np.ndarray  # int64 [T]
    positions: np.ndarray  # int64 [R]: response token positions t (predicted from t-1)
    target_ids: np.ndarray  # int64 [R, M]
    target_probs: np.ndarray  # float32 [R, M]
    source_weight: float = 0.0  # the sources' share of this sequence's fused target (MinCE: 1 where one won)


def _source_teacher(src: dict | None, n: int, k: int, temperature: float, i: int) -> tuple:
    """(ids [R, K], probs [R, K], seq CE) of one aligned source for sequence i; absent: no mass, CE inf."""
    if src is None:
        return np.full((n, k), -1, dtype=np.int64), np.zeros((n, k)), float("inf")
    if len(src["topk_ids"]) != n:
        raise FusecliError(f"aligned targets of row {i} do not match the pivot's tokens: rerun align")
    ids = src["topk_ids"].astype(np.int64)
    probs = np.where(ids >= 0, teacher_probs(src["topk_logprobs"], temperature), 0.0)
    return ids, probs, float(src["seq_ce"])


def build_examples(
    pivot_extract: str | Path,
    aligns: Sequence[str | Path],
    data: str | Path,
    fusion_fn: str,
    temperature: float,
    vocab_size: int,
    teacher: str = "model",
    gate: float | None = None,
) -> tuple[list[Example], dict]:
    """Join the pivot's store with the aligned source stores on seq_index and fuse per sequence.

    Teacher 0 is the pivot, teacher k the k-th store of `aligns` (named by its folder, the source slug).
    `gate` drops teachers whose sequence CE exceeds it before the fusion function runs; a sequence with no
    teacher left gets the reference one-hot (plain SFT). `teacher` "reference" replaces every fused target
    by the reference one-hot after the same selection (the control: what the teachers add beyond the
    references); "pivot" drops the sources from the targets, so the pivot's own distribution teaches where the
    gate keeps it and the reference one-hot elsewhere (the self-distillation control: what the sources add
    beyond the pivot teaching itself). Both controls report the selection their targets replaced. With no
    `aligns` (the SFT baseline) targets are the pivot's own distribution; the loss then uses lambda = 1 and
    ignores them.
    """
    if fusion_fn not in FUSION_FUNCTIONS:
        raise FusecliError(f"fuse.fusion_fn = {fusion_fn!r} is unknown: use one of {sorted(FUSION_FUNCTIONS)}")
    if teacher not in TEACHERS:
        raise FusecliError(f"fuse.teacher = {teacher!r} is unknown: use one of {list(TEACHERS)}")
    import polars as pl  # here, so the GPU benchmark needs no polars

    domains = pl.read_parquet(data, columns=["domain"])["domain"].to_list()
    names = ["pivot"] + [Path(a).name for a in aligns]
    stores = []
    for a in aligns:
        read_manifest(a)
        stores.append({r["seq_index"]: r for r in iter_records(a)})
    fn = FUSION_FUNCTIONS[fusion_fn]
    examples: list[Example] = []
    weights: dict[str, list[np.ndarray]] = defaultdict(list)
    gated: dict[str, list[bool]] = defaultdict(list)
    for rec in iter_records(pivot_extract):
        i = int(rec["seq_index"])
        positions = np.nonzero(rec["label_mask"])[0].astype(np.int64)
        ids = [rec["topk_ids"].astype(np.int64)]
        probs = [teacher_probs(rec["topk_logprobs"], temperature)]
        ces = [float(rec["seq_ce"])]
        for store in stores:
            s_ids, s_probs, s_ce = _source_teacher(store.get(i), len(positions), ids[0].shape[1], temperature, i)
            ids.append(s_ids)
            probs.append(s_probs)
            ces.append(s_ce)
        competent = apply_gate(np.asarray(ces), gate)
        none_left = not np.isfinite(competent).any()
        w = np.zeros(len(ces)) if none_left else fn(competent)
        if stores:
            weights[domains[i]].append(w)
            gated[domains[i]].append(none_left)
        if teacher == "pivot":
            w = pivot_only(competent)
        if none_left or teacher == "reference" or not w.any():
            t_ids, t_probs = reference_targets(rec["input_ids"][positions])
        else:
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
                source_weight=float(w[1:].sum()),
            )
        )
    if not examples:
        raise FusecliError(f"{pivot_extract} holds no training sequences: check the dataset")
    return examples, selection_stats(weights, gated, names, fusion_fn, teacher, gate)


def selection_stats(
    weights: dict[str, list[np.ndarray]],
    gated: dict[str, list[bool]],
    names: list[str],
    fusion_fn: str,
    teacher: str,
    gate: float | None,
) -> dict:
    """Per domain: the sources' share of the fused targets (MinCE: of sequences; AvgCE: mean weight), each
    teacher's share, and the share of sequences the gate left without a teacher."""
    mean_w = {d: np.mean(np.stack(v), axis=0) for d, v in sorted(weights.items())}
    return {
        "fusion_fn": fusion_fn,
        "teacher": teacher,
        "gate": gate,
        "source_share": {d: float(m[1:].sum()) for d, m in mean_w.items()},
        "teacher_share": {name: {d: float(m[k]) for d, m in mean_w.items()} for k, name in enumerate(names)},
        "gated_share": {d: float(np.mean(v)) for d, v in sorted(gated.items())},
        "sequences": {d: len(v) for d, v in sorted(weights.items())},
    }


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
