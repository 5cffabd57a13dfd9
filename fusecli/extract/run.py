"""The extract stage: teacher-forced top-K distributions of one model over the rendered dataset.

Rows are processed in fixed groups of `shard_size` (one shard each), sorted by length inside a group
and batched under a token budget, so padding is small and a resumed run recomputes exactly the
batches an uninterrupted run would have: the output is bit-identical.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fusecli.data.render import Tokenized, render, tokenize
from fusecli.errors import FusecliError
from fusecli.extract.topk import final_hidden, softcap_of, topk_logprobs
from fusecli.models import load_model, load_tokenizer, n_params, resolve_device, resolve_dtype
from fusecli.perf import mfu, model_flops_per_token
from fusecli.store import Record, StoreWriter


@dataclass(frozen=True)
class ExtractParams:
    k: int = 10
    max_length: int = 2048
    batch_tokens: int = 16384  # padded tokens per forward pass; lower it on out-of-memory
    shard_size: int = 256
    device: str = "auto"
    dtype: str = "auto"
    vocab_chunk_rows: int = 4096

    def validate(self) -> None:
        if self.k < 1:
            raise FusecliError(f"extract.k = {self.k} must be >= 1")
        if self.batch_tokens < self.max_length:
            raise FusecliError(f"extract.batch_tokens = {self.batch_tokens} must be >= extract.max_length")


@dataclass(frozen=True)
class ModelRef:
    path: str
    trust_remote_code: bool = False
    allow_pickle: bool = False


def load_dialogues(path: str | Path) -> list[list[dict[str, str]]]:
    df = pl.read_parquet(path)
    if df.height == 0:
        raise FusecliError(f"{path} holds no dialogues: check the dataset section of params.yaml")
    return [json.loads(m) for m in df["messages"].to_list()]


def tokenize_all(dialogues: list, pivot_tok: object, model_tok: object, max_length: int) -> list[Tokenized]:
    """Render with the pivot's template, tokenize with the model's own tokenizer."""
    return [tokenize(model_tok, render(pivot_tok, msgs), max_length) for msgs in dialogues]


def _batches(order: list[int], lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Greedy length-sorted batches whose padded size stays under the token budget."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i in sorted(order, key=lambda j: (-lengths[j], j)):
        width = max([lengths[j] for j in current] + [lengths[i]])
        if current and width * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def extract_batch(
    model: torch.nn.Module, items: list[Tokenized], k: int, device: torch.device, chunk: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Right-padded forward; gather hidden states at t-1 for every response token t."""
    width = max(len(it.input_ids) for it in items)
    pad = np.zeros((len(items), width), dtype=np.int64)
    attn = np.zeros((len(items), width), dtype=np.int64)
    for b, it in enumerate(items):
        pad[b, : len(it.input_ids)] = it.input_ids
        attn[b, : len(it.input_ids)] = 1
    ids = torch.from_numpy(pad).to(device)
    hidden = final_hidden(model, ids, torch.from_numpy(attn).to(device))
    rows_b, rows_t = [], []
    for b, it in enumerate(items):
        t = np.nonzero(it.label_mask)[0]
        rows_b.append(np.full(len(t), b))
        rows_t.append(t)
    bb = torch.from_numpy(np.concatenate(rows_b)).to(device)
    tt = torch.from_numpy(np.concatenate(rows_t)).to(device)
    top_id, top_lp, ce = topk_logprobs(
        hidden[bb, tt - 1], model.get_output_embeddings(), ids[bb, tt], k, chunk, softcap_of(model)
    )
    top_id, top_lp, ce = top_id.cpu().numpy(), top_lp.cpu().numpy(), ce.cpu().numpy()
    out, start = [], 0
    for it in items:
        r = int(it.label_mask.sum())
        out.append((top_id[start : start + r], top_lp[start : start + r], ce[start : start + r]))
        start += r
    return out


def extract(
    data: str | Path,
    model_ref: ModelRef,
    pivot_ref: ModelRef,
    out: str | Path,
    params: ExtractParams,
) -> dict:
    """Run one model over the dataset and write its top-K store to `out` (resuming a killed run)."""
    device = resolve_device(params.device)
    dtype = resolve_dtype(params.dtype, device)
    dialogues = load_dialogues(data)
    pivot_tok = load_tokenizer(pivot_ref.path, pivot_ref.trust_remote_code)
    model_tok = pivot_tok if model_ref == pivot_ref else load_tokenizer(model_ref.path, model_ref.trust_remote_code)
    items = tokenize_all(dialogues, pivot_tok, model_tok, params.max_length)
    model = load_model(model_ref.path, device, dtype, model_ref.trust_remote_code, model_ref.allow_pickle).eval()
    if len(model_tok) > model.get_output_embeddings().weight.shape[0]:
        raise FusecliError(f"{model_ref.path}: tokenizer has more tokens than the model's vocabulary")

    meta = {"k": params.k, "max_length": params.max_length, "shard_size": params.shard_size, "rows": len(items)}
    writer = StoreWriter.open(out, meta, params.shard_size)
    groups = [list(range(s, min(s + params.shard_size, len(items)))) for s in range(0, len(items), params.shard_size)]
    lengths = [len(it.input_ids) for it in items]
    total_tokens = sum(lengths)
    flops_tok = model_flops_per_token(model, n_params(model), int(np.mean(lengths)), training=False)
    dropped: list[int] = []
    done_tokens, busy = 0, 0.0
    columns = (
        TextColumn("[bold]extract"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} tok"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns) as progress:
        task = progress.add_task("extract", total=total_tokens, rate="")
        skipped = sum(lengths[i] for g in groups[: len(writer.shards)] for i in g)
        progress.advance(task, skipped)
        for group in groups[len(writer.shards) :]:
            records: dict[int, Record] = {}
            empty = [i for i in group if not items[i].label_mask.any()]  # truncated before any response
            dropped.extend(empty)
            for batch in _batches([i for i in group if i not in empty], lengths, params.batch_tokens):
                started = time.perf_counter()
                results = _run_batch(model, [items[i] for i in batch], params, device)
                busy += time.perf_counter() - started
                n_tok = sum(lengths[i] for i in batch)
                done_tokens += n_tok
                progress.update(task, advance=n_tok, rate=f"{done_tokens / max(busy, 1e-9):,.0f} tok/s")
                for i, (top_id, top_lp, ce) in zip(batch, results, strict=True):
                    if not (np.isfinite(top_lp).all() and np.isfinite(ce).all()):
                        dropped.append(i)
                        continue
                    it = items[i]
                    records[i] = {
                        "seq_index": i,
                        "input_ids": it.input_ids.astype(np.int32),
                        "offsets": it.offsets.astype(np.int32),
                        "label_mask": it.label_mask.astype(np.uint8),
                        "topk_ids": top_id.astype(np.int32),
                        "topk_logprobs": top_lp.astype(np.float32),
                        "token_ce": ce.astype(np.float32),
                        "seq_ce": float(ce.mean()),
                    }
            writer.write([records[i] for i in group if i in records])
    tokens_per_s = done_tokens / max(busy, 1e-9)
    summary = {
        "tokens": total_tokens,
        "tokens_per_s": tokens_per_s,
        "mfu": mfu(tokens_per_s, flops_tok, device),
        "dropped_rows": sorted(dropped),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
    }
    writer.close(summary)
    return summary


def _run_batch(model: torch.nn.Module, items: list[Tokenized], params: ExtractParams, device: torch.device) -> list:
    try:
        return extract_batch(model, items, params.k, device, params.vocab_chunk_rows)
    except torch.OutOfMemoryError:
        raise FusecliError("out of GPU memory: lower extract.batch_tokens in params.yaml") from None
