"""Pair fusion training (docs/method.md stage 4) on the Hugging Face Trainer.

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
import re
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from fusecli.errors import FusecliError
from fusecli.extract.topk import final_hidden
from fusecli.fuse.data import TEACHERS, Example, FusionDataset, build_examples, collate
from fusecli.fuse.functions import FUSION_FUNCTIONS
from fusecli.fuse.kernels import KERNELS, apply_kernels
from fusecli.fuse.loss import combine, sparse_losses
from fusecli.fuse.memory import layers_to_checkpoint, shape_of
from fusecli.fuse.sft import FIXED
from fusecli.io import atomic_dir, atomic_write_json, remove_tree, sweep_stale
from fusecli.models import compile_layers, load_model, load_tokenizer, n_params, resolve_device, resolve_dtype
from fusecli.perf import mfu, model_flops_per_token
from fusecli.store import read_manifest


@dataclass(frozen=True)
class FuseParams:
    lam: float = 0.9  # weight of the SFT term; 1.0 is plain SFT
    temperature: float = 1.0
    fusion_fn: str = "mince"
    teacher: str = "model"  # model | reference | pivot: the controls (fusecli/fuse/data.py TEACHERS)
    gate: float | None = None  # nats: drop teachers whose sequence CE exceeds it; None = every teacher (the paper)
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
    gradient_checkpointing: bool | str = True  # "auto": as many layers as the memory estimate needs (memory.py)
    compile: bool = False  # CUDA only: torch.compile each decoder layer (fuses norms, rotary, activations)
    zero_stage: int = 0  # 0 = no DeepSpeed; 2 or 3 = ZeRO stage
    save_steps: int = 500
    logging_steps: int = 10
    logits_chunk: int = 2048
    scratch: str = "scratch"
    # Step speed on GPUs (docs/benchmarks.md, "Fusion training"); no effect on CPU.
    optim: str = "adamw_torch"  # adamw_torch_fused: one fused kernel for the AdamW update on CUDA
    kernels: str = "none"  # liger: liger-kernel's RMSNorm, SwiGLU and rotary kernels (fusecli/fuse/kernels.py)

    def validate(self) -> None:
        if self.gradient_checkpointing not in (True, False, "auto"):
            raise FusecliError(
                f"fuse.gradient_checkpointing = {self.gradient_checkpointing!r} must be true, false or auto"
            )
        if self.optim not in OPTIMIZERS:
            raise FusecliError(f"fuse.optim = {self.optim!r} is unknown: use one of {sorted(OPTIMIZERS)}")
        if self.kernels not in KERNELS:
            raise FusecliError(f"fuse.kernels = {self.kernels!r} is unknown: use one of {sorted(KERNELS)}")
        if not 0.0 <= self.lam <= 1.0:
            raise FusecliError(f"fuse.lam = {self.lam} must be within [0, 1]")
        if self.fusion_fn not in FUSION_FUNCTIONS:
            raise FusecliError(f"fuse.fusion_fn = {self.fusion_fn!r} is unknown: use one of {sorted(FUSION_FUNCTIONS)}")
        if self.teacher not in TEACHERS:
            raise FusecliError(f"fuse.teacher = {self.teacher!r} is unknown: use one of {list(TEACHERS)}")
        if self.gate is not None and self.gate <= 0:
            raise FusecliError(f"fuse.gate = {self.gate} must be > 0 nats, or null to turn the gate off")
        if self.temperature <= 0:
            raise FusecliError(f"fuse.temperature = {self.temperature} must be > 0")
        if self.zero_stage not in (0, 1, 2, 3):
            raise FusecliError(f"fuse.zero_stage = {self.zero_stage} must be 0, 1, 2 or 3")
        if self.global_batch_size % self.micro_batch_size:
            raise FusecliError("fuse.global_batch_size must be a multiple of fuse.micro_batch_size")
        if self.save_steps % self.logging_steps:  # a resume restarts the logging interval at the checkpoint
            raise FusecliError("fuse.save_steps must be a multiple of fuse.logging_steps (a resumed run logs as one)")


def sft_only(params: FuseParams) -> FuseParams:
    """The SFT baseline's parameters: lambda 1 and the fusion-only keys fixed (fusecli/fuse/sft.py)."""
    return replace(params, **FIXED)


OPTIMIZERS = ("adamw_torch", "adamw_torch_fused")  # the Trainer's names; fused needs CUDA tensors


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


class EpochSeededSampler(LengthGroupedSampler):
    """The Trainer's length-grouped order, drawn from its own generator seeded with seed + epoch.

    The Trainer's sampler draws each epoch's order from the global RNG as the epoch starts; a run
    resumed mid-epoch e > 0 drew it from the RNG as seeded at start-up instead, so it trained on another
    order than an uninterrupted run (resume was bit-identical only within the first epoch).
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int) -> None:
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:  # called by the Trainer (through accelerate) before each epoch
        self.epoch = epoch

    def __iter__(self):  # noqa: ANN204
        self.generator.manual_seed(self.seed + self.epoch)
        return super().__iter__()


class FusionTrainer(Trainer):
    """Trainer whose loss is lambda * SFT + (1 - lambda) * sparse fusion CE."""

    def __init__(self, *args: object, fuse: FuseParams, flops_per_token: float = 0.0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fuse = fuse
        self.flops_per_token = flops_per_token  # model FLOPs per trained token, for MFU
        # Running sums stay on the device: a float() per micro-step would stall the GPU queue every step.
        self._acc: dict[str, Any] = {"sft_loss": 0.0, "fusion_loss": 0.0, "tokens": 0, "n": 0}

    def _get_train_sampler(self, train_dataset=None):  # noqa: ANN001, ANN202
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:  # resumable: see EpochSeededSampler
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return EpochSeededSampler(sampler.lengths, sampler.batch_size, seed)
        return sampler

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
        self._acc["sft_loss"] += sft.detach()
        self._acc["fusion_loss"] += fuse.detach()
        self._acc["tokens"] += inputs["attention_mask"].sum()
        self._acc["n"] += 1
        return (loss, None) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: object, **kwargs: object) -> None:
        if self._acc["n"] and "loss" in logs:
            logs["sft_loss"] = float(self._acc["sft_loss"]) / self._acc["n"]
            logs["fusion_loss"] = float(self._acc["fusion_loss"]) / self._acc["n"]
            self._acc.update(sft_loss=0.0, fusion_loss=0.0, n=0)
        if "train_loss" in logs:  # the Trainer's own averages only the steps since a resume
            logs["train_loss"] = logged_mean_loss(self.state.log_history)
        super().log(logs, *args, **kwargs)


def logged_mean_loss(history: list[dict]) -> float:
    """The run's mean training loss: the logged losses weighted by the steps each covers.

    The log history is restored from a checkpoint, so a resumed run gets the same value as an
    uninterrupted one (the Trainer's train_loss averages only the steps the last process ran).
    """
    total, last = 0.0, 0
    for entry in history:
        if "loss" in entry and "step" in entry:
            total += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    return total / last if last else 0.0


class ResumableLogs(TrainerCallback):
    """Makes a resumed run's dvclive logs those of an uninterrupted run.

    dvclive numbers steps by log calls and, resumed, continues after the last one it wrote, which a kill
    leaves past the checkpoint: those steps were logged twice and the curve shifted. So the logs always
    start afresh and a resume first replays the checkpoint's log history through the dvclive callback.
    What callbacks add to a log (tokens/s, MFU) is copied into the history, so the replay has it too.
    """

    def __init__(self, dvclive: TrainerCallback, resume: bool) -> None:
        self.dvclive, self.resume = dvclive, resume

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        if self.resume:
            for entry in state.log_history:
                self.dvclive.on_log(args, state, control, logs={k: v for k, v in entry.items() if k != "step"})

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN201
        if logs and state.log_history:  # the Trainer appended this log's entry before the callbacks ran
            state.log_history[-1].update({k: v for k, v in logs.items() if k not in state.log_history[-1]})


class Throughput(TrainerCallback):
    """Logs tokens/s (real tokens, no padding) and MFU next to the loss."""

    def __init__(self, trainer: FusionTrainer, device: torch.device) -> None:
        self.trainer, self.device = trainer, device
        self.t0, self.tok0 = time.perf_counter(), 0

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN201
        if logs is None or "loss" not in logs:
            return
        now, tokens = time.perf_counter(), int(self.trainer._acc["tokens"])
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rate = (tokens - self.tok0) * world / max(now - self.t0, 1e-9)
        logs["tokens_per_s"] = rate
        value = mfu(rate, self.trainer.flops_per_token, self.device, world)
        if value is not None:
            logs["mfu"] = value
        self.t0, self.tok0 = now, tokens


def throughput(trainer: FusionTrainer, runtime_s: float, device: torch.device) -> dict[str, float]:
    """The whole run's real tokens/s, MFU per GPU and peak GPU memory (rank 0's), for the stage's summary."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rate = int(trainer._acc["tokens"]) * world / max(runtime_s, 1e-9)
    out = {"train_runtime_s": runtime_s, "tokens_per_s": rate}
    if (value := mfu(rate, trainer.flops_per_token, device, world)) is not None:
        out["mfu"] = value
    if device.type == "cuda":
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def checkpointing_args(enabled: bool) -> dict:
    """transformers 5.17 calls it gradient_checkpointing, 5.24 activation_checkpointing (old name deprecated)."""
    renamed = "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    name = "activation_checkpointing" if renamed else "gradient_checkpointing"
    return {name: enabled, f"{name}_kwargs": {"use_reentrant": False} if enabled else None}


def checkpoint_layers(model: torch.nn.Module, n: int) -> None:
    """Checkpoint the first `n` decoder layers only (the Trainer's switch is all or none)."""
    layers = getattr(model, model.base_model_prefix).layers
    model.checkpointed_layers = n
    if n == 0:
        return
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5.24; 5.17 has the old name only
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    for i, layer in enumerate(layers):
        layer.gradient_checkpointing = i < n


def shared_args(params: FuseParams, device: torch.device, dtype: torch.dtype) -> dict:
    """What every trainer of the pivot takes from the fuse section (the fusion and SFT Trainer, TRL's DPO):
    the batch (gradient accumulation makes the global batch), schedule, optimizer, precision, launcher."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    bf16 = dtype == torch.bfloat16
    return dict(
        per_device_train_batch_size=params.micro_batch_size,
        gradient_accumulation_steps=max(1, params.global_batch_size // (params.micro_batch_size * world)),
        lr_scheduler_type="cosine",
        warmup_steps=params.warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=params.weight_decay,
        max_grad_norm=params.max_grad_norm,
        seed=params.seed,
        data_seed=params.seed,
        logging_steps=params.logging_steps,
        report_to=[],
        bf16=bf16,
        **checkpointing_args(params.gradient_checkpointing is True and device.type == "cuda"),
        optim=params.optim if device.type == "cuda" else "adamw_torch",
        use_cpu=device.type == "cpu",
        deepspeed=deepspeed_config(params, bf16) if params.zero_stage > 0 else None,
        dataloader_num_workers=0,
    )


def training_args(
    params: FuseParams, output_dir: str | Path, device: torch.device, dtype: torch.dtype
) -> TrainingArguments:
    """The Trainer's arguments from the fuse section."""
    return TrainingArguments(
        output_dir=str(output_dir),
        **shared_args(params, device, dtype),
        learning_rate=params.learning_rate,
        num_train_epochs=params.epochs,
        max_steps=params.max_steps,
        adam_beta1=params.adam_beta1,
        adam_beta2=params.adam_beta2,
        save_strategy="steps",
        save_steps=params.save_steps,
        save_total_limit=2,
        remove_unused_columns=False,
        train_sampling_strategy="group_by_length",
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
    lengths = [len(e.input_ids) for e in examples]
    apply_kernels(model, params.kernels, device)
    if params.gradient_checkpointing == "auto" and device.type == "cuda":
        tokens = params.micro_batch_size * max(lengths)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        memory = torch.cuda.get_device_properties(device).total_memory
        checkpoint_layers(model, layers_to_checkpoint(shape_of(model), tokens, memory, params.zero_stage, world,
                                                      params.logits_chunk))
    if params.compile and device.type == "cuda":
        compile_layers(model)
    trainer = FusionTrainer(
        model=model,
        args=training_args(params, output_dir, device, dtype),
        train_dataset=FusionDataset(examples),
        data_collator=lambda b: collate(b, pad_id),
        fuse=params,
        flops_per_token=model_flops_per_token(model, n_params(model), sum(lengths) // len(lengths), training=True),
    )
    trainer.add_callback(Throughput(trainer, device))
    return trainer


def check_inputs(pivot_extract: str | Path, aligns: list[str], vocab: int) -> None:
    """Stop before training when the stores were made for another pivot or are incomplete."""
    made_for = read_manifest(pivot_extract)["meta"].get("codec", {}).get("vocab", vocab)
    if made_for != vocab:
        raise FusecliError(
            f"{pivot_extract} was extracted with a {made_for}-token vocabulary, the pivot has {vocab}: "
            "rerun extract_pivot for this pivot"
        )
    for align_dir in aligns:
        aligned_to = read_manifest(align_dir)["meta"].get("pivot_vocab", 0)
        if aligned_to > vocab:
            raise FusecliError(
                f"{align_dir} was aligned to a {aligned_to}-token pivot vocabulary, the pivot has {vocab}: "
                "rerun align for this pivot"
            )


def train(
    pivot_model: str,
    pivot_extract: str,
    aligns: list[str],
    data: str,
    out: str,
    logs: str,
    params: FuseParams,
    trust_remote_code: bool = False,
) -> dict:
    """Train the pivot on the fused distributions of itself and `aligns` (none: the SFT baseline); write an
    HF model folder to `out`."""
    device = resolve_device(params.device)
    tokenizer = load_tokenizer(pivot_model, trust_remote_code)
    model = load_model(pivot_model, torch.device("cpu"), torch.float32, trust_remote_code)
    vocab = model.get_output_embeddings().weight.shape[0]
    check_inputs(pivot_extract, aligns, vocab)
    examples, stats = build_examples(
        pivot_extract, aligns, data, params.fusion_fn, params.temperature, vocab, params.teacher, params.gate
    )
    inputs = [Path(pivot_extract)] + [Path(a) for a in aligns]
    key = run_key(inputs, params, {"pivot": str(pivot_model), "sft_only": not aligns})
    return fit(model, tokenizer, examples, stats, key, out, logs, params, device)


def fit(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: list[Example],
    stats: dict,
    key: str,
    out: str,
    logs: str,
    params: FuseParams,
    device: torch.device,
) -> dict:
    """Train on `examples` (resuming the checkpoints of run `key`), save the HF model folder to `out` and the
    summary (`stats`, loss, steps, throughput) to `logs`/selection.json; rank 0 returns the summary."""
    scratch = Path(params.scratch) / f"fuse-{key}"
    trainer = make_trainer(model, examples, tokenizer.pad_token_id or 0, params, scratch, device)
    checkpoint = last_complete_checkpoint(scratch, clean=trainer.is_world_process_zero())
    dvclive = dvclive_callback(logs)
    trainer.add_callback(dvclive)
    trainer.add_callback(ResumableLogs(dvclive, resume=checkpoint is not None))
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if trainer.is_world_process_zero():
        with atomic_dir(out) as tmp:
            trainer.save_model(str(tmp))
            tokenizer.save_pretrained(str(tmp))
            (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle: never ship one
        loss = logged_mean_loss(trainer.state.log_history)
        summary = {"train_loss": loss, "steps": trainer.state.global_step, **stats}
        summary.update(throughput(trainer, result.metrics.get("train_runtime", 0.0), device))
        atomic_write_json(Path(logs) / "selection.json", summary)
        remove_tree(scratch)
        return summary
    return {}


def last_complete_checkpoint(scratch: Path, clean: bool) -> Path | None:
    """The newest checkpoint the Trainer finished writing; with `clean`, delete the unfinished ones.

    The Trainer writes checkpoint-N/ in place, trainer_state.json last, and its own resume takes the
    highest N whatever its state: after a kill mid-save every rerun failed on the partial folder.
    """
    sweep_stale(scratch)  # a kill during the last run's final clean-up
    done, partial = [], []
    for folder in scratch.glob("checkpoint-*"):
        (done if _checkpoint_finished(folder) else partial).append(folder)
    if clean:
        for folder in partial:
            shutil.rmtree(folder, ignore_errors=True)
    return max(done, key=_checkpoint_step, default=None)


def _checkpoint_step(folder: Path) -> int:
    m = re.fullmatch(r"checkpoint-(\d+)", folder.name)
    return int(m[1]) if m else -1


def _checkpoint_finished(folder: Path) -> bool:
    """trainer_state.json, written last, is whole and names this checkpoint's step."""
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and state.get("global_step") == _checkpoint_step(folder) >= 0


def dvclive_callback(logs: str) -> TrainerCallback:
    """Starts the logs afresh, also on a resume (ResumableLogs replays the checkpoint's history)."""
    from dvclive import Live
    from transformers.integrations import DVCLiveCallback

    return DVCLiveCallback(live=Live(logs, save_dvc_exp=False, report=None, resume=False, dvcyaml=None))
