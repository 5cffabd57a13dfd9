"""Extraction throughput: a naive HF top-K pass against the extract stage's own loop, side by side.

    python benchmarks/extract.py --sizes 0.5b,1.5b,7b                       # one GPU
    torchrun --nproc_per_node 2 benchmarks/extract.py --sizes 1.5b --variants ours   # data parallel

Random-weight Qwen2 models (fusecli.perf.QWEN2, 152K vocabulary) in bf16 over random token
sequences with lengths uniform in [50, 2048]; the first third of each sequence is the prompt, the
rest response tokens (which the stage extracts; the naive pass computes every position).

- naive: batches of `batch_tokens // 2048` sequences in dataset order, right-padded with an
  attention mask, full logits, fp32 log_softmax, topk, rows gathered to the CPU.
- ours / ours+compile: `fusecli.extract.run.extract_items` (length-sorted token-budget batches, no
  mask, chunked head, rows packed to 32 B, shards written), eager or compiled (decoder layers and the
  head's log-normaliser/CE pass), with the head's top-K in torch (`extract.onepass: false`).
- NAME+onepass: that variant with the head's top-K, log-normaliser and CE in one Triton read of each
  logits chunk (`extract.onepass: true`; the stage's GPU default is ours+compile). Its store is
  compared with the same variant's without +onepass when both ran (`store_vs` in the JSON). Time a
  baseline both first and last (`--variants ours+compile,ours+compile+onepass,ours+compile`): the
  first timed variant is always the slowest.
- ours+compile-all: the whole decoder compiled as one module instead (minutes per new batch shape).
- NAME+sync: without `extract.overlap` (the host reads back each batch before the next is launched).
- NAME@TOKENS: that variant with another token budget per forward (`extract.batch_tokens`).
- ours+compile+mp: the model's layers spread over all visible GPUs, one process (`extract.model_parallel`).

Each variant first runs 24 warm-up rows on every rank (compilation and allocator warm-up), then the
timed rows; `per_rank` in the JSON gives each rank's own time and the graphs it compiled while timed.

Real tokens/s counts unpadded tokens, end to end (the stage's: including packing and writing shards).
MFU = real tokens/s x (2N + 2 L H T) / 989e12, N = non-embedding parameters with the LM head, T =
mean length: the same model FLOPs for every variant, though ours runs the head on response rows only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch._dynamo.utils import counters

from fusecli.data.render import Tokenized
from fusecli.extract.run import ExtractParams, Rank, extract_items, join_process_group
from fusecli.models import n_params
from fusecli.perf import PEAK_BF16, model_flops_per_token, random_qwen2

PEAK = PEAK_BF16["H100"]


def device_of(rank: Rank) -> torch.device:
    return torch.device("cuda", rank.local) if torch.cuda.is_available() else torch.device("cpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def make_items(n: int, vocab: int, seed: int, lo: int = 50, hi: int = 2048) -> list[Tokenized]:
    rng = np.random.default_rng(seed)
    items = []
    for length in rng.integers(lo, hi + 1, n):
        mask = np.zeros(length, dtype=bool)
        mask[max(1, length // 3) :] = True
        ids = rng.integers(0, vocab, length)
        turns = np.array([[0, 0, length, length]], np.int32)  # stores keep the turns; one per sequence here
        items.append(Tokenized(ids, np.zeros((length, 2), np.int32), mask, turns))
    return items


@torch.no_grad()
def naive(model: torch.nn.Module, items: list[Tokenized], k: int, batch_tokens: int) -> None:
    """What one would write first: padded batches in order, full logits, log_softmax, topk."""
    per_batch = max(1, batch_tokens // 2048)
    for s in range(0, len(items), per_batch):
        batch = items[s : s + per_batch]
        width = max(len(it.input_ids) for it in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        for b, it in enumerate(batch):
            ids[b, : len(it.input_ids)] = torch.from_numpy(it.input_ids)
            attn[b, : len(it.input_ids)] = 1
        ids, attn = ids.to(model.device), attn.to(model.device)
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits.float(), -1)
        top_lp, top_id = logp.topk(k, dim=-1)
        ce = -logp[:, :-1].gather(-1, ids[:, 1:, None])
        for b, it in enumerate(batch):
            t = torch.from_numpy(np.nonzero(it.label_mask)[0]).to(model.device)
            top_id[b, t - 1].cpu(), top_lp[b, t - 1].cpu(), ce[b, t - 1].cpu()
        del logp, top_lp, top_id, ce


def profiled(fn: Callable[[], object]) -> None:
    """Runs `fn` under the profiler; prints the kernels by GPU time and how busy the GPU was."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        started = time.perf_counter()
        fn()
        wall = time.perf_counter() - started
    events = prof.key_averages()
    busy = sum(e.self_device_time_total for e in events) / 1e6
    print(f"profile: wall {wall:.2f} s, GPU kernels {busy:.2f} s ({busy / wall:.1%} busy)", flush=True)
    print(events.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70), flush=True)


def spread(model: torch.nn.Module) -> torch.nn.Module:
    """The model's layers spread over every visible GPU, as `extract.model_parallel` loads a model."""
    from accelerate import dispatch_model, infer_auto_device_map

    n = torch.cuda.device_count()
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    share = {i: int(size / n * 1.15) for i in range(n)}
    device_map = infer_auto_device_map(model, max_memory=share, no_split_module_classes=model._no_split_modules)
    return dispatch_model(model, device_map)


@torch.no_grad()
def check(model: torch.nn.Module, device: torch.device, scratch: str) -> dict:
    """The stage's packed store against each sequence alone through the full HF model (same dtype)."""
    from fusecli.extract.codec import topk_kl
    from fusecli.store import iter_records

    items = make_items(16, model.config.vocab_size, seed=3, hi=1024)
    out = Path(scratch) / "bench-check"
    shutil.rmtree(out, ignore_errors=True)
    extract_items(items, model, out, ExtractParams(k=10, batch_tokens=8192, shard_size=8), device)
    same, kls, ce_err = [], [], []
    for r in iter_records(out):
        it = items[r["seq_index"]]
        logits = model(input_ids=torch.from_numpy(it.input_ids)[None].to(device)).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        t = torch.from_numpy(np.nonzero(it.label_mask)[0]).to(device)
        ref_lp, ref_id = logp[t - 1].topk(10, dim=-1)
        ref_id, ref_lp = ref_id.cpu().numpy(), ref_lp.cpu().numpy()
        same.append(np.mean([set(a) == set(b) for a, b in zip(r["topk_ids"], ref_id, strict=True)]))
        ok = np.array([set(a) == set(b) for a, b in zip(r["topk_ids"], ref_id, strict=True)])
        kls.append(topk_kl(r["topk_ids"][ok], r["topk_logprobs"][ok], ref_id[ok], ref_lp[ok]).max())
        ref_ce = -logp[t - 1].gather(-1, torch.from_numpy(it.input_ids).to(device)[t][:, None])[:, 0]
        ce_err.append(np.abs(r["token_ce"] - ref_ce.cpu().numpy()).max())
    shutil.rmtree(out, ignore_errors=True)
    return {
        "check": "packed store vs unpadded HF forward",
        "same_topk_set": float(np.mean(same)),
        "max_kl": float(max(kls)),
        "max_ce_abs_err": float(max(ce_err)),
    }


def compare_stores(new: Path, old: Path) -> dict:
    """How a variant's packed store differs from its baseline's: rows byte for byte, then decoded."""
    from safetensors.numpy import load_file

    from fusecli.store import iter_records, read_manifest

    same_rows = rows = 0
    for shard in read_manifest(old)["shards"]:
        if shard["file"] is not None:
            a, b = load_file(old / shard["file"])["topk_code"], load_file(new / shard["file"])["topk_code"]
            same_rows += int((a == b).all(1).sum()) if a.shape == b.shape else 0
            rows += len(a)
    same_set, lp_err, ce_err = [], 0.0, 0.0
    for a, b in zip(iter_records(old), iter_records(new), strict=True):
        same_set.extend(set(x) == set(y) for x, y in zip(a["topk_ids"], b["topk_ids"], strict=True))
        ok = np.array(same_set[-len(a["topk_ids"]) :])
        lp_err = max(lp_err, float(np.abs(a["topk_logprobs"][ok] - b["topk_logprobs"][ok]).max(initial=0)))
        ce_err = max(ce_err, float(np.abs(a["token_ce"] - b["token_ce"]).max(initial=0)))
    return {
        "store_vs": str(old.name),
        "rows": rows,
        "rows_byte_identical": same_rows / max(rows, 1),
        "same_topk_set": float(np.mean(same_set)),
        "max_logp_abs_diff_same_set": lp_err,
        "max_ce_abs_diff": ce_err,
    }


def run_variant(
    name: str,
    model: torch.nn.Module,
    items: list[Tokenized],
    args: argparse.Namespace,
    rank: Rank,
    barrier: Callable[[], None],
    out: Path,
    shard_size: int,
) -> dict:
    base, _, budget = name.partition("@")  # "ours+compile@32768": another token budget per forward
    batch_tokens = int(budget) if budget else args.batch_tokens
    params = ExtractParams(
        k=10,
        max_length=2048,
        batch_tokens=batch_tokens,
        shard_size=shard_size,
        compile=base.startswith("ours+compile"),
        overlap="+sync" not in base,
        onepass="+onepass" in base,
    )
    graphs0 = counters["stats"]["unique_graphs"]
    if rank.rank == 0:
        shutil.rmtree(out, ignore_errors=True)
    sync()
    barrier()
    started = time.perf_counter()
    if name == "naive":
        naive(model, items, 10, batch_tokens)
        summary = {}
    else:
        summary = extract_items(items, model, out, params, device_of(rank), rank, barrier)
    sync()
    mine = time.perf_counter() - started  # this rank's own time, before waiting for the others
    barrier()
    wall = time.perf_counter() - started
    ranks = [{"wall_s": mine, "new_graphs": counters["stats"]["unique_graphs"] - graphs0}]
    if rank.world > 1:
        import torch.distributed as dist

        ranks = [None] * rank.world
        dist.all_gather_object(ranks, {"wall_s": mine, "new_graphs": counters["stats"]["unique_graphs"] - graphs0})
    stored = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    rows = sum(int(it.label_mask.sum()) for it in items)
    return {
        "variant": name,
        "wall_s": wall,
        "tokens": sum(len(it.input_ids) for it in items),
        "padding_efficiency": summary.get("padding_efficiency"),
        "store_bytes_per_response_token": stored / rows if name != "naive" else None,
        "per_rank": ranks,  # wall before the final barrier and graphs compiled in the timed region
        "out": str(out),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="0.5b,1.5b,7b")
    ap.add_argument("--variants", default="naive,ours,ours+compile")
    ap.add_argument("--seqs", type=int, default=512)
    ap.add_argument("--batch-tokens", type=int, default=16384)
    ap.add_argument("--shard-size", type=int, default=1024)
    ap.add_argument("--scratch", default=tempfile.gettempdir())
    ap.add_argument("--json", help="append results here (rank 0)")
    ap.add_argument("--check", action="store_true", help="first compare the store with a plain forward")
    ap.add_argument("--profile", action="store_true", help="profile one extra pass of each variant first")
    ap.add_argument("--cold-ranks", action="store_true", help="warm up as before the fix: rank 0 only (diagnosis)")
    args = ap.parse_args()
    barrier = join_process_group(True)
    rank = Rank.from_env()
    device = device_of(rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    results = []
    for size in args.sizes.split(","):
        model = random_qwen2(size, torch.bfloat16, device).eval()
        items = make_items(args.seqs, model.config.vocab_size, seed=1)
        warm = make_items(24, model.config.vocab_size, seed=2)
        if args.check and rank.world == 1:
            print(json.dumps({"size": size, **check(model, device, args.scratch)}), flush=True)
        mean_len = int(np.mean([len(it.input_ids) for it in items]))
        flops = model_flops_per_token(model, n_params(model), mean_len, training=False)
        for name in args.variants.split(","):
            if "+mp" in name:  # ours+compile+mp: one model over all GPUs (extract.model_parallel), one process
                model = spread(model)
            if name.startswith("ours+compile-all"):
                model.model = torch.compile(model.model, dynamic=True)
            out = Path(args.scratch) / f"bench-{size}-{name}-w{rank.world}"
            baseline = Path(args.scratch) / f"bench-{size}-{name.replace('+onepass', '')}-w{rank.world}"
            try:
                # Compile and allocator warm-up, on every rank: with the timed run's shard size the 24
                # warm-up rows made one group, so only rank 0 warmed up (the 0.82x of docs/benchmarks.md).
                warm_shard = args.shard_size if args.cold_ranks else -(-len(warm) // rank.world)
                run_variant(name, model, warm, args, rank, barrier, out, warm_shard)
                if args.profile:  # a profiled pass first, on the timed rows; its numbers are not reported
                    profiled(partial(run_variant, name, model, items, args, rank, barrier, out, args.shard_size))
                res = run_variant(name, model, items, args, rank, barrier, out, args.shard_size)
            except Exception as exc:  # report and go on with the next variant
                res = {"variant": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            for layer in model.model.layers:
                layer._compiled_call_impl = None
            if "wall_s" in res:
                rate = res["tokens"] / res["wall_s"]
                res.update(tokens_per_s=rate, mfu=rate * flops / (PEAK * rank.world))
                if "+onepass" in name and rank.rank == 0 and (baseline / "manifest.json").exists():
                    res.update(compare_stores(out, baseline))
            gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
            res.update(size=size, world=rank.world, gpu=gpu, flops_per_token=flops)
            results.append(res)
            if rank.rank == 0:
                print(json.dumps(res), flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(res) + "\n")
        if hasattr(model.model, "_orig_mod"):
            model.model = model.model._orig_mod
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if rank.rank != 0:
        return
    print("\n| size | GPUs | variant | real tok/s | MFU | vs naive | padding eff. | store B/resp. tok |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    base = {r["size"]: r.get("tokens_per_s") for r in results if r["variant"] == "naive"}
    for r in results:
        if "error" in r:
            print(f"| {r['size']} | {r['world']} | {r['variant']} | error: {r['error']} | | | | |")
            continue
        ratio = f"{r['tokens_per_s'] / base[r['size']]:.2f}x" if base.get(r["size"]) else "-"
        pad = f"{r['padding_efficiency']:.3f}" if r["padding_efficiency"] else "-"
        size_b = f"{r['store_bytes_per_response_token']:.1f}" if r["store_bytes_per_response_token"] else "-"
        print(
            f"| {r['size']} | {r['world']} | {r['variant']} | {r['tokens_per_s']:,.0f} | {r['mfu']:.1%} | "
            f"{ratio} | {pad} | {size_b} |"
        )
    if os.environ.get("BENCH_KEEP") is None:  # BENCH_KEEP=1 keeps the stores, to compare 1 and N GPUs
        for r in results:
            if r.get("out"):
                shutil.rmtree(r["out"], ignore_errors=True)


if __name__ == "__main__":
    main()
