"""The extract stage: teacher-forced top-K distributions of one model over the rendered dataset.

Rows are processed in fixed groups of `shard_size` (one shard each), sorted by length inside a group
and batched under a token budget, so padding is small (2-5 % at shard_size 1024 on a 50-2048 token
mix) and a resumed run recomputes exactly the batches an uninterrupted run would have: the output
is bit-identical. Batches are right-padded and run without an attention mask: under causal
attention a real token never sees the padding after it, so its hidden state is the unpadded one,
and the fast (flash) attention path stays on.

Scale-out: under torchrun each rank takes every world_size-th group and writes those shards into
the same folder; rank 0 merges the part manifests, so N processes write the same store as one.
A model too large for one GPU loads with `model_parallel: true` (transformers' device_map="auto":
layers spread over the host's GPUs, run one after another). Why not a tensor-parallel plan: it needs
an architecture with a TP plan and one process per GPU, while device_map works for any model and
launcher; forward-only extraction then runs at one GPU's speed with every GPU's memory, which is
the trade for the rare source that does not fit. Everything that fits uses data parallelism.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fusecli.data.render import Tokenized, render, tokenize
from fusecli.errors import FusecliError
from fusecli.extract import truncation
from fusecli.extract.codec import TopKCodec
from fusecli.extract.topk import final_hidden, softcap_of, topk_logprobs
from fusecli.models import (
    check_model_dir,
    compile_layers,
    load_model,
    load_tokenizer,
    n_params,
    resolve_device,
    resolve_dtype,
)
from fusecli.perf import mfu, model_flops_per_token
from fusecli.store import Record, StoreWriter, merge_parts


@dataclass(frozen=True)
class ExtractParams:
    k: int = 10
    max_length: int = 2048
    batch_tokens: int = 16384  # padded tokens per forward pass; lower it on out-of-memory
    shard_size: int = 256  # sequences per shard = length-sorting window; 1024 for real datasets
    device: str = "auto"
    dtype: str = "auto"
    vocab_chunk_rows: int = 4096
    compact: bool = True  # 32 B/row packed top-K (fusecli/extract/codec.py); false: int32 ids + fp32 values
    compile: bool = True  # on CUDA: torch.compile the decoder layers and the log-normaliser/CE pass
    onepass: bool = False  # on CUDA: top-K, log-normaliser and CE in one Triton read of each logits chunk
    model_parallel: bool = False  # spread one model over all visible GPUs (device_map="auto")
    overlap: bool = True  # read back and write batch n-1 while the device runs batch n (same bytes either way)

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


@dataclass(frozen=True)
class Rank:
    """This process's share of a data-parallel run: torchrun sets RANK, WORLD_SIZE and LOCAL_RANK."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @classmethod
    def from_env(cls) -> Rank:
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def load_dialogues(path: str | Path) -> list[list[dict[str, str]]]:
    import polars as pl  # imported here so the GPU benchmarks need no polars

    df = pl.read_parquet(path)
    if df.height == 0:
        raise FusecliError(f"{path} holds no dialogues: check the dataset section of params.yaml")
    if "messages" not in df.columns:
        raise FusecliError(f"{path} has no `messages` column: build it with stages/build_dataset.py")
    ids = _ids(df)
    dialogues = []
    for i, text in enumerate(df["messages"].to_list()):
        try:
            dialogues.append(json.loads(text))
        except (TypeError, ValueError):
            raise FusecliError(f"{path} row {ids[i]!r}: messages is not JSON: rebuild it with build_dataset") from None
    return dialogues


def row_ids(path: str | Path) -> list[str]:
    """The dataset's `id` per row: what warnings and errors name, so a bad row can be found."""
    import polars as pl

    return _ids(pl.read_parquet(path))


def _ids(df: Any) -> list[str]:
    """`id` column, else the row number (a hand-made file without ids)."""
    return [str(i) for i in df["id"].to_list()] if "id" in df.columns else [str(i) for i in range(df.height)]


def tokenize_all(
    dialogues: list, model_tok: object, max_length: int, ids: list[str] | None = None
) -> list[Tokenized]:
    """Render with the model's own chat template and tokenize with its own tokenizer: no model reads another's
    markup as text (the align stage pairs the models' positions through the turns' content). A model with no
    chat template is refused (render's one-line error), as `fusecli check` refuses it."""
    items = []
    for i, msgs in enumerate(dialogues):
        if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in msgs):
            rid = ids[i] if ids is not None else str(i)
            raise FusecliError(f"dataset row {rid!r} has no assistant turn: give it an assistant reply or drop it")
        items.append(tokenize(model_tok, render(model_tok, msgs), max_length))
    return items


def dropped_warnings(data: str | Path, summary: dict) -> list[str]:
    """One line per reason rows were left out of the store, naming their dataset ids so they can be found."""
    ids = row_ids(data)
    nonfinite = summary.get("nonfinite_rows", [])
    empty = sorted(set(summary.get("dropped_rows", [])) - set(nonfinite))

    def names(rows: list[int]) -> str:
        shown = ", ".join(ids[i] for i in rows[:10])
        return shown + (f" and {len(rows) - 10} more" if len(rows) > 10 else "")

    lines = []
    if nonfinite:
        lines.append(f"{len(nonfinite)} row(s) with NaN/inf logits excluded (ids {names(nonfinite)}): "
                     "check the model's weights, or set extract.dtype: float32")
    if empty:
        lines.append(f"{len(empty)} row(s) with no response token within extract.max_length excluded "
                     f"(ids {names(empty)}): raise extract.max_length to keep them")
    return lines


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


@torch.no_grad()
def forward_rows(
    model: torch.nn.Module, items: list[Tokenized], k: int, device: torch.device, chunk: int, head: str = "eager"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """One right-padded forward; top-K and CE at t-1 for every response token t, on the device.

    Returns (ids [R, K], logp [R, K] fp32, ce [R] fp32, rows per item), R = all response tokens.
    """
    width = max(len(it.input_ids) for it in items)
    pad = np.zeros((len(items), width), dtype=np.int64)
    rows_b, rows_t = [], []
    for b, it in enumerate(items):
        pad[b, : len(it.input_ids)] = it.input_ids
        t = np.nonzero(it.label_mask)[0]
        rows_b.append(np.full(len(t), b))
        rows_t.append(t)
    ids = torch.from_numpy(pad).to(device)
    hidden = final_hidden(model, ids, None)  # no mask: right padding is invisible under causal attention
    bb = torch.from_numpy(np.concatenate(rows_b)).to(hidden.device)
    tt = torch.from_numpy(np.concatenate(rows_t)).to(hidden.device)
    top_id, top_lp, ce = topk_logprobs(
        hidden[bb, tt - 1],
        model.get_output_embeddings(),
        ids.to(hidden.device)[bb, tt],
        k,
        chunk,
        softcap_of(model),
        head,
    )
    return top_id, top_lp, ce, [len(t) for t in rows_t]


def extract_batch(
    model: torch.nn.Module, items: list[Tokenized], k: int, device: torch.device, chunk: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Exact (ids, logp, ce) numpy arrays per item (the evaluate stage's CE uses this)."""
    top_id, top_lp, ce, counts = forward_rows(model, items, k, device, chunk)
    splits = np.cumsum(counts)[:-1]
    return list(
        zip(
            np.split(top_id.cpu().numpy(), splits),
            np.split(top_lp.cpu().numpy(), splits),
            np.split(ce.cpu().numpy(), splits),
            strict=True,
        )
    )


@dataclass
class Pending:
    """One batch launched on the device; its results are being copied to host memory behind `done`."""

    items: list[Tokenized]
    index: list[int]
    counts: list[int]
    host: dict[str, torch.Tensor]
    done: Any = None  # a CUDA event, None on the CPU


def launch_batch(
    model: torch.nn.Module,
    items: list[Tokenized],
    index: list[int],
    params: ExtractParams,
    device: torch.device,
    codec: TopKCodec | None,
) -> Pending:
    """Queue one batch's forward, packing (on the device when `codec`) and copy back; returns at once on CUDA."""
    head = head_of(params, device)
    top_id, top_lp, ce, counts = forward_rows(model, items, params.k, device, params.vocab_chunk_rows, head)
    out = {"finite": torch.isfinite(top_lp).all(1) & torch.isfinite(ce), "ce": ce}
    if codec is not None:
        out["topk_code"] = codec.encode(top_id, top_lp, ce)
    else:
        out.update(topk_ids=top_id.int(), topk_logprobs=top_lp, token_ce=ce)
    done = None
    if ce.is_cuda:  # copies into pinned memory, in stream order; the event says when they landed
        out = {k: v.to("cpu", non_blocking=True) for k, v in out.items()}
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(ce.device))
    return Pending(items, index, counts, out, done)


def head_of(params: ExtractParams, device: torch.device) -> str:
    """The head's row statistics (fusecli/extract/topk.py HEADS): the CPU keeps the eager torch path."""
    if device.type != "cuda":
        return "eager"
    return "onepass" if params.onepass else "compiled" if params.compile else "eager"


def _finish_batch(p: Pending) -> tuple[list[Record], list[int]]:
    """Store records of a launched batch, and the rows dropped for NaN/inf (waits for its copies)."""
    if p.done is not None:
        p.done.synchronize()
    host = {k: v.numpy() for k, v in p.host.items()}
    splits = np.cumsum(p.counts)[:-1]
    names = ("topk_code",) if "topk_code" in host else ("topk_ids", "topk_logprobs", "token_ce")
    topk = {name: np.split(host[name], splits) for name in names}
    records, dropped = [], []
    per_item = zip(p.index, p.items, np.split(host["finite"], splits), np.split(host["ce"], splits), strict=True)
    for j, (i, it, ok, row_ce) in enumerate(per_item):
        if not ok.all():
            dropped.append(i)
            continue
        records.append(
            {
                "seq_index": i,
                "input_ids": it.input_ids.astype(np.int32),
                "offsets": it.offsets.astype(np.int32),
                "label_mask": it.label_mask.astype(np.uint8),
                "turns": it.turns.astype(np.int32),
                **{name: parts[j] for name, parts in topk.items()},
                "seq_ce": float(row_ce.mean()),
            }
        )
    return records, dropped


def load_extract_model(ref: ModelRef, device: torch.device, dtype: torch.dtype, params: ExtractParams, rank: Rank):
    """On one device, or spread over every visible GPU with device_map='auto' (see the module docstring)."""
    if not params.model_parallel:
        return load_model(ref.path, device, dtype, ref.trust_remote_code, ref.allow_pickle).eval()
    if rank.world > 1:
        raise FusecliError("extract.model_parallel spreads one model over all GPUs: launch with python, not torchrun")
    if device.type != "cuda":
        raise FusecliError("extract.model_parallel needs GPUs: set it to false on CPU")
    from transformers import AutoModelForCausalLM

    check_model_dir(ref.path, ref.allow_pickle)
    return AutoModelForCausalLM.from_pretrained(
        ref.path,
        dtype=dtype,
        device_map="auto",
        use_safetensors=not ref.allow_pickle,
        trust_remote_code=ref.trust_remote_code,
    ).eval()


def extract(
    data: str | Path,
    model_ref: ModelRef,
    out: str | Path,
    params: ExtractParams,
    rank: Rank | None = None,
) -> dict:
    """Run one model over the dataset and write its top-K store to `out` (resuming a killed run).

    `rank` None reads torchrun's environment and joins its process group; tests pass ranks directly.
    """
    barrier = join_process_group(rank is None)
    rank = Rank.from_env() if rank is None else rank
    device = resolve_device(params.device)
    if device.type == "cuda" and rank.world > 1:
        device = torch.device("cuda", rank.local)
        torch.cuda.set_device(device)
    dtype = resolve_dtype(params.dtype, device)
    dialogues = load_dialogues(data)
    model_tok = load_tokenizer(model_ref.path, model_ref.trust_remote_code)
    items = tokenize_all(dialogues, model_tok, params.max_length, row_ids(data))
    model = load_extract_model(model_ref, device, dtype, params, rank)
    vocab = model.get_output_embeddings().weight.shape[0]
    if len(model_tok) > vocab:
        raise FusecliError(f"{model_ref.path}: tokenizer has more tokens than the model's vocabulary")
    return extract_items(items, model, out, params, device, rank, barrier)


def extract_items(
    items: list[Tokenized],
    model: torch.nn.Module,
    out: str | Path,
    params: ExtractParams,
    device: torch.device,
    rank: Rank = Rank(),
    barrier: Callable[[], None] = lambda: None,
) -> dict:
    """The stage's loop over this rank's groups (also what benchmarks/extract.py times)."""
    vocab = model.get_output_embeddings().weight.shape[0]
    codec = TopKCodec(vocab, params.k) if params.compact else None
    if params.compile and device.type == "cuda":
        compile_layers(model)
    meta: dict[str, Any] = {"k": params.k, "max_length": params.max_length, "shard_size": params.shard_size}
    meta["rows"] = len(items)
    if codec is not None:
        meta["codec"] = {"vocab": vocab, "k": params.k}
    parallel = rank.world > 1
    writer = StoreWriter.open(out, meta, params.shard_size, rank.rank if parallel else None, rank.world)
    n_groups = -(-len(items) // params.shard_size)
    todo = [g for g in range(n_groups) if writer.owns(g) and g not in writer.done_indices]
    lengths = [len(it.input_ids) for it in items]
    flops_tok = model_flops_per_token(model, n_params(model), int(np.mean(lengths)), training=False)
    stats = {"tokens": 0, "padded_tokens": 0, "busy_s": 0.0, "dropped_rows": [], "nonfinite_rows": []}
    owned = [i for g in range(n_groups) if writer.owns(g) for i in range(g * params.shard_size,
                                                                        min((g + 1) * params.shard_size, len(items)))]
    stats |= truncation.count(items, owned)  # every owned row, resumed or not: the same counts either way
    columns = (
        TextColumn("[bold]extract"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} tok"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    groups = {g: list(range(g * params.shard_size, min((g + 1) * params.shard_size, len(items)))) for g in todo}
    records: dict[int, dict[int, Record]] = {g: {} for g in todo}
    left = {}  # batches of each group not finished yet
    pending: list[tuple[int, list[int], Pending]] = []  # launched on the device, not yet read back

    def finish(g: int, batch: list[int], launched: Pending) -> None:
        recs, dropped = _finish_batch(launched)
        records[g].update((r["seq_index"], r) for r in recs)
        stats["dropped_rows"].extend(dropped)
        stats["nonfinite_rows"].extend(dropped)
        n_tok = sum(lengths[i] for i in batch)
        stats["tokens"] += n_tok
        stats["padded_tokens"] += len(batch) * max(lengths[i] for i in batch)
        stats["busy_s"] = time.perf_counter() - started
        progress.update(task, advance=n_tok, rate=f"{stats['tokens'] / max(stats['busy_s'], 1e-9):,.0f} tok/s")
        left[g] -= 1
        if left[g] == 0:
            writer.write([records[g][i] for i in groups[g] if i in records[g]], index=g)
            del records[g]

    # While the device runs batch n, the host reads back, packs and writes batch n-1 (and its shard), so
    # the device does not wait on the host between batches. Same batches and order: the same bytes.
    with Progress(*columns, disable=rank.rank != 0) as progress:
        task = progress.add_task("extract", total=sum(lengths[i] for g in todo for i in groups[g]), rate="")
        started = time.perf_counter()
        for g in todo:
            empty = [i for i in groups[g] if not items[i].label_mask.any()]  # truncated before any response
            stats["dropped_rows"].extend(empty)
            batches = _batches([i for i in groups[g] if i not in empty], lengths, params.batch_tokens)
            left[g] = len(batches)
            if not batches:  # every row dropped: an empty shard, in its turn
                while pending:
                    finish(*pending.pop(0))
                writer.write([], index=g)
            for batch in batches:
                pending.append((g, batch, _run_batch(model, [items[i] for i in batch], batch, params, device, codec)))
                if len(pending) > (1 if params.overlap else 0):
                    finish(*pending.pop(0))
        while pending:
            finish(*pending.pop(0))
    if device.type == "cuda":
        stats["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    combine = _summary(sum(lengths), flops_tok, device, rank.world, str(model.dtype).removeprefix("torch."))
    if not parallel:
        writer.close(combine([stats]))
        return combine([stats])
    writer.close(stats)
    barrier()
    summary = merge_parts(out, rank.world, combine)["summary"] if rank.rank == 0 else combine([stats])
    barrier()
    return summary


def _summary(
    total_tokens: int, flops_tok: float, device: torch.device, world: int, dtype: str
) -> Callable[[list[dict]], dict]:
    """Join the ranks' counts: throughput is the sum of the ranks' rates, MFU per GPU."""

    def combine(parts: list[dict]) -> dict:
        rate = sum(p["tokens"] / max(p["busy_s"], 1e-9) for p in parts)
        return {
            "tokens": total_tokens,
            "tokens_per_s": rate,
            "mfu": mfu(rate, flops_tok, device, world),
            "padding_efficiency": sum(p["tokens"] for p in parts) / max(sum(p["padded_tokens"] for p in parts), 1),
            "dropped_rows": sorted(i for p in parts for i in p["dropped_rows"]),
            "nonfinite_rows": sorted(i for p in parts for i in p.get("nonfinite_rows", [])),
            "peak_gpu_gib": max((p.get("peak_gpu_gib", 0.0) for p in parts), default=0.0),  # per GPU
            **truncation.combine(parts),  # replies cut at extract.max_length (fusecli/extract/truncation.py)
            "device": str(device.type),
            "dtype": dtype,
            "world_size": world,
        }

    return combine


def join_process_group(from_env: bool) -> Callable[[], None]:
    """Join torchrun's process group (gloo: only barriers pass through it) and return its barrier."""
    if not from_env or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return lambda: None
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(hours=2))
    return dist.barrier


def _run_batch(
    model: torch.nn.Module,
    items: list[Tokenized],
    index: list[int],
    params: ExtractParams,
    device: torch.device,
    codec: TopKCodec | None,
) -> Pending:
    try:
        return launch_batch(model, items, index, params, device, codec)
    except torch.OutOfMemoryError:
        raise FusecliError("out of GPU memory: lower extract.batch_tokens in params.yaml") from None
