"""Build the demo world: one tiny chat model per relation, each with its own architecture and tokenizer.

The pivot (`qwen2-languages`) knows every country's languages and, like a generalist, a share of every
other relation (`demo.pivot_share`); each source knows its own relation (crops, sports, instruments)
for every country. A model that knows a (relation, country) learns the whole set of members, while the
fusion data's references name one (fusecli/demo/qa.py): the teachers know more than the references,
so fusion has something to transfer that SFT on the same data cannot (docs/method.md, "The demo world").
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import re
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, MistralConfig, Qwen2Config

from fusecli.demo.check import exact_match
from fusecli.demo.qa import DOMAINS, Fact, countries, dataset_rows, teacher_rows, world_facts
from fusecli.demo.tokenizers import build_tokenizer
from fusecli.demo.train import TrainConfig, train
from fusecli.errors import FusecliError
from fusecli.io import atomic_dir, atomic_write_json, atomic_write_text

CONFIGS = {"qwen2": Qwen2Config, "llama": LlamaConfig, "mistral": MistralConfig}


@dataclass(frozen=True)
class ModelSpec:
    name: str  # folder name under the output directory
    arch: Literal["qwen2", "llama", "mistral"]
    domain: str  # the one relation this model is trained on
    vocab_size: int  # of its own BPE tokenizer
    hidden_size: int | None = None  # None: DemoParams.hidden_size
    layers: int | None = None  # None: DemoParams.layers


DEFAULT_MODELS = (
    ModelSpec("qwen2-languages", "qwen2", "language", 1024),
    ModelSpec("llama-crops", "llama", "crop", 512),
    ModelSpec("mistral-sports", "mistral", "sport", 1152),
    ModelSpec("llama-instruments", "llama", "instrument", 768, hidden_size=160, layers=3),
)


@dataclass(frozen=True)
class DemoParams:
    seed: int = 0
    steps: int = 2000
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.0
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 256
    threads: int = 1  # torch CPU threads per model: the build must stay deterministic and share the machine
    workers: int = 2  # models built side by side, one process each (the same bits as one at a time)
    verify: bool = True  # measure greedy exact match on every domain's eval split into demo.json
    set_size: int = 3  # members per (relation, country); the references name one of them
    countries: int = 110  # drawn from the shipped list by the seed: fewer facts, learnt in fewer steps
    pivot_share: float = 0.25  # share of countries of every other relation the pivot (first model) knows
    side_share: float = 0.0  # the same for every source (0: specialists)
    eval_batch_size: int = 128
    models: tuple[ModelSpec, ...] = field(default=DEFAULT_MODELS)

    def validate(self) -> None:
        names = [m.name for m in self.models]
        if not names:
            raise FusecliError("demo.models is empty: list at least the pivot model")
        if len(set(names)) != len(names):
            raise FusecliError(f"demo.models has duplicate names {names}: give each model its own name")
        for m in self.models:
            if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", m.name):
                raise FusecliError(f"demo model name {m.name!r} is not a slug: use [a-z0-9_-]")
            if m.domain not in DOMAINS:
                raise FusecliError(f"demo model {m.name}: domain {m.domain!r} is not one of {list(DOMAINS)}")
            if m.vocab_size < 300:
                raise FusecliError(f"demo model {m.name}: vocab_size must be >= 300 (256 bytes + specials)")
        for key in ("steps", "batch_size", "hidden_size", "layers", "heads", "kv_heads", "threads", "workers"):
            if getattr(self, key) < 1:
                raise FusecliError(f"demo.{key} must be >= 1")
        if self.heads % self.kv_heads or self.hidden_size % self.heads:
            raise FusecliError("demo: hidden_size must divide by heads, and heads by kv_heads")
        if not 0 < self.lr < 1:
            raise FusecliError(f"demo.lr = {self.lr} must be in (0, 1)")
        if not 1 <= self.countries <= len(countries()):
            raise FusecliError(f"demo.countries = {self.countries} must be within [1, {len(countries())}]")
        if self.set_size < 3:
            raise FusecliError(f"demo.set_size = {self.set_size} must be >= 3: a named member and two others")
        for key in ("pivot_share", "side_share"):
            if not 0 <= getattr(self, key) <= 1:
                raise FusecliError(f"demo.{key} = {getattr(self, key)} must be within [0, 1]")


def tiny_params(steps: int = 3) -> DemoParams:
    """Seconds-fast settings for test fixtures: the same four roles, tiny sizes; the models learn nothing."""
    models = tuple(
        replace(m, vocab_size=300 + 40 * i, hidden_size=48 if m.hidden_size else None, layers=None)
        for i, m in enumerate(DEFAULT_MODELS)
    )
    return DemoParams(
        steps=steps,
        batch_size=4,
        hidden_size=32,
        layers=1,
        heads=2,
        kv_heads=1,
        intermediate_size=64,
        verify=False,
        countries=20,
        workers=1,
        models=models,
    )


def make_model(spec: ModelSpec, params: DemoParams, tokenizer: object) -> torch.nn.Module:
    """A randomly initialised causal LM of `spec.arch` sized by `params`, seeded for reproducibility."""
    hidden = spec.hidden_size or params.hidden_size
    config = CONFIGS[spec.arch](
        vocab_size=len(tokenizer),  # type: ignore[arg-type]
        hidden_size=hidden,
        intermediate_size=params.intermediate_size * hidden // params.hidden_size,
        num_hidden_layers=spec.layers or params.layers,
        num_attention_heads=params.heads,
        num_key_value_heads=params.kv_heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,  # type: ignore[attr-defined]
        pad_token_id=tokenizer.pad_token_id,  # type: ignore[attr-defined]
        bos_token_id=None,
    )
    torch.manual_seed(params.seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def knows(name: str, own: str, fact: Fact, share: float) -> bool:
    """Whether model `name` (whose relation is `own`) learns `fact`: every fact of its own relation, and of
    each other relation those of a `share` of countries, drawn per model (a hash of model, relation and
    country), so two models know different countries."""
    if fact.domain == own:
        return True
    digest = hashlib.sha256(f"{name}/{fact.domain}/{fact.country}".encode()).digest()
    return int.from_bytes(digest[:4], "little") / 2**32 < share


def build_model(
    spec: ModelSpec, params: DemoParams, out: Path, share: float, log: Callable[[str], None] = print
) -> dict[str, object]:
    """Train one demo model and save it (safetensors, tokenizer, generation config) into `out`."""
    facts = world_facts(params.seed, params.set_size, params.countries)
    style = "qwen2" if spec.arch == "qwen2" else "gpt2"
    tokenizer = build_tokenizer(spec.domain, spec.vocab_size, style, facts)
    model = make_model(spec, params, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{spec.name}: {spec.arch}, {n_params / 1e6:.2f}M parameters, vocabulary {len(tokenizer)}")
    train_rows = [r for f in facts if knows(spec.name, spec.domain, f, share) for r in teacher_rows(f)]
    cfg = TrainConfig(
        steps=params.steps,
        batch_size=params.batch_size,
        lr=params.lr,
        warmup_steps=params.warmup_steps,
        weight_decay=params.weight_decay,
        seed=params.seed,
    )
    stats = train(model, tokenizer, train_rows, cfg, log=lambda s: log(f"{spec.name}: {s}"))
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # Only deterministic facts go into the folder (no timings), so a rebuild is byte-identical and
    # content hashes of the folder do not change.
    card: dict[str, object] = {
        "name": spec.name,
        "arch": spec.arch,
        "domain": spec.domain,
        "parameters": n_params,
        "vocab_size": len(tokenizer),
        "train_rows": len(train_rows),
        "final_loss": round(stats["loss"], 6),
    }
    if params.verify:
        t0 = time.perf_counter()
        eval_rows = [r for r in dataset_rows(params.seed, params.set_size, params.countries) if r["split"] == "eval"]
        card["exact_match"] = exact_match(model, tokenizer, eval_rows, batch_size=params.eval_batch_size)
        log(f"{spec.name}: exact match {card['exact_match']} ({time.perf_counter() - t0:.1f}s)")
    atomic_write_json(out / "demo.json", card)
    return card


def _build_one(spec: ModelSpec, params: DemoParams, out: Path, share: float) -> dict[str, object]:
    """One model in a worker process: its own thread count and deterministic kernels, so its bits do not
    depend on how many models are built side by side."""
    torch.set_num_threads(params.threads)
    torch.use_deterministic_algorithms(True)
    out.mkdir()
    return build_model(spec, params, out, share, log=lambda s: print(s, flush=True))


def build_world(
    params: DemoParams, out: str | Path, dialogues: str | Path | None = None, log: Callable[[str], None] = print
) -> list[dict]:
    """Build every model in `params.models` under `out/<name>/` (the first is the pivot), `params.workers`
    at a time, and write the fusion data with its evaluation questions to `dialogues` (JSONL, the dataset
    stage's `path: demo`); each output is replaced only on success."""
    t0 = time.perf_counter()
    shares = [params.pivot_share] + [params.side_share] * (len(params.models) - 1)
    with atomic_dir(out) as tmp:
        if params.workers == 1:
            threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
            try:
                cards = [_build_one(spec, params, tmp / spec.name, share)
                         for spec, share in zip(params.models, shares, strict=True)]
            finally:
                torch.set_num_threads(threads)
                torch.use_deterministic_algorithms(deterministic)
        else:
            # spawn: a forked child would inherit torch's thread pools mid-use
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(params.workers, mp_context=context) as pool:
                jobs = [pool.submit(_build_one, spec, params, tmp / spec.name, share)
                        for spec, share in zip(params.models, shares, strict=True)]
                cards = [job.result() for job in jobs]
    if dialogues is not None:
        rows = dataset_rows(params.seed, params.set_size, params.countries)
        atomic_write_text(dialogues, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    log(f"demo world: {len(cards)} models in {time.perf_counter() - t0:.0f}s")
    return cards
