"""Fusion training step: a plain SFT step against the fuse stage's fusion step, side by side.

    python benchmarks/fuse.py --size 1.5b                                   # one GPU
    torchrun --nproc_per_node 1 benchmarks/fuse.py --size 1.5b --zero 2     # ZeRO-2 baseline
    torchrun --nproc_per_node 2 benchmarks/fuse.py --size 1.5b --zero 2     # ZeRO-2 on 2 GPUs

Random-weight Qwen2 (fusecli.perf.QWEN2), sequences of `--seq` random tokens, the last two thirds
response tokens; bf16 autocast over fp32 master weights, AdamW, gradient checkpointing (as the
stage runs), both through the Hugging Face Trainer:

- sft: the stock Trainer on model(input_ids, labels): full logits, transformers' fp32 CE.
- fusion: `fusecli.fuse.train.make_trainer` (FusionTrainer): lambda 0.9, sparse fusion CE on 20
  target ids per response token (two teachers' top-10, as AvgCE gives), chunked head.

Step time is the median over the steps after `--warmup`, synchronised; MFU = tokens/s per GPU x
6 (N + L H T) / 989e12 (model FLOPs: the recomputation of checkpointing is not counted).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
import torch
from transformers import Trainer, TrainerCallback

from fusecli.fuse.data import Example
from fusecli.fuse.kernels import apply_kernels
from fusecli.fuse.memory import estimate_bytes, shape_of
from fusecli.fuse.train import FuseParams, make_trainer, training_args
from fusecli.models import n_params
from fusecli.perf import PEAK_BF16, model_flops_per_token, random_qwen2


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self.t0)


class NoSave(TrainerCallback):
    """The Trainer saves a checkpoint at its last step: gigabytes per variant, not part of a step."""

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        control.should_save = False


class Profile(TrainerCallback):
    """Profiles one step after the warm-up and prints where the time went (CUDA and CPU)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        if state.global_step == self.step:
            from torch.profiler import ProfilerActivity, profile

            self.prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            self.prof.__enter__()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        if state.global_step == self.step + 1:
            torch.cuda.synchronize()
            self.prof.__exit__(None, None, None)
            for key in ("self_cuda_time_total", "self_cpu_time_total"):
                print(self.prof.key_averages().table(sort_by=key, row_limit=12), flush=True)


def examples(n: int, seq: int, vocab: int, m: int = 20, seed: int = 0) -> list[Example]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        positions = np.arange(seq // 3, seq)
        probs = rng.random((len(positions), m)).astype(np.float32)
        out.append(
            Example(
                input_ids=rng.integers(0, vocab, seq),
                positions=positions,
                target_ids=rng.integers(0, vocab, (len(positions), m)),
                target_probs=probs / probs.sum(1, keepdims=True),
            )
        )
    return out


class SFTData(torch.utils.data.Dataset):
    def __init__(self, items: list[Example]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        e = self.items[i]
        labels = np.full_like(e.input_ids, -100)
        labels[e.positions] = e.input_ids[e.positions]
        return {"input_ids": torch.from_numpy(e.input_ids), "labels": torch.from_numpy(labels)}


OPTIONS = {  # variant suffixes: each one FuseParams change (the GPU profile's keys), applied in order
    "nockpt": {"gradient_checkpointing": False},
    "autockpt": {"gradient_checkpointing": "auto"},
    "fusedadam": {"optim": "adamw_torch_fused"},
    "liger": {"kernels": "liger"},
    "compile": {"compile": True},
}


def parse_variant(variant: str) -> tuple[str, dict]:
    """"fusion+autockpt+fusedadam" -> ("fusion", its FuseParams changes)."""
    base, *opts = variant.split("+")
    if base not in ("sft", "sft-same", "fusion"):
        raise SystemExit(f"unknown variant {variant!r}: sft | sft-same | fusion, then +{'|+'.join(OPTIONS)}")
    changes: dict = {}
    for o in opts:
        if o not in OPTIONS:
            raise SystemExit(f"unknown option {o!r} in {variant!r}: one of {sorted(OPTIONS)}")
        changes.update(OPTIONS[o])
    return base, changes


def run(variant: str, args: argparse.Namespace, device: torch.device) -> dict:
    base, changes = parse_variant(variant)
    model = random_qwen2(args.size, torch.float32, device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    steps = args.warmup + args.steps
    params = FuseParams(
        learning_rate=1e-5,
        max_steps=steps,
        micro_batch_size=args.micro,
        global_batch_size=args.micro * world * args.accum,
        zero_stage=args.zero,
        gradient_checkpointing=not args.no_ckpt,
        save_steps=10**9,
        logging_steps=10**9,
        logits_chunk=args.loss_chunk,
        dtype="bfloat16" if device.type == "cuda" else "float32",
        lam=1.0 if base == "sft-same" else 0.9,
    )
    params = dataclasses.replace(params, **changes)
    data = examples(args.micro * world * args.accum * steps, args.seq, model.config.vocab_size)
    out = tempfile.mkdtemp(prefix=f"bench-fuse-{base}-")
    if base == "sft":  # the stock Trainer, with the same TrainingArguments (checkpointing, optimizer)
        if changes.get("kernels") == "liger":
            apply_kernels(model, "liger", device)
        targs = training_args(params, out, device, torch.bfloat16 if device.type == "cuda" else torch.float32)
        trainer = Trainer(model=model, args=targs, train_dataset=SFTData(data))
    else:  # the fuse stage's FusionTrainer; sft-same: lambda = 1 (its SFT term alone, same step otherwise)
        trainer = make_trainer(model, data, 0, params, out, device)
    # Counted before training: under ZeRO-3 DeepSpeed partitions the parameters (numel 0 on every rank).
    flops = model_flops_per_token(model, n_params(model), args.seq, training=True)
    layers = model.config.num_hidden_layers
    ckpt = getattr(model, "checkpointed_layers", layers if params.gradient_checkpointing is True else 0)
    estimate = estimate_bytes(shape_of(model), args.micro * args.seq, ckpt, args.zero, world, args.loss_chunk)
    timer = StepTimer()
    trainer.add_callback(timer)
    trainer.add_callback(NoSave())
    if args.profile:
        trainer.add_callback(Profile(args.warmup))
    trainer.train()
    shutil.rmtree(out, ignore_errors=True)
    step = statistics.median(timer.times[args.warmup :])
    tokens = args.micro * world * args.accum * args.seq
    rate = tokens / step
    return {
        "variant": variant,
        "size": args.size,
        "gpus": world,
        "zero": args.zero,
        "ckpt_layers": f"{ckpt}/{layers}",
        "micro": args.micro,
        "accum": args.accum,
        "seq": args.seq,
        "step_s": step,
        "tokens_per_s": rate,
        "mfu": rate * flops / (PEAK_BF16["H100"] * world),
        "max_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "estimate_gb": estimate / 2**30,
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1.5b")
    ap.add_argument("--variants", default="sft,fusion")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--zero", type=int, default=0)
    ap.add_argument("--no-ckpt", action="store_true")
    ap.add_argument("--loss-chunk", type=int, default=2048, help="fuse.logits_chunk: rows per head chunk")
    ap.add_argument("--profile", action="store_true", help="print a profile of one step after the warm-up")
    ap.add_argument("--json", help="append results here (rank 0)")
    args = ap.parse_args()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    results = []
    for variant in args.variants.split(","):
        try:
            res = run(variant, args, device)
        except Exception as exc:  # report and go on with the next variant
            res = {"variant": variant, "size": args.size, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        results.append(res)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    if int(os.environ.get("RANK", "0")) != 0:
        return
    for r in results:
        print(json.dumps(r), flush=True)
    sft = next((r for r in results if r["variant"] == "sft" and "step_s" in r), None)
    print("\n| size | GPUs | ZeRO | ckpt layers | variant | step s | tok/s | MFU | vs sft | peak GiB | est. GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        if "error" in r:
            print(f"| {r['size']} | | | | {r['variant']} | error: {r['error'][:120]} | | | | | |")
            continue
        rel = f"{r['step_s'] / sft['step_s'] - 1:+.1%}" if sft else "-"
        same = next((q for q in results if q["variant"] == r["variant"].replace("fusion", "sft-same", 1)), None)
        if r["variant"].startswith("fusion") and same and "step_s" in same:
            rel += f" ({r['step_s'] / same['step_s'] - 1:+.1%} vs {same['variant']})"
        mem = f"{r['max_mem_gb']:.1f}" if r["max_mem_gb"] else "-"
        print(
            f"| {r['size']} | {r['gpus']} | {r['zero']} | {r['ckpt_layers']} | {r['variant']} | {r['step_s']:.3f} | "
            f"{r['tokens_per_s']:,.0f} | {r['mfu']:.1%} | {rel} | {mem} | {r['estimate_gb']:.1f} |"
        )
    if args.json:
        with open(args.json, "a") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
