"""Pair fusion training (method.md stage 4) on the Hugging Face Trainer.

The Trainer brings what a real run needs and we do not rewrite: DeepSpeed ZeRO-2/3 (config generated
from params.yaml), torchrun data parallelism, bf16, gradient checkpointing, AdamW, cosine schedule
with warmup, clipping, and exact resume from checkpoints (optimizer, scheduler, RNG, data order).
We add the sparse fusion loss and throughput logging.

Batches are right-padded and run without an attention mask (causal attention never lets a real
token see the padding after it), which keeps the fused causal attention kernels; length-grouped
sampling keeps the padding small. Works with transformers 5.17-5.24 (the checkpointing argument was
renamed in between).

Launch: `python stages/fuse.py ...` (CPU or 1 GPU), `torchrun --nproc_per_node N stages/fuse.py ...`
(N GPUs of one host, with `fuse.zero_stage` 2 or 3), and across hosts DeepSpeed's launcher with a
hostfile (`deepspeed --hostfile hostfile stages/fuse.py ...`; docs/benchmarks.md, "Fusion training").
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from fusecli.errors import FusecliError
from fusecli.extract.topk import final_hidden
from fusecli.fuse.data import Example, FusionDataset, build_examples, collate
from fusecli.fuse.functions import FUSION_FUNCTIONS
from fusecli.fuse.loss import combine, sparse_losses
from fusecli.io import atomic_dir, atomic_write_json
from fusecli.models import load_model, load_tokenizer, n_params, resolve_device, resolve_dtype
from fusecli.perf import mfu, model_flops_per_token
from fusecli.store import read_manifest


@dataclass(frozen=True)
class FuseParams:
    lam: float = 0.9  # weight of the SFT term; 1.0 is plain SFT
    temperature: float = 1.0
    fusion_fn: str = "mince"
    learning_rate: float = 5e-6
    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs
    global_batch_size: int = 128
    micro_batch_size: int = 4
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    seed: int = 42
    device: str = "auto"
    dtype: str = "auto"  # bf16 on GPU, fp32 on CPU
    gradient_checkpointing: bool = True
    zero_stage: int = 0  # 0 = no DeepSpeed; 2 or 3 = ZeRO stage
    save_steps: int = 500
    logging_steps: int = 10
    logits_chunk: int = 2048
    scratch: str = "scratch"

    def validate(self) -> None:
        if not 0.0 <= self.lam <= 1.0:
            raise FusecliError(f"fuse.lam = {self.lam} must be within [0, 1]")
        if self.fusion_fn not in FUSION_FUNCTIONS:
            raise FusecliError(f"fuse.fusion_fn = {self.fusion_fn!r} is unknown: use one of {sorted(FUSION_FUNCTIONS)}")
        if self.temperature <= 0:
            raise FusecliError(f"fuse.temperature = {self.temperature} must be > 0")
        if self.zero_stage not in (0, 1, 2, 3):
            raise FusecliError(f"fuse.zero_stage = {self.zero_stage} must be 0, 1, 2 or 3")
        if self.global_batch_size % self.micro_batch_size:
            raise FusecliError("fuse.global_batch_size must be a multiple of fuse.micro_batch_size")


def deepspeed_config(p: FuseParams, bf16: bool) -> dict:
    """ZeRO config for the transformers integration; "auto" values are filled in by the Trainer.

    No optimizer section: the Trainer's AdamW is handed to DeepSpeed (no fused-op compilation).
    """
    zero: dict = {"stage": p.zero_stage, "overlap_comm": True, "contiguous_gradients": True}
    if p.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto" if bf16 else False},
        "zero_optimization": zero,
    }


def run_key(inputs: list[Path], params: FuseParams, extra: dict) -> str:
    """Hash of the stage's input files and parameters: a checkpoint is only resumed by the same run."""
    h = hashlib.sha256(json.dumps({"params": asdict(params), **extra}, sort_keys=True).encode())
    for root in inputs:
        for f in sorted(p for p in Path(root).rglob("*") if p.is_file()):
            h.update(str(f.relative_to(root)).encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


class FusionTrainer(Trainer):
    """Trainer whose loss is lambda * SFT + (1 - lambda) * sparse fusion CE."""

    def __init__(self, *args: object, fuse: FuseParams, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fuse = fuse
        self._acc = {"sft_loss": 0.0, "fusion_loss": 0.0, "tokens": 0, "n": 0}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001, ANN201
        # Accelerate applies bf16 autocast by wrapping model.forward; we call the decoder and the head
        # ourselves (no full logits), so we enter its autocast here (a no-op under DeepSpeed or fp32).
        with self.accelerator.autocast():
            hidden = final_hidden(model, inputs["input_ids"])  # right padding: no mask needed (module doc)
            rows = hidden[inputs["row_batch"], inputs["row_pos"] - 1]
            gold = inputs["input_ids"][inputs["row_batch"], inputs["row_pos"]]
            unwrapped = model.module if hasattr(model, "module") else model
            sft, fuse = sparse_losses(
                rows,
                unwrapped.get_output_embeddings(),
                gold,
                inputs["target_ids"],
                inputs["target_probs"],
                self.fuse.logits_chunk,
            )
        loss = combine(sft, fuse, self.fuse.lam)
        self._acc["sft_loss"] += float(sft.detach())
        self._acc["fusion_loss"] += float(fuse.detach())
        self._acc["tokens"] += int(inputs["attention_mask"].sum())
        self._acc["n"] += 1
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: object, **kwargs: object) -> None:
        if self._acc["n"] and "loss" in logs:
            logs["sft_loss"] = self._acc["sft_loss"] / self._acc["n"]
            logs["fusion_loss"] = self._acc["fusion_loss"] / self._acc["n"]
            self._acc.update(sft_loss=0.0, fusion_loss=0.0, n=0)
        super().log(logs, *args, **kwargs)


class Throughput(TrainerCallback):
    """Logs tokens/s (real tokens, no padding) and MFU next to the loss."""

    def __init__(self, trainer: FusionTrainer, flops_per_token: float, device: torch.device) -> None:
        self.trainer, self.flops, self.device = trainer, flops_per_token, device
        self.t0, self.tok0 = time.perf_counter(), 0

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN201
        if logs is None or "loss" not in logs:
            return
        now, tokens = time.perf_counter(), self.trainer._acc["tokens"]
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rate = (tokens - self.tok0) * world / max(now - self.t0, 1e-9)
        logs["tokens_per_s"] = rate
        value = mfu(rate, self.flops, self.device, world)
        if value is not None:
            logs["mfu"] = value
        self.t0, self.tok0 = now, tokens


def throughput(trainer: FusionTrainer, runtime_s: float, device: torch.device) -> dict[str, float]:
    """The whole run's real tokens/s, MFU per GPU and peak GPU memory (rank 0's), for the stage's summary."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rate = trainer._acc["tokens"] * world / max(runtime_s, 1e-9)
    flops = next((c.flops for c in trainer.callback_handler.callbacks if isinstance(c, Throughput)), 0.0)
    out = {"train_runtime_s": runtime_s, "tokens_per_s": rate}
    if (value := mfu(rate, flops, device, world)) is not None:
        out["mfu"] = value
    if device.type == "cuda":
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def checkpointing_args(enabled: bool) -> dict:
    """transformers 5.17 calls it gradient_checkpointing, 5.24 activation_checkpointing (old name deprecated)."""
    renamed = "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    name = "activation_checkpointing" if renamed else "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


def training_args(
    params: FuseParams, output_dir: str | Path, device: torch.device, dtype: torch.dtype
) -> TrainingArguments:
    """The Trainer's arguments from the fuse section (gradient accumulation makes the global batch)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    bf16 = dtype == torch.bfloat16
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=params.micro_batch_size,
        gradient_accumulation_steps=max(1, params.global_batch_size // (params.micro_batch_size * world)),
        learning_rate=params.learning_rate,
        num_train_epochs=params.epochs,
        max_steps=params.max_steps,
        lr_scheduler_type="cosine",
        warmup_steps=params.warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=params.weight_decay,
        adam_beta1=params.adam_beta1,
        adam_beta2=params.adam_beta2,
        max_grad_norm=params.max_grad_norm,
        bf16=bf16,
        **checkpointing_args(params.gradient_checkpointing and device.type == "cuda"),
        logging_steps=params.logging_steps,
        save_strategy="steps",
        save_steps=params.save_steps,
        save_total_limit=2,
        seed=params.seed,
        data_seed=params.seed,
        report_to=[],
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length",
        use_cpu=device.type == "cpu",
        deepspeed=deepspeed_config(params, bf16) if params.zero_stage > 0 else None,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def make_trainer(
    model: torch.nn.Module,
    examples: list[Example],
    pad_id: int,
    params: FuseParams,
    output_dir: str | Path,
    device: torch.device,
) -> FusionTrainer:
    """A FusionTrainer with throughput logging (what train() runs and benchmarks/fuse.py times)."""
    if device.type == "cuda" and torch.cuda.device_count() > 1 and "WORLD_SIZE" not in os.environ:
        raise FusecliError(  # the Trainer would fall back to torch.nn.DataParallel, slow and unsupported here
            f"{torch.cuda.device_count()} GPUs visible to one process: launch with "
            "torchrun --nproc_per_node N (launch.fuse in params.yaml) or set CUDA_VISIBLE_DEVICES"
        )
    dtype = resolve_dtype(params.dtype, device)
    trainer = FusionTrainer(
        model=model,
        args=training_args(params, output_dir, device, dtype),
        train_dataset=FusionDataset(examples),
        data_collator=lambda b: collate(b, pad_id),
        fuse=params,
    )
    lengths = [len(e.input_ids) for e in examples]
    flops = model_flops_per_token(model, n_params(model), int(sum(lengths) / len(lengths)), training=True)
    trainer.add_callback(Throughput(trainer, flops, device))
    return trainer


def check_inputs(pivot_extract: str | Path, align_dir: str | Path | None, vocab: int) -> None:
    """Stop before training when the stores were made for another pivot or are incomplete."""
    made_for = read_manifest(pivot_extract)["meta"].get("codec", {}).get("vocab", vocab)
    if made_for != vocab:
        raise FusecliError(
            f"{pivot_extract} was extracted with a {made_for}-token vocabulary, the pivot has {vocab}: "
            "rerun extract_pivot for this pivot"
        )
    if align_dir is not None:
        aligned_to = read_manifest(align_dir)["meta"].get("pivot_vocab", 0)
        if aligned_to > vocab:
            raise FusecliError(
                f"{align_dir} was aligned to a {aligned_to}-token pivot vocabulary, the pivot has {vocab}: "
                "rerun align for this pivot"
            )


def train(
    pivot_model: str,
    pivot_extract: str,
    align_dir: str | None,
    data: str,
    out: str,
    logs: str,
    params: FuseParams,
    trust_remote_code: bool = False,
) -> dict:
    """Train the pivot on (its own | source's) distributions; write an HF model folder to `out`."""
    device = resolve_device(params.device)
    tokenizer = load_tokenizer(pivot_model, trust_remote_code)
    model = load_model(pivot_model, torch.device("cpu"), torch.float32, trust_remote_code)
    vocab = model.get_output_embeddings().weight.shape[0]
    check_inputs(pivot_extract, align_dir, vocab)
    examples, stats = build_examples(pivot_extract, align_dir, data, params.fusion_fn, params.temperature, vocab)
    inputs = [Path(pivot_extract)] + ([Path(align_dir)] if align_dir else [])
    key = run_key(inputs, params, {"pivot": str(pivot_model), "sft_only": align_dir is None})
    scratch = Path(params.scratch) / f"fuse-{key}"
    trainer = make_trainer(model, examples, tokenizer.pad_token_id or 0, params, scratch, device)
    resume = any(scratch.glob("checkpoint-*"))
    trainer.add_callback(_dvclive_callback(logs, resume))
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    if trainer.is_world_process_zero():
        with atomic_dir(out) as tmp:
            trainer.save_model(str(tmp))
            tokenizer.save_pretrained(str(tmp))
            (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle: never ship one
        summary = {"train_loss": result.training_loss, "steps": trainer.state.global_step, **stats}
        summary.update(throughput(trainer, result.metrics.get("train_runtime", 0.0), device))
        atomic_write_json(Path(logs) / "selection.json", summary)
        shutil.rmtree(scratch, ignore_errors=True)
        return summary
    return {}


def _dvclive_callback(logs: str, resume: bool) -> TrainerCallback:
    from dvclive import Live
    from transformers.integrations import DVCLiveCallback

    return DVCLiveCallback(live=Live(logs, save_dvc_exp=False, report=None, resume=resume, dvcyaml=None))
