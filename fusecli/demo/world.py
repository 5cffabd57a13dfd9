"""Build the demo world: one tiny chat model per relation, each with its own architecture and tokenizer.

The pivot (`qwen2-capitals`) knows capitals, the sources know currencies, regions and demonyms; each
is trained only on its own relation, so fusing a source into the pivot has a measurable effect: the
source's domain exact match rises, and the pivot's own must not fall (docs/architecture.md, demo world).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, MistralConfig, Qwen2Config

from fusecli.demo.check import exact_match
from fusecli.demo.qa import DOMAINS, qa_rows
from fusecli.demo.tokenizers import build_tokenizer
from fusecli.demo.train import TrainConfig, train
from fusecli.errors import FusecliError
from fusecli.io import atomic_dir, atomic_write_json

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
    ModelSpec("qwen2-capitals", "qwen2", "capital", 1024),
    ModelSpec("llama-currency", "llama", "currency", 512),
    ModelSpec("mistral-region", "mistral", "region", 2048),
    ModelSpec("llama-demonym", "llama", "demonym", 768, hidden_size=160, layers=3),
)


@dataclass(frozen=True)
class DemoParams:
    seed: int = 0
    steps: int = 1200
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.0
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 256
    threads: int = 2  # torch CPU threads: the build must stay deterministic and share the machine
    verify: bool = True  # measure greedy exact match on every domain's eval split into demo.json
    side_share: float = 0.0  # share of countries of every *other* relation a model also learns (generalists)
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
        for key in ("steps", "batch_size", "hidden_size", "layers", "heads", "kv_heads", "threads"):
            if getattr(self, key) < 1:
                raise FusecliError(f"demo.{key} must be >= 1")
        if self.heads % self.kv_heads or self.hidden_size % self.heads:
            raise FusecliError("demo: hidden_size must divide by heads, and heads by kv_heads")
        if not 0 < self.lr < 1:
            raise FusecliError(f"demo.lr = {self.lr} must be in (0, 1)")


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


def knows(spec: ModelSpec, row: dict, side_share: float) -> bool:
    """Whether `spec` learns `row`: every row of its own relation, and of each other relation the rows of
    a fixed share of countries, drawn per model (a hash of model, relation and country), so two models
    know different countries."""
    if row["domain"] == spec.domain:
        return True
    country = row["id"].split("-", 1)[1].rsplit("-", 1)[0]  # <domain>-<country>-<template>
    digest = hashlib.sha256(f"{spec.name}/{row['domain']}/{country}".encode()).digest()
    return int.from_bytes(digest[:4], "little") / 2**32 < side_share


def build_model(
    spec: ModelSpec, params: DemoParams, out: Path, log: Callable[[str], None] = print
) -> dict[str, object]:
    """Train one demo model and save it (safetensors, tokenizer, generation config) into `out`."""
    rows = qa_rows()
    style = "qwen2" if spec.arch == "qwen2" else "gpt2"
    tokenizer = build_tokenizer(spec.domain, spec.vocab_size, style)
    model = make_model(spec, params, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{spec.name}: {spec.arch}, {n_params / 1e6:.2f}M parameters, vocabulary {len(tokenizer)}")
    train_rows = [r for r in rows if r["split"] == "train" and knows(spec, r, params.side_share)]
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
        eval_rows = [r for r in rows if r["split"] == "eval"]
        card["exact_match"] = exact_match(model, tokenizer, eval_rows, batch_size=params.eval_batch_size)
        log(f"{spec.name}: exact match {card['exact_match']} ({time.perf_counter() - t0:.1f}s)")
    atomic_write_json(out / "demo.json", card)
    return card


def build_world(params: DemoParams, out: str | Path, log: Callable[[str], None] = print) -> list[dict]:
    """Build every model in `params.models` under `out/<name>/`; `out` is replaced only on success."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(params.threads)
    torch.use_deterministic_algorithms(True)
    cards = []
    t0 = time.perf_counter()
    try:
        with atomic_dir(out) as tmp:
            for spec in params.models:
                (tmp / spec.name).mkdir()
                cards.append(build_model(spec, params, tmp / spec.name, log))
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    log(f"demo world: {len(cards)} models in {time.perf_counter() - t0:.0f}s")
    return cards
