"""Plan and run a merge, tensor by tensor, into an atomically written HF model folder.

plan: check every model against the base (architecture, tensor names, shapes) before writing
anything; grown vocabularies are cropped to the base, tied embeddings stand in for a missing
lm_head. run: for each base tensor, read it and the models' tensors in row blocks of at most
BLOCK_ELEMENTS, merge with the registered method (whose whole-tensor statistics, if any, take
passes over the blocks first), and write each merged block to its output shard at once. Peak
memory is a few blocks per model, whatever the size of the models or of their largest tensor.
"""

from __future__ import annotations

import csv
import ctypes
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress

from fusecli.card import Lineage, model_card
from fusecli.device import resolve_device
from fusecli.errors import FusecliError
from fusecli.io import atomic_dir, atomic_write_json, atomic_write_text
from fusecli.merge.io import DTYPES, ModelFolder, ShardedWriter, copy_side_files, parse_size
from fusecli.merge.params import MergeParams
from fusecli.merge.registry import Block, Blocks, MergeMethod, get_method
from fusecli.plan import IDENTITY
from fusecli.plan import MERGE_REPORT as REPORT
from fusecli.progress import BYTES, progress_bar
from fusecli.version import __version__

COEFFICIENTS_CSV = "merge_coefficients.csv"
CARD = "README.md"
LM_HEAD = "lm_head.weight"
EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight")
VOCAB_SUFFIXES = (*EMBEDDING_SUFFIXES, LM_HEAD, "embed_out.weight")
# Elements per row block: 20 MB per float32 array, so Qwen2-0.5B's MLP matrices (4.4M) are one
# block, read once. A merge step holds the base's and each model's block plus the method's
# temporaries (task vectors, masks): about 0.5 GB for 3 models with SCE.
BLOCK_ELEMENTS = 5 * 2**20


@dataclass(frozen=True)
class TensorPlan:
    name: str  # the tensor in the base and in the output
    sources: tuple[str, ...]  # the tensor read from each model (a tied model's embedding for lm_head)
    merge: bool  # floating point tensors are merged; others are copied from the base


@dataclass
class MergePlan:
    tensors: list[TensorPlan]
    cropped: list[dict[str, Any]] = field(default_factory=list)
    tied: list[dict[str, str]] = field(default_factory=list)
    ignored: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class MergeResult:
    out: Path
    report: dict[str, Any]


def _architecture(config: dict[str, Any]) -> str:
    return f"{'/'.join(config.get('architectures') or ['?'])} ({config.get('model_type', '?')})"


def _embedding(model: ModelFolder) -> str | None:
    found = [n for n in model.weight_map if n.endswith(EMBEDDING_SUFFIXES)]
    return found[0] if len(found) == 1 else None


def plan_merge(base: ModelFolder, models: dict[str, ModelFolder]) -> MergePlan:
    """Check the models against the base and decide, per base tensor, what to read from each model."""
    arch = _architecture(base.config)
    for label, model in models.items():
        if _architecture(model.config) != arch:
            raise FusecliError(
                f"model {label} ({model.path}) is {_architecture(model.config)} but the base is {arch}: "
                "every merged model must share the base's architecture (merge the pair-fused targets)"
            )
    plan = MergePlan(tensors=[])
    base_names = set(base.weight_map)
    for label, model in models.items():
        extra = sorted(set(model.weight_map) - base_names)
        if LM_HEAD in extra and _embedding(base) is not None:
            extra.remove(LM_HEAD)
            plan.ignored.append({"model": label, "tensor": LM_HEAD, "why": "the base ties lm_head to its embedding"})
        if extra:
            raise FusecliError(
                f"model {label} ({model.path}) has tensor {extra[0]!r} that the base lacks: "
                "merged models must have the base's architecture"
            )
    for name in base.names():
        shape, sources = base.shape(name), []
        for label, model in models.items():
            source = name
            if name not in model.weight_map:
                tied = _embedding(model) if name == LM_HEAD else None
                if tied is None:
                    raise FusecliError(
                        f"model {label} ({model.path}) lacks tensor {name!r}: "
                        "merged models must have the base's architecture"
                    )
                source = tied
                plan.tied.append({"model": label, "tensor": name, "source": tied})
            got = model.shape(source)
            if got != shape:
                grown = len(got) == len(shape) > 0 and got[1:] == shape[1:] and got[0] > shape[0]
                if not (grown and name.endswith(VOCAB_SUFFIXES)):
                    raise FusecliError(
                        f"tensor {name!r} of model {label} has shape {list(got)} but the base has "
                        f"{list(shape)}: only grown vocabularies (embeddings, lm_head) can be cropped; "
                        "merge only models fine-tuned from this base (the pair-fused targets)"
                    )
                plan.cropped.append({"model": label, "tensor": name, "from": list(got), "to": list(shape)})
            sources.append(source)  # reading the base's rows of it crops a grown vocabulary
        floating = base.dtype(name).startswith(("F", "BF"))
        plan.tensors.append(TensorPlan(name, tuple(sources), floating))
    return plan


def open_models(
    base: Path, models: Sequence[tuple[str, Path]], out: Path
) -> tuple[ModelFolder, dict[str, ModelFolder]]:
    for path in (base, *(p for _, p in models)):
        if out.resolve() in (path.resolve(), *path.resolve().parents):
            raise FusecliError(f"--out {out} would replace the input {path}: write the merge elsewhere")
    if not models:
        raise FusecliError("no models to merge: pass at least one model")
    labels = [label for label, _ in models]
    if len(set(labels)) != len(labels):
        raise FusecliError(f"model name {labels[0]!r} is given twice: name each model once")
    resolved = [Path(path).resolve() for _, path in models]
    for i, path in enumerate(resolved):
        if path in resolved[:i]:
            raise FusecliError(f"model {models[i][1]} is given twice: list each model once")
    return ModelFolder(base), {label: ModelFolder(path) for label, path in models}


def merge_models(
    base_path: str | Path,
    models: Sequence[tuple[str, str | Path]],
    params: MergeParams,
    out: str | Path,
    *,
    progress: Progress | None = None,
    lineage: Lineage | None = None,
    importance: Mapping[str, str | Path] | None = None,
) -> MergeResult:
    """Merge `models` (label, folder) onto the base with `params.method`; write the folder `out`, its card naming
    the pivot and sources of `lineage` (models.lock) when given. `importance`: label -> a folder of that
    model's per-parameter importance (same tensor names; stage fisher@<slug>), read only by the methods
    that weigh models by it.

    `progress` shows the bytes written, block by block (default: the stages' bar on stderr).
    On any error nothing is left at `out` (an existing `out` is kept until the new one is complete).
    """
    method = get_method(params.method)
    resolved = method.resolve(params.options, len(models))
    device, max_bytes = resolve_device(params.device, "merge.device"), parse_size(params.max_shard_size)
    keep_freed_memory()
    base, folders = open_models(Path(base_path), [(label, Path(path)) for label, path in models], Path(out))
    weights: dict[str, ModelFolder] | None = None
    try:
        weights = open_importance(importance, folders) if method.reads_importance else None
        plan = plan_merge(base, folders)
        if weights is not None:
            check_importance(plan, folders, weights)
        with atomic_dir(out) as tmp:
            layout = [(t.name, base.dtype(t.name), base.shape(t.name)) for t in plan.tensors]
            total = sum(math.prod(shape) * DTYPES[dtype].itemsize for _, dtype, shape in layout)
            with ShardedWriter(tmp, max_bytes, layout) as writer, progress or progress_bar(BYTES) as shown:
                task = shown.add_task(f"merge {method.name}", total=total)

                def advance(written: torch.Tensor) -> None:
                    shown.advance(task, written.numel() * written.element_size())

                kind, coefficients = _merge_tensors(
                    method, resolved, base, folders, plan, writer, device, advance, weights
                )
            copy_side_files(base.path, tmp)
            report = _report(method, resolved, base, folders, plan, kind, coefficients)
            atomic_write_json(tmp / REPORT, report)
            if kind is not None:
                atomic_write_text(tmp / COEFFICIENTS_CSV, _coefficients_csv(kind, coefficients))
            atomic_write_text(tmp / CARD, model_card(Path(out).name, report, method.doc, lineage))
    finally:
        for folder in (base, *folders.values(), *(weights or {}).values()):
            folder.close()
    return MergeResult(Path(out), report)


def open_importance(
    importance: Mapping[str, str | Path] | None, models: dict[str, ModelFolder]
) -> dict[str, ModelFolder]:
    """Each model's importance folder, opened like a model folder (the same tensor names)."""
    missing = [label for label in models if label not in (importance or {})]
    if missing:
        raise FusecliError(
            f"the merge method weighs each model by its importance on its own training data, and model {missing[0]} "
            "has none: run `dvc repro fisher@<slug>` (pipeline) or give --importance DIR with DIR/<model>"
        )
    return {label: ModelFolder(Path(importance[label])) for label in models}


def check_importance(plan: MergePlan, models: dict[str, ModelFolder], weights: dict[str, ModelFolder]) -> None:
    """Every merged tensor has an importance tensor of the model's own shape (stale statistics stop here)."""
    for t in plan.tensors:
        if not t.merge:
            continue
        for label, source in zip(models, t.sources, strict=True):
            w = weights[label]
            if source not in w.weight_map or w.shape(source) != models[label].shape(source):
                raise FusecliError(
                    f"{w.path} has no importance of shape {list(models[label].shape(source))} for {source!r}: it was "
                    f"computed for another model than {models[label].path}; rerun its fisher stage"
                )


def write_identity(
    base_path: str | Path, label: str, folder: str | Path, params: MergeParams, out: str | Path,
    lineage: Lineage | None = None,
) -> MergeResult | None:
    """A merge of one model is that model: `out` gets no weights, only its card and a report whose
    `identity` names `folder` (evaluate scores it, `fusecli card` uploads it: fusecli/plan.py, merged_weights).
    Every method would otherwise write one more copy of the model: with weights summing to 1 they all
    return it, and otherwise they only scale, trim or drop its task vector, which is not a fusion.

    The model is checked against the base as for any merge; None (merge it) when its layout differs from
    the base's (a vocabulary to crop, a tied head), where the merge is not the model itself."""
    base, folders = open_models(Path(base_path), [(label, Path(folder))], Path(out))
    try:
        plan = plan_merge(base, folders)
    finally:
        for opened in (base, *folders.values()):
            opened.close()
    if plan.cropped or plan.tied or plan.ignored:
        return None
    method = get_method(params.method)
    report = {
        "fusecli_version": __version__, "options": method.describe(params.options), "base": str(base_path),
        "models": {label: str(folder)}, "num_tensors": len(plan.tensors), "cropped": [], "tied": [], "ignored": [],
        "coefficient": None, "coefficients": {}, IDENTITY: Path(folder).as_posix(),
    }
    card = model_card(Path(out).name, report, method.doc, lineage)
    card += (f"\n## One source\n\nA merge of one model is that model: the weights are those of `{folder}`, "
             "not written again (`fusecli card OUT` lays them out with this card).\n")
    with atomic_dir(out) as tmp:
        atomic_write_json(tmp / REPORT, report)
        atomic_write_text(tmp / CARD, card)
    return MergeResult(Path(out), report)


def keep_freed_memory() -> None:
    """Have glibc keep freed memory for reuse instead of returning it to the OS.

    By default every temporary of 32 MB or more (task vectors of one block, masks) is a fresh
    mmap, returned at free and page-faulted back for the next block: 70-80% of an elementwise op's
    time in this loop (measured). Heap memory is reused without faults; the heap stays at the
    loop's working set (about 1 GB). A no-op where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)  # M_MMAP_MAX: no mmap for large allocations, take them from the heap
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: return free heap above 1 GB only
    except (OSError, AttributeError):
        pass


def row_blocks(shape: tuple[int, ...], max_elements: int | None = None) -> list[slice]:
    """Consecutive row ranges of at most `max_elements` (at least one row each) covering a tensor."""
    if not shape:
        return [slice(None)]
    step = max(1, (max_elements or BLOCK_ELEMENTS) // max(1, math.prod(shape[1:])))
    return [slice(lo, min(lo + step, shape[0])) for lo in range(0, shape[0], step)] or [slice(0, 0)]


def _merge_tensors(
    method: MergeMethod,
    options: Any,
    base: ModelFolder,
    models: dict[str, ModelFolder],
    plan: MergePlan,
    writer: ShardedWriter,
    device: torch.device,
    advance: Callable[[torch.Tensor], None],
    importance: dict[str, ModelFolder] | None = None,
) -> tuple[str | None, dict[str, dict[str, float]]]:
    """The streaming loop: one row block of one tensor of each model in memory at a time; `advance` is
    called with each block written."""
    kind: str | None = None
    coefficients: dict[str, dict[str, float]] = {}
    labels = list(models)
    for t in plan.tensors:
        shape, bounds = base.shape(t.name), row_blocks(base.shape(t.name))
        if not t.merge:
            for rows in bounds:
                block = base.read(t.name, rows)
                writer.add(t.name, block)
                advance(block)
            continue

        def read(rows: slice, t: TensorPlan = t) -> Block:
            inputs = [models[label].read(source, rows) for label, source in zip(labels, t.sources, strict=True)]
            theta0 = base.read(t.name, rows).to(device, torch.float32) if method.reads_base else None
            weights = None
            if importance is not None:
                weights = [importance[label].read(source, rows).to(device, torch.float32)
                           for label, source in zip(labels, t.sources, strict=True)]  # fmt: skip
            return Block(theta0, [x.to(device, torch.float32) for x in inputs], weights)

        blocks = Blocks(shape, DTYPES[base.dtype(t.name)], len(labels), bounds, read)
        coefs = None
        for merged, block_coefs in method.merge(blocks, options, name=t.name):
            writer.add(t.name, merged)
            advance(merged)
            coefs = block_coefs  # the same for every block of a tensor
        if coefs:
            (kind, values), *_ = coefs.items()
            coefficients[t.name] = dict(zip(labels, values, strict=True))
    writer.close()
    return kind, coefficients


def _report(
    method: MergeMethod,
    options: Any,
    base: ModelFolder,
    models: dict[str, ModelFolder],
    plan: MergePlan,
    kind: str | None,
    coefficients: dict[str, dict[str, float]],
) -> dict[str, Any]:
    return {
        "fusecli_version": __version__,
        "options": method.describe(options),
        "base": str(base.path),
        "models": {label: str(m.path) for label, m in models.items()},
        "num_tensors": len(plan.tensors),
        "cropped": plan.cropped,
        "tied": plan.tied,
        "ignored": plan.ignored,
        "coefficient": kind,
        "coefficients": coefficients,
    }


def _coefficients_csv(kind: str, coefficients: dict[str, dict[str, float]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["tensor", "model", kind])
    for tensor, per_model in coefficients.items():
        for label, value in per_model.items():
            writer.writerow([tensor, label, repr(value)])
    return buf.getvalue()
