"""The stage table: one entry per dvc.yaml stage, and the only place its facts are written by hand.

Each `Stage` names its entry point and command, its params.yaml section and dataclass, the keys that
change its result, its data inputs and its outputs. `fusecli sync-dvc` writes dvc.yaml's `stages:`
from it, the code deps being the import closure of the entry point (fusecli/closure.py), so a stage
reruns when a file it runs changes and for no other file; `fusecli sync-dvc --check` (make test) fails
while dvc.yaml disagrees. Adding a stage is one entry here (docs/architecture.md, "Adding a stage").

Hashed keys: a section is hashed whole unless some of its keys cannot change this stage's result
(`unhashed`: speed or resilience only, each proven byte for byte in its package's tests). Then the
section's keys that params.yaml states are listed one by one, less those.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusecli.fuse.sft import FIXED as SFT_FIXED

SOURCES = "${sources}"  # foreach over models.lock's sources: `<stage>@<slug>`, `${key}` the slug
METHODS = "${merge.methods}"  # foreach over params.yaml's merge.methods: `<stage>@<method>`, `${item}`


def dataset_files(params: Path) -> list[str]:
    """build_dataset's data deps: the local files params.yaml's dataset.sources reads (fusecli/data/deps.py)."""
    from fusecli.config import load_section  # imported here: polars is slow to load
    from fusecli.data.build import DatasetParams
    from fusecli.data.deps import dataset_files as files

    return files(load_section(DatasetParams, "dataset", params))


@dataclass(frozen=True)
class Stage:
    name: str
    entry: str  # stages/<name>.py: its fusecli import closure is the stage's code deps
    args: str  # the entry point's arguments, as dvc.yaml's cmd runs it
    section: str | None = None  # the params.yaml section it loads
    config: str | None = None  # "module:Class", the section's dataclass (named: importing it loads torch)
    unhashed: tuple[str, ...] = ()  # section keys that cannot change this stage's result
    keys: tuple[str, ...] = ()  # other params.yaml keys it hashes
    lock: tuple[str, ...] = ()  # models.lock keys it hashes
    data: tuple[str, ...] = ()  # deps besides its code: data files, upstream outputs, models
    data_from_params: Callable[[Path], list[str]] | None = None  # deps named in params.yaml (DVC cannot expand lists)
    outs: tuple[str | dict[str, dict[str, Any]], ...] = ()
    metrics: tuple[str | dict[str, dict[str, Any]], ...] = ()
    launch: str = "python"  # what runs the entry point (`${launch.fuse}`: python, torchrun or deepspeed)
    foreach: str | None = None  # SOURCES or METHODS
    switch: bool = False  # its output is a small answer that rarely changes: what follows reruns only when it does

    @property
    def cmd(self) -> str:
        return f"{self.launch} {self.entry} {self.args}"

    def config_class(self) -> type | None:
        if self.config is None:
            return None
        module, name = self.config.split(":")
        return getattr(importlib.import_module(module), name)

    def out_paths(self) -> list[str]:
        return [o if isinstance(o, str) else next(iter(o)) for o in self.outs]


FUSE_SPEED_ONLY = ("save_steps", "scratch")  # checkpoints: no output byte depends on them (tests/fuse/test_train.py)
FUSE_CMD = "--params params.yaml --lock models.lock --data data/train.parquet --pivot-extract extract/pivot"
FUSE = Stage(
    name="fuse", entry="stages/fuse.py", launch="${launch.fuse}", foreach=SOURCES,
    args=f"{FUSE_CMD} --align align/${{key}} --out fused/${{key}} --live-dir logs/fuse/${{key}}",
    section="fuse", config="fusecli.fuse.train:FuseParams", unhashed=FUSE_SPEED_ONLY, keys=("launch.fuse", "runtime"),
    lock=("pivot",),
    data=("data/train.parquet", "extract/pivot", "align/${key}"),
    outs=("fused/${key}", {"logs/fuse/${key}": {"persist": True}}),
)
EXTRACT_CMD = "--params params.yaml --lock models.lock"

STAGES: tuple[Stage, ...] = (
    Stage(  # whether anything uses the demo: its bytes change only with the answer, so build_demo reruns only then
        name="demo_use", entry="stages/demo_use.py", args="--params params.yaml --lock models.lock --out demo/use.json",
        keys=("dataset.sources",), lock=("pivot", "sources"), outs=("demo/use.json",), switch=True,
    ),
    Stage(
        name="build_demo", entry="stages/build_demo.py",
        args="--params params.yaml --use demo/use.json --out demo/models --dialogues demo/dialogues.jsonl",
        section="demo", config="fusecli.demo.world:DemoParams", data=("demo/use.json",),
        outs=("demo/models", "demo/dialogues.jsonl"),
    ),
    Stage(
        name="build_dataset", entry="stages/build_dataset.py", args="--params params.yaml --out data",
        section="dataset", config="fusecli.data.build:DatasetParams", data_from_params=dataset_files,
        outs=("data/train.parquet", "data/eval.parquet"),
    ),
    Stage(
        name="extract_pivot", entry="stages/extract.py", launch="${launch.extract}",
        args=f"{EXTRACT_CMD} --model pivot --data data/train.parquet --out extract/pivot",
        section="extract", config="fusecli.extract.run:ExtractParams", keys=("launch.extract", "runtime"),
        lock=("pivot",), data=("data/train.parquet", "${pivot.path}"), outs=("extract/pivot",),
    ),
    Stage(
        name="extract", entry="stages/extract.py", launch="${launch.extract}", foreach=SOURCES,
        args=f"{EXTRACT_CMD} --model ${{key}} --data data/train.parquet --out extract/sources/${{key}}",
        section="extract", config="fusecli.extract.run:ExtractParams", keys=("launch.extract", "runtime"),
        lock=("sources.${key}",),  # not the pivot: each model reads the dataset in its own chat template
        data=("data/train.parquet", "${item.path}"), outs=("extract/sources/${key}",),
    ),
    Stage(
        name="align", entry="stages/align.py", foreach=SOURCES,
        args="--params params.yaml --lock models.lock --source ${key} --pivot-extract extract/pivot "
             "--source-extract extract/sources/${key} --out align/${key}",
        section="align", config="fusecli.align.params:AlignParams",
        unhashed=("workers",),  # the process pool changes speed only (tests/align/test_stage.py)
        data=("extract/pivot", "extract/sources/${key}"), outs=("align/${key}",),
    ),
    FUSE,
    Stage(  # what each pair model's new knowledge depends on, for merges that weigh by it (fisher_gate)
        name="fisher", entry="stages/fisher.py", foreach=SOURCES,
        args=f"{FUSE_CMD} --align align/${{key}} --fused fused/${{key}} --out fisher/${{key}}",
        section="fisher", config="fusecli.fuse.fisher:FisherParams",
        # the fuse keys that choose the sequences the source taught (fuse@<slug>'s selection)
        keys=("fuse.temperature", "fuse.fusion_fn", "fuse.teacher", "fuse.gate", "runtime"), lock=("pivot",),
        data=("data/train.parquet", "extract/pivot", "align/${key}", "fused/${key}"), outs=("fisher/${key}",),
    ),
    dataclasses.replace(  # the FuseLLM-style row: every locked source at once
        FUSE, name="fuse_all", foreach=None,
        args=f"{FUSE_CMD} --align-root align --out fused_all --live-dir logs/fuse_all",
        lock=("pivot", "sources"), data=("data/train.parquet", "extract/pivot", "align"),
        outs=("fused_all", {"logs/fuse_all": {"persist": True}}),
    ),
    dataclasses.replace(  # lambda 1, no fusion term: the keys that shape only fusion targets are fixed
        FUSE, name="sft_baseline", foreach=None,
        args=f"{FUSE_CMD.replace('--params', '--sft-baseline --params')} --out baseline/sft "
             "--live-dir logs/sft_baseline",
        unhashed=FUSE_SPEED_ONLY + tuple(SFT_FIXED),
        data=("data/train.parquet", "extract/pivot"),
        outs=("baseline/sft", {"logs/sft_baseline": {"persist": True}}),
    ),
    Stage(
        name="merge", entry="stages/merge.py", foreach=METHODS,
        args='--params params.yaml --lock models.lock --fused-dir fused --importance-dir fisher '
             '--base "${pivot.path}" --method ${item} --out merged/${item}',
        # merge.<method> only: editing one method's option reruns that merge (fusecli/merge/params.py)
        keys=("merge.device", "merge.max_shard_size", "merge.${item}", "runtime"), lock=("pivot", "sources"),
        data=("fused", "fisher"), outs=("merged/${item}",),
    ),
    # implicit fusion (FuseChat-3.0, docs/imf.md): each source's sampled responses, scored, the best as SFT
    # targets, then preference training on each source's best and worst
    Stage(
        name="sample", entry="stages/sample.py", foreach=SOURCES,
        args="--params params.yaml --lock models.lock --source ${key} --data data/train.parquet "
             "--out imf/samples/${key}.parquet",
        keys=("imf.sample", "runtime"), lock=("sources.${key}",),
        data=("data/train.parquet", "${item.path}"), outs=("imf/samples/${key}.parquet",),
    ),
    Stage(
        name="score", entry="stages/score.py",
        args="--params params.yaml --lock models.lock --data data/train.parquet --samples imf/samples "
             "--out imf/scores.parquet",
        # evaluate.judge: the endpoint of `reward: judge` (scores are cached per response)
        keys=("imf.score", "evaluate.judge.base_url", "evaluate.judge.model", "evaluate.judge.max_tokens",
              "evaluate.judge.temperature", "runtime"), lock=("sources",),
        data=("data/train.parquet", "imf/samples"), outs=("imf/scores.parquet",),
    ),
    dataclasses.replace(  # sft_baseline's budget and keys, on the best response per prompt
        FUSE, name="imf_sft", entry="stages/imf_sft.py", foreach=None,
        args="--params params.yaml --lock models.lock --samples imf/samples --scores imf/scores.parquet "
             "--out imf/sft --live-dir logs/imf_sft",
        unhashed=FUSE_SPEED_ONLY + tuple(SFT_FIXED), keys=("imf.train.max_length", "launch.fuse", "runtime"),
        lock=("pivot", "sources"), data=("imf/samples", "imf/scores.parquet"),
        outs=("imf/sft", {"logs/imf_sft": {"persist": True}}),
    ),
    Stage(
        name="imf_dpo", entry="stages/imf_dpo.py", launch="${launch.fuse}",
        args="--params params.yaml --lock models.lock --samples imf/samples --scores imf/scores.parquet "
             "--sft imf/sft --out imf/dpo --live-dir logs/imf_dpo",
        # fuse's batch, schedule and optimizer keys; imf.train's DPO keys
        keys=("imf.train", *(f"fuse.{k}" for k in ("global_batch_size", "micro_batch_size", "warmup_ratio",
              "weight_decay", "max_grad_norm", "seed", "gradient_checkpointing", "optim", "zero_stage",
              "logging_steps")), "launch.fuse", "runtime"),
        lock=("pivot", "sources"), data=("imf/samples", "imf/scores.parquet", "imf/sft"),
        outs=("imf/dpo", {"logs/imf_dpo": {"persist": True}}),
    ),
    Stage(
        name="evaluate", entry="stages/evaluate.py",
        args="--params params.yaml --lock models.lock --data data/eval.parquet --fused-dir fused "
             "--fused-all fused_all --baseline baseline/sft --imf-sft imf/sft --imf imf/dpo --merged-dir merged "
             "--out eval",
        section="evaluate", config="fusecli.evaluate.params:EvalParams",
        keys=("merge.method", "merge.methods", "runtime"), lock=("pivot", "sources"),
        # backend: judge, its questions (the shipped demo file lies under fusecli/evaluate too)
        data=("${evaluate.judge.questions}", "data/eval.parquet", "baseline/sft", "fused", "fused_all", "imf/sft",
              "imf/dpo", "merged"),
        # eval/summary.json: the summary's terminal-sized slice (`dvc metrics show eval/summary.json`);
        # eval/judgments.jsonl: backend judge's every judgment and raw reply (empty otherwise)
        metrics=({"eval/metrics.json": {"cache": False}}, {"eval/summary.json": {"cache": False}}),
        outs=({"eval/report.md": {"cache": False}}, {"eval/judgments.jsonl": {"cache": False}}),
    ),
    Stage(
        name="report", entry="stages/report.py",
        args="--params params.yaml --lock models.lock --metrics eval/metrics.json --logs logs --align align "
             "--merged-dir merged --extract extract --out reports",
        keys=("merge.method", "merge.methods"), lock=("pivot", "sources"),
        data=("eval/metrics.json", "logs/fuse", "logs/fuse_all", "logs/sft_baseline", "align", "merged", "extract"),
        metrics=({"reports/teachers.json": {"cache": False}},),
        outs=tuple({p: {"cache": False}} for p in ("reports/index.md", "reports/plots", "reports/curves",
                                                     "reports/cards")),
    ),
)


def stage(name: str) -> Stage:
    return next(s for s in STAGES if s.name == name)


def source_stages() -> list[Stage]:
    """The stages run once per source (`<name>@<slug>`): `fusecli remove-source` cleans up after them."""
    return [s for s in STAGES if s.foreach == SOURCES]


def sections() -> dict[str, type]:
    """params.yaml section -> the dataclass its stages load it into (imports them: torch)."""
    out: dict[str, type] = {}
    for s in STAGES:
        cls = s.config_class()
        if s.section and cls is not None:
            out.setdefault(s.section, cls)
    return out


def hashed_params(s: Stage, params: dict[str, Any]) -> list[str | dict[str, list[str]]]:
    """The stage's dvc.yaml `params`: its section (whole, or the keys params.yaml states that can change
    its result), its other keys, and its models.lock keys."""
    out: list[str | dict[str, list[str]]] = []
    if s.section:
        if s.unhashed:
            out += [f"{s.section}.{k}" for k in params.get(s.section) or {} if k not in s.unhashed]
        else:
            out.append(s.section)
    out += list(s.keys)
    if s.lock:
        out.append({"models.lock": list(s.lock)})
    return out
